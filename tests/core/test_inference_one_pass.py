"""One-pass anchor depth: the geometry built mid-sampling from the anchor's x̂0 equals the two-pass resolution of
the same picture, DFR starts right after it, CLC's window starts with it, and nothing changes before it."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.backbone.hooks import FeatureHook
from mvcustom_core.backbone.sampler import decode_latents
from mvcustom_core.backbone.tiny import tiny_backbone
from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.depth import estimate_depth, tiny_depth_model
from mvcustom_core.inference import CLCPlan, DFRPlan, mvcustom_sample, prepare_run, resolve_anchor_geometry
from mvcustom_core.inference.dfr import DFRError
from mvcustom_core.inference.one_pass import one_pass_step

SIZE, STEPS = 64, 6  # 8 x 8 latents

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cams(n: int) -> CameraSet:
    az = torch.linspace(-0.25, 0.25, n)
    eye = torch.stack([1.8 * torch.sin(az), torch.full_like(az, -0.3), -1.8 * torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3)), 50.0, (SIZE, SIZE))


@pytest.fixture(scope="module")
def world(customize_tiny):
    backbone = tiny_backbone(0)
    model, ctx, _ = customize_tiny(backbone.unet.eval(), _cams(4))
    return model, ctx, backbone.vae.eval(), tiny_depth_model(0)


def test_one_pass_step_is_a_share_of_the_schedule():
    plan = DFRPlan(depth_model=object(), one_pass_at=0.1)
    assert [one_pass_step(plan, s) for s in (6, 20, 50)] == [0, 1, 4]  # after the 1st, 2nd, 5th step
    assert one_pass_step(DFRPlan(one_pass_at=0.0), 50) == 0  # at least one step: x̂0 needs a prediction


def test_one_pass_geometry_is_the_two_pass_resolution_of_the_early_x0(world, text):
    model, ctx, vae, depth_model = world
    cond, uncond = text
    cams = _cams(3)
    plan = DFRPlan(depth_model=depth_model, one_pass_at=0.5, steps=5, opacity_threshold=0.1)
    clc = CLCPlan(fraction=0.34, erosion=0)  # 2 of 6 steps
    k = one_pass_step(plan, STEPS)
    assert k == 2

    # Reference: the same sampler without DFR / CLC (nothing acts before step k anyway), x̂0 at step k.
    seen = {}
    mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, seed=5, steps=STEPS,
                    callback=lambda i, total, x0: seen.update({i: x0.clone()}))
    picture = decode_latents(vae, seen[k][1:2])  # the middle frame is the anchor
    depth = estimate_depth(depth_model, picture)
    expected, aligned = resolve_anchor_geometry(
        DFRPlan(depth=depth.values[0], depth_valid=depth.valid[0], depth_kind=depth.kind, opacity_threshold=0.1),
        cams, unet=model, pose_context=ctx)
    assert aligned.fit is not None

    run = prepare_run(model, cams, pose_context=ctx, dfr=plan, clc=clc, steps=STEPS, vae=vae)
    assert run.geometry is None and run.dfr.geometry is None and run.clc.keep is None
    run.dfr.record = []
    latents_by_step = {}
    out = mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, seed=5, steps=STEPS, run=run,
                          callback=lambda i, total, x0: latents_by_step.update({i: x0.clone()}))
    assert out.shape == (3, 4, 8, 8)
    torch.testing.assert_close(run.one_pass.picture, picture[0])
    torch.testing.assert_close(run.geometry.depth, expected.depth)
    assert run.one_pass.step == k and run.one_pass.aligned.fit is not None
    # nothing before the geometry: same x̂0 as the plain run up to step k
    for i in range(k + 1):
        torch.testing.assert_close(latents_by_step[i], seen[i], rtol=0, atol=0)
    assert sorted({step for step, *_ in run.dfr.record}) == list(range(k + 1, 5))  # DFR from k + 1 to K - 1
    assert run.clc.record == [k, k + 1]  # CLC's 2-step window starts at the geometry's step


def test_one_pass_needs_the_vae(world):
    model, ctx, _, depth_model = world
    with pytest.raises(DFRError, match="VAE"):
        prepare_run(model, _cams(3), pose_context=ctx, dfr=DFRPlan(depth_model=depth_model), steps=STEPS)


def test_a_plan_with_depth_ignores_its_depth_model(world, text):
    """Two passes win: a depth (from the first pass) makes the depth model unused."""
    model, ctx, vae, depth_model = world
    plan = DFRPlan(depth=torch.full((SIZE, SIZE), 2.5), depth_kind="metric", scale=1.0, depth_model=depth_model)
    run = prepare_run(model, _cams(3), pose_context=ctx, dfr=plan, steps=STEPS, vae=vae)
    assert run.one_pass is None and run.geometry is not None


def test_one_pass_run_stays_within_its_estimate(world, text):
    """The one-pass step decodes a frame and runs the depth model between two UNet calls: its own phase of the
    estimate (here, the tiny depth model at its 518-px input outweighs the tiny UNet's activations), and the
    measured peak of the whole run stays below the estimated one."""
    from mvcustom_core.depth.estimate import estimate_bytes
    from mvcustom_core.memory import MIN_WORKSPACE, MemoryBudget, measure_peak
    from mvcustom_core.memory_estimate import vae_decode_frame_bytes

    model, ctx, vae, depth_model = world
    cond, uncond = text
    cams = _cams(3)
    plan = DFRPlan(depth_model=depth_model, one_pass_at=0.5, steps=5, opacity_threshold=0.1)
    probe = prepare_run(model, cams, pose_context=ctx, dfr=plan, steps=STEPS, vae=vae,
                        memory_budget=MemoryBudget(1 << 40, "cpu", "set")).memory
    phase = probe.phases["one-pass depth"]
    assert phase == max(vae_decode_frame_bytes(vae, (SIZE, SIZE), torch.float32),
                        3 * SIZE * SIZE * 4 + estimate_bytes(depth_model, (SIZE, SIZE)))
    assert phase == max(probe.phases.values())
    budget = MemoryBudget(probe.peak - probe.workspace + MIN_WORKSPACE, "cpu", "set")
    run = prepare_run(model, cams, pose_context=ctx, dfr=plan, steps=STEPS, vae=vae, memory_budget=budget)
    assert run.memory.workspace == MIN_WORKSPACE
    _, measured = measure_peak(lambda: mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, dfr=plan,
                                                       seed=5, steps=STEPS, run=run))
    assert run.one_pass.geometry is not None and 0 < measured <= run.memory.peak
    others = max(v for k, v in run.memory.phases.items() if k != "one-pass depth")
    assert measured > run.memory.peak - phase + others  # without the phase the estimate fell short (18 vs 38 MB)
