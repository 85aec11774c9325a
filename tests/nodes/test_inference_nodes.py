"""Inference nodes against the core: plain-sampler parity through the node, DFR previews, CLC plan, export files,
progress and interrupts, errors naming node and input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mvcustom_core.backbone.sampler import make_scheduler, sample, to_comfy_latent
from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.cameras.formats import load_camera_file
from mvcustom_core.inference import CLCPlan, DFRPlan, resolve_anchor_geometry
from mvcustom_core.inference.dfr import dfr_previews
from mvcustom_core.backbone.tiny import tiny_backbone

SIZE = 64
REPO_ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def backbone():
    return SimpleNamespace(unet=tiny_backbone(0).unet.eval())


def _cams(n: int = 3) -> CameraSet:
    az = torch.linspace(-0.25, 0.25, n)
    eye = torch.stack([1.8 * torch.sin(az), torch.full_like(az, -0.3), -1.8 * torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3)), 50.0, (SIZE, SIZE))


def _conditioning(seed: int):
    return [[torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(seed)), {}]]


def _depth_image(value: float = 0.4, frames: int = 1) -> torch.Tensor:
    return torch.full((frames, SIZE, SIZE, 3), value)


def test_nodes_are_registered(node_classes):
    assert {"MVC_DepthAwareFeatureRendering", "MVC_LatentCompletion", "MVC_MVCustomSampler",
            "MVC_ExportViews"} <= set(node_classes)


def test_latent_completion_plan_and_bad_tau(node, run):
    cls = node("MVC_LatentCompletion")
    (plan,) = run(cls, tau=800, erosion=2).args
    assert plan == CLCPlan(tau=800, erosion=2)
    assert run(cls).args[0] == CLCPlan()  # node defaults = core defaults: the first 10 % of the steps
    assert run(cls, fraction=0.2).args[0] == CLCPlan(fraction=0.2)
    with pytest.raises(ValueError, match=r"^MVCustom Latent Completion: input 'tau' is invalid"):
        run(cls, tau=2000)
    with pytest.raises(ValueError, match=r"^MVCustom Latent Completion: input 'fraction' is invalid: CLC fraction "):
        run(cls, fraction=1.5)


# Workflows saved before the schedule fractions: the shipped tiny pipeline's widget values as they were stored
# (UI workflows keep them by position) and its API prompt inputs (by name).
OLD_UI_VALUES = {"MVC_DepthAwareFeatureRendering": [-1, "customization field", 7, "", 0.0, 0.0, 0.1, True],
                 "MVC_LatentCompletion": [900, 1]}
OLD_API_INPUTS = {"MVC_DepthAwareFeatureRendering": dict(anchor_frame=-1, depth_source="customization field", steps=7,
                                                         layers="", scale=0.0, shift=0.0, max_rel_depth_jump=0.1,
                                                         guard_silhouettes=True),
                  "MVC_LatentCompletion": dict(tau=900, erosion=1)}


def _frontend_inputs(cls, values: list) -> dict:
    """What ComfyUI's frontend queues for a saved node: the stored values by position over the widgets in schema
    order; widgets the workflow predates keep their defaults."""
    widgets = [i for i in cls.GET_SCHEMA().inputs if i.io_type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
    return {**{w.id: w.default for w in widgets}, **dict(zip([w.id for w in widgets], values))}


def _plan_steps(plan, steps: int) -> list[int]:
    """The step indices a DFR or CLC plan acts on in an S-step DDIM run."""
    if isinstance(plan, DFRPlan):
        return list(range(min(plan.active_steps(steps), steps)))
    sched = make_scheduler("ddim")
    sched.set_timesteps(steps)
    return [i for i, t in enumerate(sched.timesteps.tolist()) if plan.acts(i, steps, int(t))]


@pytest.mark.parametrize("node_id", list(OLD_UI_VALUES))
def test_workflows_saved_with_absolute_steps_keep_their_meaning(node, node_id):
    """Old UI values (positional) and old API inputs (no 'fraction') give the plans they gave: DFR K = 7 steps and
    CLC t >= 900 at every step count; the shipped workflows, now in fractions, mean the same at their 10 steps."""
    import json

    cls = node(node_id)
    extra = {"trajectory": _cams()} if node_id == "MVC_DepthAwareFeatureRendering" else {}
    from_ui = cls.execute(**extra, **_frontend_inputs(cls, OLD_UI_VALUES[node_id])).args[0]
    from_api = cls.execute(**extra, **OLD_API_INPUTS[node_id]).args[0]  # absent optional inputs: Python defaults
    assert from_ui == from_api
    for steps in (10, 20, 30, 50):
        old = list(range(7)) if node_id == "MVC_DepthAwareFeatureRendering" else _plan_steps(CLCPlan(tau=900), steps)
        assert _plan_steps(from_ui, steps) == old
    shipped = json.loads((REPO_ROOT / "workflows" / "mvcustom_tiny_pipeline.json").read_text())
    entry = next(e for e in shipped.values() if e["class_type"] == node_id)
    sampler_steps = next(e for e in shipped.values() if e["class_type"] == "MVC_MVCustomSampler")["inputs"]["steps"]
    inputs = {k: v for k, v in entry["inputs"].items() if not isinstance(v, list)}
    now = cls.execute(**extra, **inputs).args[0]
    assert _plan_steps(now, sampler_steps) == _plan_steps(from_api, sampler_steps) and now != from_api


def test_dfr_node_plan_and_previews_equal_the_core(node, run):
    cams = _cams()
    cls = node("MVC_DepthAwareFeatureRendering")
    plan, completion, views = run(cls, trajectory=cams, depth_source="depth image (disparity, near = bright)",
                                  depth_image=_depth_image(0.4), scale=1.0, shift=0.0, steps=20).args
    assert plan.depth_kind == "disparity" and plan.steps == 20 and plan.anchor is None
    field = dict(trajectory=cams, depth_source="customization field")
    assert run(cls, **field).args[0] == DFRPlan()  # defaults: the first 70 % of the steps
    assert run(cls, **field, fraction=0.5).args[0] == DFRPlan(fraction=0.5)
    assert plan.scale == 1.0 and torch.equal(plan.depth, torch.full((SIZE, SIZE), 0.4))
    geometry, aligned = resolve_anchor_geometry(plan, cams)
    torch.testing.assert_close(geometry.depth, torch.full((SIZE, SIZE), 2.5))  # z = 1 / (1 · 0.4)
    expected_completion, expected_views = dfr_previews(geometry)
    assert completion.shape == (3, SIZE, SIZE, 3) and views.shape == (3, SIZE, SIZE, 3)
    torch.testing.assert_close(completion[..., 0], expected_completion[:, 0])
    torch.testing.assert_close(views, expected_views.permute(0, 2, 3, 1))
    assert completion[1].max() == 0 and completion[0].mean() > 0  # anchor = middle frame, never completed


def test_dfr_node_silhouette_guards_widen_the_completion_masks(node, run):
    """A disparity step (a near square): guards add completion only, and only next to the square's outline."""
    cams = _cams()
    disparity = _depth_image(0.4)
    disparity[:, 24:40, 24:40] = 0.8  # z = 1.25 in front of z = 2.5
    cls = node("MVC_DepthAwareFeatureRendering")
    common = dict(trajectory=cams, depth_source="depth image (disparity, near = bright)", depth_image=disparity,
                  scale=1.0, shift=0.0)
    guarded_plan, guarded, _ = run(cls, **common).args
    bare_plan, bare, _ = run(cls, guard_silhouettes=False, **common).args
    assert guarded_plan.guard_silhouettes and not bare_plan.guard_silhouettes
    added = (guarded[..., 0] > 0.5) & ~(bare[..., 0] > 0.5)
    assert not ((bare[..., 0] > 0.5) & ~(guarded[..., 0] > 0.5)).any()
    assert added[0].any() and added[2].any() and not added[1].any()  # the anchor is never completed
    # What is added is a thin outline at the square (rows 24-39, shifted sideways by the orbit's parallax),
    # at most about one pixel along its 64-pixel perimeter per target, not a region.
    _, rows, cols = torch.nonzero(added, as_tuple=True)
    assert ((rows >= 22) & (rows <= 41) & (cols >= 12) & (cols <= 51)).all()
    assert added[0].sum() <= 64 and added[2].sum() <= 64


def test_dfr_node_field_source_and_errors(node, run):
    cls = node("MVC_DepthAwareFeatureRendering")
    plan, completion, _ = run(cls, trajectory=_cams(), depth_source="customization field").args
    assert plan.depth is None and completion.shape[0] == 1
    name = "MVCustom Depth-Aware Feature Rendering"
    with pytest.raises(ValueError, match=rf"^{name}: input 'depth_image' must be connected"):
        run(cls, trajectory=_cams(), depth_source="depth image (depth, far = bright)")
    with pytest.raises(ValueError, match=rf"^{name}: input 'anchor_frame' is invalid"):
        run(cls, trajectory=_cams(), anchor_frame=7)
    with pytest.raises(ValueError, match=rf"^{name}: input 'fraction' is invalid: DFR fraction must be"):
        run(cls, trajectory=_cams(), depth_source="customization field", fraction=-0.5)
    with pytest.raises(ValueError, match=rf"^{name}: input 'depth_image' must hold 1 image or one per frame"):
        run(cls, trajectory=_cams(), depth_source="depth image (depth, far = bright)",
            depth_image=_depth_image(frames=2))


SAMPLER = dict(seed=3, steps=2, cfg=5.0, pose_ratio=1.0, window=16, overlap=4)


def test_sampler_node_without_plans_is_the_plain_sampler(node, run, backbone, host):
    cams = _cams()
    bars = host["comfy.utils"].ProgressBar.instances
    before = len(bars)
    latent, anchor = run(node("MVC_MVCustomSampler"), model=backbone, trajectory=cams, positive=_conditioning(1),
                         negative=_conditioning(2), **SAMPLER).args
    expected = sample(backbone.unet, _conditioning(1)[0][0], _conditioning(2)[0][0], 3, SIZE, SIZE, 2, 5.0, seed=3)
    assert torch.equal(latent["samples"], to_comfy_latent(expected)["samples"]) and anchor is None
    assert (bars[before].total, bars[before].current) == (2, 2)


def test_sampler_node_with_dfr_and_clc_then_export(node, run, backbone, comfy_dirs, mm):
    cams = _cams()
    plan = DFRPlan(depth=torch.full((SIZE, SIZE), 2.5), depth_kind="metric", scale=1.0, steps=1)
    latent, anchor = run(node("MVC_MVCustomSampler"), model=backbone, trajectory=cams, positive=_conditioning(1),
                         negative=_conditioning(2), dfr_plan=plan, clc_plan=CLCPlan(tau=500), **SAMPLER).args
    assert latent["samples"].shape == (3, 4, 8, 8)
    assert anchor.anchor == 1 and torch.equal(anchor.depth, torch.full((SIZE, SIZE), 2.5))

    frames = torch.rand(3, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    (folder,) = run(node("MVC_ExportViews"), images=frames, trajectory=cams, anchor=anchor).args
    out = comfy_dirs["output"] / folder
    back = load_camera_file(out / "transforms.json")
    torch.testing.assert_close(back.c2w.float(), cams.c2w, rtol=0, atol=1e-6)
    assert len(list((out / "images").glob("*.png"))) == 3 and (out / "anchor_points.ply").is_file()

    mm.interrupt_requested = True
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(node("MVC_MVCustomSampler"), model=backbone, trajectory=cams, positive=_conditioning(1),
                negative=_conditioning(2), **SAMPLER)
    finally:
        mm.interrupt_requested = False


def test_sampler_node_errors_name_the_input(node, run, backbone):
    cls = node("MVC_MVCustomSampler")
    base = dict(model=backbone, trajectory=_cams(), positive=_conditioning(1), negative=_conditioning(2), **SAMPLER)
    with pytest.raises(ValueError, match=r"^MVCustom Sampler: input 'clc_plan' needs a dfr_plan"):
        run(cls, **base, clc_plan=CLCPlan())
    with pytest.raises(ValueError, match=r"^MVCustom Sampler: input 'model' must be an MVC_BACKBONE"):
        run(cls, **{**base, "model": "checkpoint.safetensors"})
    with pytest.raises(ValueError, match=r"^MVCustom Sampler: input 'positive' is invalid"):
        run(cls, **{**base, "positive": [[torch.zeros(1, 5, 32), {}], [torch.zeros(1, 5, 32), {}]]})
    with pytest.raises(ValueError, match=r"^MVCustom Sampler: input 'memory_budget_gb' is invalid: this run needs "
                                         r"~\S+ GB .* at 3 frames of 64x64 px .* lower 'window'"):
        run(cls, **base, memory_budget_gb=0.001)
    with pytest.raises(ValueError, match=r"^MVCustom Export Views: input 'images' has 2 frames"):
        run(node("MVC_ExportViews"), images=torch.zeros(2, 8, 8, 3), trajectory=_cams())


def test_sampler_node_applies_a_customization_for_the_run_only(node, run, backbone):
    import copy

    from mvcustom_core.customization import PoseContext, install_pose_blocks, pose_blocks
    from mvcustom_core.customization.file_format import customization_from_unet
    from mvcustom_core.inference import mvcustom_sample

    model, ctx = copy.deepcopy(backbone.unet), PoseContext()
    install_pose_blocks(model, ctx, "0", config_overrides={"num_samples": 8})
    block = next(pose_blocks(model))
    with torch.no_grad():
        block.featurenerf.decoder.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(0))
        block.fuse.weight[:, block.fuse.out_features:] = torch.eye(block.fuse.out_features)
    ctx.begin_capture()
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        model(torch.randn(1, 4, 2, 8, 8, generator=g), 50, encoder_hidden_states=torch.randn(2, 5, 32, generator=g))
    ctx.end_capture(_cams(2))
    custom = customization_from_unet(model, ctx, token="<s>", class_word="car", token_embedding=torch.zeros(32))

    cams = _cams()
    args = dict(model=backbone, trajectory=cams, positive=_conditioning(1), negative=_conditioning(2),
                customization=custom, **SAMPLER)
    first = run(node("MVC_MVCustomSampler"), **args).args[0]["samples"]
    assert next(pose_blocks(backbone.unet), None) is None  # removed after the run
    second = run(node("MVC_MVCustomSampler"), **args).args[0]["samples"]
    ctx.references = custom.references  # the bank as the customization keeps it (float16)
    expected = mvcustom_sample(model, _conditioning(1)[0][0], _conditioning(2)[0][0], cams, pose_context=ctx,
                               seed=3, steps=2)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, to_comfy_latent(expected)["samples"], rtol=0, atol=1e-5)
    plain = run(node("MVC_MVCustomSampler"), **{**args, "customization": None}).args[0]["samples"]
    assert not torch.allclose(plain, first, atol=1e-4)


def _customized_field(backbone, set_density_head):
    """A copy of the backbone's UNet with one pose block whose density head ``set_density_head(weight)`` sets (under
    no_grad), its references captured from two cameras -> ``(model, ctx, customization)``."""
    import copy

    from mvcustom_core.customization import PoseContext, install_pose_blocks, pose_blocks
    from mvcustom_core.customization.file_format import customization_from_unet

    model, ctx = copy.deepcopy(backbone.unet), PoseContext()
    with torch.random.fork_rng():  # FeatureNeRF's MLPs draw their initial weights from the global generator
        torch.manual_seed(0)
        install_pose_blocks(model, ctx, "0", config_overrides={"num_samples": 8})
    with torch.no_grad():
        set_density_head(next(pose_blocks(model)).featurenerf.decoder.weight)
    g = torch.Generator().manual_seed(1)
    ctx.begin_capture()
    with torch.no_grad():
        model(torch.randn(1, 4, 2, 8, 8, generator=g), 50, encoder_hidden_states=torch.randn(2, 5, 32, generator=g))
    ctx.end_capture(_cams(2))
    custom = customization_from_unet(model, ctx, token="<s>", class_word="car", token_embedding=torch.zeros(32))
    return model, ctx, custom


def test_dfr_node_field_previews_with_model_and_customization(node, run, backbone):
    from mvcustom_core.customization import pose_blocks

    model, ctx, custom = _customized_field(
        backbone, lambda weight: weight.normal_(0, 25.0, generator=torch.Generator().manual_seed(0)))
    cams = _cams()
    plan, completion, views = run(node("MVC_DepthAwareFeatureRendering"), trajectory=cams, model=backbone,
                                  customization=custom, depth_source="customization field").args
    assert next(pose_blocks(backbone.unet), None) is None  # installed for the preview only
    geometry, _ = resolve_anchor_geometry(plan, cams, unet=model, pose_context=ctx)  # the core on the same field
    assert (geometry.depth > 0).any()
    expected_completion, expected_views = dfr_previews(geometry)
    torch.testing.assert_close(completion[..., 0], expected_completion[:, 0])
    torch.testing.assert_close(views, expected_views.permute(0, 2, 3, 1))


def test_a_field_without_a_surface_is_said_in_the_nodes_ui_text_and_the_log(node, run, backbone, caplog):
    """The DFR fallback for a transparent field (no anchor surface: nothing replaced) reaches the frontend user,
    who does not read the server's log."""
    # density exp(raw) ~ 0 everywhere: a field with no surface from any view
    _, _, custom = _customized_field(backbone, lambda weight: weight.fill_(-1e3))
    caplog.set_level("WARNING")
    out = run(node("MVC_DepthAwareFeatureRendering"), trajectory=_cams(), model=backbone, customization=custom,
              depth_source="customization field")
    text = out.ui.value
    assert text.startswith("customization field depth (subject only)\nwarning: the customization's FeatureNeRF is "
                           "transparent from the anchor view"), text
    assert [r.getMessage() for r in caplog.records] == [
        "MVCustom Depth-Aware Feature Rendering: " + text.split("\nwarning: ")[1]]


def test_dfr_layers_that_are_not_modules_are_named_where_they_were_typed(node, run, backbone):
    """Finding: DFR layers="abc,zz" came out as the Sampler's 'positive'."""
    cams = _cams()
    dfr = node("MVC_DepthAwareFeatureRendering")
    depth = dict(depth_source="depth image (depth, far = bright)", depth_image=_depth_image(0.5), scale=5.0)
    with pytest.raises(ValueError, match=r"^MVCustom Depth-Aware Feature Rendering: input 'layers' is invalid: DFR "
                                         r"layers \['abc', 'zz'\] are not hookable modules of this UNet"):
        run(dfr, trajectory=cams, layers="abc, zz", model=backbone, **depth)  # checked when a model is connected
    plan = run(dfr, trajectory=cams, layers="abc,zz", **depth).args[0]  # without one it cannot be checked here
    with pytest.raises(ValueError, match=r"^MVCustom Sampler: input 'dfr_plan' is invalid: DFR layers \['abc', 'zz'\]"):
        run(node("MVC_MVCustomSampler"), model=backbone, trajectory=cams, positive=_conditioning(1),
            negative=_conditioning(2), dfr_plan=plan, **SAMPLER)
    with pytest.raises(ValueError, match=r"^MVCustom Sampler: input 'negative' has text features of width 48, but "
                                         r"this model's UNet reads 32"):
        run(node("MVC_MVCustomSampler"), model=backbone, trajectory=cams, positive=_conditioning(1),
            negative=[[torch.zeros(1, 5, 48), {}]], **SAMPLER)
