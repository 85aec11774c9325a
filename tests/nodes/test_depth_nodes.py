"""Depth nodes against the core: the depth model folder, loading, estimation, the DFR node's depth sources and the
sampler's one pass; errors name node and input."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from mvcustom_core.backbone.tiny import tiny_backbone
from mvcustom_core.backbone.loading import shipped_config
from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.depth import (DepthMap, DepthModel, build_depth_module, depth_preview, estimate_depth,
                                 tiny_depth_model)
from mvcustom_core.depth.estimate import estimate_bytes
from mvcustom_core.inference import DFRPlan, mvcustom_sample, resolve_anchor_geometry

SIZE = 64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cams(n: int = 3) -> CameraSet:
    az = torch.linspace(-0.25, 0.25, n)
    eye = torch.stack([1.8 * torch.sin(az), torch.full_like(az, -0.3), -1.8 * torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3)), 50.0, (SIZE, SIZE))


def _pictures(n: int = 3) -> torch.Tensor:
    return torch.rand(n, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))  # IMAGE [B, H, W, C]


def _hub_names(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tiny model's tensors under the names transformers 4.x files (the hub's) use."""
    renames = {"attention.q_proj.": "attention.attention.query.", "attention.k_proj.": "attention.attention.key.",
               "attention.v_proj.": "attention.attention.value.", "attention.o_proj.": "attention.output.dense."}
    out = {}
    for name, tensor in module.state_dict().items():
        for old, new in renames.items():
            name = name.replace(old, new)
        out[name] = tensor.detach().clone().contiguous()
    return out


@pytest.fixture
def depth_files(models):
    """models/depth/tiny-da/ (a transformers folder) and a file in kijai's models/depthanything."""
    config = shipped_config("tiny/depth_anything")
    torch.manual_seed(0)
    module = build_depth_module(config)
    folder = models.dir / "depth" / "tiny-da"
    folder.mkdir(parents=True)
    save_file(_hub_names(module), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    (models.dir / "depth" / "old_annotator.pth").write_bytes(b"pickle")
    (models.dir / "depthanything").mkdir()
    (models.dir / "depthanything" / "depth_anything_v2_vits_fp32.safetensors").write_bytes(b"truncated")
    return SimpleNamespace(module=module, folder=folder, models=models)


def test_depth_folder_lists_ours_and_kijais_safetensors_only(node, depth_files):
    schema = node("MVC_LoadDepthModel").define_schema()
    options = next(i for i in schema.inputs if i.id == "model").options
    assert options == ["depth_anything_v2_vits_fp32.safetensors", "tiny-da/model.safetensors"]
    folders = depth_files.models.folders["depth"][0]
    assert [p.rsplit("/", 1)[-1] for p in folders] == ["depth", "depthanything"]


def test_load_and_estimate_equal_the_core(node, run, depth_files):
    model, = run(node("MVC_LoadDepthModel"), model="tiny-da/model.safetensors").args
    assert isinstance(model, DepthModel) and model.kind == "metric" and model.host is not None
    assert depth_files.models.loaded == []  # nothing placed before it is used
    out = run(node("MVC_EstimateDepth"), depth_model=model, images=_pictures())
    depth, preview = out.args
    assert depth_files.models.loaded[-1] == [model.host]  # placed by ComfyUI's model management
    expected = estimate_depth(DepthModel(depth_files.module, "depth_anything", "metric", model.name),
                              _pictures().permute(0, 3, 1, 2))
    assert isinstance(depth, DepthMap) and depth.kind == "metric" and depth.values.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(depth.values, expected.values)
    torch.testing.assert_close(preview, depth_preview(depth).permute(0, 2, 3, 1))
    assert "metric" in out.ui.value


def test_load_errors_name_the_input_and_not_the_server_path(node, run, depth_files):
    with pytest.raises(ValueError, match=r"^MVCustom Load Depth Model: input 'model' "
                                         r"'depth_anything_v2_vits_fp32.safetensors' could not be read as a depth "
                                         r"model: .*truncated") as info:
        run(node("MVC_LoadDepthModel"), model="depth_anything_v2_vits_fp32.safetensors")
    assert str(depth_files.models.dir) not in str(info.value)
    with pytest.raises(ValueError, match=r"^MVCustom Load Depth Model: input 'model' must name a model file"):
        run(node("MVC_LoadDepthModel"), model="../checkpoints/x.safetensors")
    with pytest.raises(ValueError, match=r"^MVCustom Estimate Depth: input 'depth_model' must be an MVC_DEPTH_MODEL"):
        run(node("MVC_EstimateDepth"), depth_model="tiny-da", images=_pictures())


def test_dfr_node_takes_the_anchor_of_an_estimated_batch_with_its_kind(node, run, models):
    (model,) = run(node("MVC_TinyDepthModel")).args
    depth = run(node("MVC_EstimateDepth"), depth_model=model, images=_pictures()).args[0]
    out = run(node("MVC_DepthAwareFeatureRendering"), trajectory=_cams(), depth=depth)
    plan, completion, _ = out.args
    assert plan.depth_kind == "metric" and plan.depth_model is None
    assert torch.equal(plan.depth, depth.values[1]) and torch.equal(plan.depth_valid, depth.valid[1])  # the middle
    geometry, aligned = resolve_anchor_geometry(plan, _cams())
    assert completion.shape == (3, SIZE, SIZE, 3) and aligned.summary() == out.ui.value


def test_dfr_node_depth_model_alone_is_one_pass(node, run):
    model = tiny_depth_model(0)
    out = run(node("MVC_DepthAwareFeatureRendering"), trajectory=_cams(), depth_model=model, one_pass_at=0.25)
    plan, completion, _ = out.args
    assert plan.depth is None and plan.depth_model is model and plan.one_pass_at == 0.25
    assert completion.shape[0] == 1 and "one pass" in out.ui.value  # nothing to preview before sampling


def test_dfr_node_depth_images_follow_their_encoding_and_invalid_rule(node, run):
    image = torch.linspace(0, 1, SIZE)[None, None, :, None].expand(1, SIZE, SIZE, 3).contiguous()
    cls = node("MVC_DepthAwareFeatureRendering")
    plan = run(cls, trajectory=_cams(), depth_source="depth image (depth, near = bright)", depth_image=image).args[0]
    assert plan.depth_kind == "relative"
    torch.testing.assert_close(plan.depth[0, 1:-1], 1 - image[0, 0, 1:-1, 0])  # larger = farther
    assert not plan.depth_valid[:, 0].any() and not plan.depth_valid[:, -1].any() and plan.depth_valid[:, 1:-1].all()
    kept = run(cls, trajectory=_cams(), depth_source="depth image (depth, near = bright)", depth_image=image,
               invalid_pixels="black").args[0]
    assert kept.depth_valid[:, -1].all() and not kept.depth_valid[:, 0].any()


def test_dfr_node_errors_name_the_depth_inputs(node, run):
    cls = node("MVC_DepthAwareFeatureRendering")
    name = "MVCustom Depth-Aware Feature Rendering"
    with pytest.raises(ValueError, match=rf"^{name}: input 'depth' must be connected for depth source 'depth model'"):
        run(cls, trajectory=_cams())
    with pytest.raises(ValueError, match=rf"^{name}: input 'depth' must be an MVC_DEPTH"):
        run(cls, trajectory=_cams(), depth=torch.zeros(SIZE, SIZE))
    two = DepthMap(torch.ones(2, SIZE, SIZE), torch.ones(2, SIZE, SIZE, dtype=torch.bool), "metric")
    with pytest.raises(ValueError, match=rf"^{name}: input 'depth' is invalid: depth holds 2 images"):
        run(cls, trajectory=_cams(), depth=two)
    with pytest.raises(ValueError, match=rf"^{name}: input 'one_pass_at' is invalid"):
        run(cls, trajectory=_cams(), depth_model=tiny_depth_model(0), one_pass_at=1.0)


def test_sampler_node_one_pass_equals_the_core(node, run):
    tiny = tiny_backbone(0)
    backbone = SimpleNamespace(unet=tiny.unet.eval(), vae=tiny.vae.eval())
    depth_model = tiny_depth_model(0)
    plan = DFRPlan(depth_model=depth_model, one_pass_at=0.5, steps=2)
    cams = _cams()
    text = [torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    out = run(node("MVC_MVCustomSampler"), model=backbone, trajectory=cams, positive=[[text[0], {}]],
              negative=[[text[1], {}]], dfr_plan=plan, seed=3, steps=4, cfg=5.0, pose_ratio=1.0, window=16, overlap=4)
    latent, anchor = out.args
    expected = mvcustom_sample(backbone.unet, text[0], text[1], cams, dfr=plan, seed=3, steps=4, vae=backbone.vae)
    torch.testing.assert_close(latent["samples"] * 0.18215, expected, rtol=0, atol=1e-5)
    assert anchor.depth_kind == "metric" and anchor.depth_model is None and anchor.depth.shape == (SIZE, SIZE)
    assert out.ui.value.startswith("one pass: anchor depth after step 2")
    with pytest.raises(ValueError, match=r"^MVCustom Sampler: input 'model' has no vae"):
        run(node("MVC_MVCustomSampler"), model=SimpleNamespace(unet=backbone.unet), trajectory=cams,
            positive=[[text[0], {}]], negative=[[text[1], {}]], dfr_plan=plan, seed=3, steps=4, cfg=5.0,
            pose_ratio=1.0, window=16, overlap=4)


def test_load_depth_model_validates_the_name_at_queue_time(node, depth_files):
    cls = node("MVC_LoadDepthModel")
    assert cls.validate_inputs(model="tiny-da/model.safetensors") is True
    message = cls.validate_inputs(model="../checkpoints/x.safetensors")
    assert message.startswith("MVCustom Load Depth Model: input 'model' must name a model file")


def test_load_depth_model_variant_reaches_the_core_and_its_errors_name_it(node, run, depth_files):
    """A folder's config.json decides its head: another variant is refused, naming the 'variant' input."""
    schema = node("MVC_LoadDepthModel").define_schema()
    variant = next(i for i in schema.inputs if i.id == "variant")
    assert variant.options[0] == "auto" and variant.optional and schema.inputs[-1] is variant  # appended
    with pytest.raises(ValueError, match=r"^MVCustom Load Depth Model: input 'variant' does not fit "
                                         r"'tiny-da/model.safetensors': .*config\.json says which head"):
        run(node("MVC_LoadDepthModel"), model="tiny-da/model.safetensors", variant="relative")
    with pytest.raises(ValueError, match=r"^MVCustom Load Depth Model: input 'variant' must be one of"):
        run(node("MVC_LoadDepthModel"), model="tiny-da/model.safetensors", variant="metric")


def test_sampler_node_one_pass_asks_for_the_depth_estimates_memory(node, run, models):
    """ComfyUI frees memory for what a node states: in one pass, the depth estimate between two UNet calls, beside
    one workspace for the field's render (at the tiny depth model's 518-px input it outweighs the tiny UNet's
    call)."""
    from mvcustom_core.memory import MAX_WORKSPACE

    (depth_model,) = run(node("MVC_TinyDepthModel")).args
    backbone = run(node("MVC_TinyBackbone"), seed=0, window=0).args[0]
    plan = run(node("MVC_DepthAwareFeatureRendering"), trajectory=_cams(), depth_model=depth_model).args[0]
    text = [torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    run(node("MVC_MVCustomSampler"), model=backbone, trajectory=_cams(), positive=[[text[0], {}]],
        negative=[[text[1], {}]], dfr_plan=plan, seed=3, steps=2, cfg=5.0, pose_ratio=1.0, window=16, overlap=4)
    estimate = estimate_bytes(depth_model, (SIZE, SIZE)) + 3 * SIZE * SIZE * 4
    assert models.memory[-1] == estimate + MAX_WORKSPACE
