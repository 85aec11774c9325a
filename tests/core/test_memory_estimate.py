"""Peak-memory estimates checked against measured peaks (torch.profiler's allocator events), the choices the
sampler makes from them (CFG batching, workspace), and the refusal of a run that cannot fit before any work."""

from __future__ import annotations

import copy

import pytest
import torch

from mvcustom_core.backbone.dense_attention import enable_dense_attention
from mvcustom_core.backbone.loading import shipped_config
from mvcustom_core.backbone.sampler import decode_latents
from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.inference import CLCPlan, DFRPlan, mvcustom_sample, prepare_run
from mvcustom_core.inference.dfr import default_dfr_layers
from mvcustom_core.memory import MIN_WORKSPACE, MemoryBudget, MemoryBudgetError, measure_allocations, measure_peak
from mvcustom_core.memory_estimate import (plan_run_memory, pose_block_grids, unet_activation_bytes,
                                           vae_decode_frame_bytes)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py (also: unet, text)

SIZE = 64


def _cams(n: int, size: int = SIZE) -> CameraSet:
    az = torch.linspace(-0.25, 0.25, n)
    eye = torch.stack([1.8 * torch.sin(az), torch.full_like(az, -0.3), -1.8 * torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3)), 50.0, (size, size))


@pytest.mark.parametrize("attention", ["temporal", 3, "full"])
@pytest.mark.parametrize("frames,latent", [(2, (8, 8)), (3, (16, 24))])
def test_unet_estimate_bounds_the_measured_activation_peak(unet, frames, latent, attention):
    """Also with dense spatio-temporal attention (window 3, full) in the motion modules: its chunks stay within
    the activations the estimate counts (the estimate has no attention-specific term)."""
    if attention != "temporal":
        unet = copy.deepcopy(unet)
        enable_dense_attention(unet, None if attention == "full" else attention)
    rows = 2 * frames
    x = torch.randn(2, 4, frames, *latent)
    text = torch.randn(rows, 5, 32)
    with torch.no_grad():
        _, measured = measure_peak(lambda: unet(x, 500, encoder_hidden_states=text))
    estimate = unet_activation_bytes(unet, rows, latent, torch.float32)
    assert measured <= estimate <= 1.5 * measured


def test_vae_estimate_bounds_the_measured_decode_peak():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(shipped_config("tiny/vae")).eval()
    z = torch.randn(1, 4, 16, 12)
    with torch.no_grad():
        _, measured = measure_peak(lambda: vae.decode(z))
    estimate = vae_decode_frame_bytes(vae, (128, 96), torch.float32)
    assert measured <= estimate <= 2.0 * measured


def test_decode_in_frames_that_fit_the_budget(monkeypatch):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(shipped_config("tiny/vae")).eval()
    z = torch.randn(5, 4, 8, 8)
    whole = decode_latents(vae, z, chunk=5)
    sizes = []
    decode = vae.decode
    monkeypatch.setattr(vae, "decode", lambda latents: sizes.append(len(latents)) or decode(latents))
    per_frame = vae_decode_frame_bytes(vae, (64, 64), torch.float32)
    out = decode_latents(vae, z, memory_budget=MemoryBudget(2 * per_frame, "cpu", "set"))
    assert sizes == [2, 2, 1]
    torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-5)


def test_pose_block_grids_follow_the_unet_levels(unet, customize_tiny):
    model, _ctx, block = customize_tiny(unet, _cams(4))
    assert pose_block_grids(model, (8, 12)) == {block.name: (8, 12, block.featurenerf.config.channels)}


def test_customized_run_stays_within_its_estimate(unet, text, customize_tiny):
    """DFR + CLC + pose blocks, both CFG branches in one call: the measured peak of the whole run is below the
    estimated peak (which the budget leaves at the smallest workspace, so the bound is close)."""
    model, ctx, _block = customize_tiny(unet, _cams(4))
    cond, uncond = text
    cams = _cams(3)
    dfr = DFRPlan(depth=torch.full((SIZE, SIZE), 2.5), depth_kind="metric", scale=1.0, fraction=0.7)
    probe = plan_run_memory(model, 3, (SIZE, SIZE), MemoryBudget(1 << 40, "cpu", "set"), pose_context=ctx,
                            dfr_layers=len(default_dfr_layers(model)), cache_dtype=torch.float16)
    budget = MemoryBudget(probe.peak - probe.workspace + MIN_WORKSPACE, "cpu", "set")
    run = prepare_run(model, cams, pose_context=ctx, dfr=dfr, clc=CLCPlan(), steps=3, memory_budget=budget)
    assert run.memory.cfg_batch and run.memory.workspace == MIN_WORKSPACE and ctx.workspace == MIN_WORKSPACE
    _, measured = measure_peak(lambda: mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, dfr=dfr,
                                                       clc=CLCPlan(), seed=1, steps=3, run=run))
    assert 0 < measured <= run.memory.peak


def test_a_budget_short_of_batched_cfg_runs_the_branches_in_turn(unet, text):
    cond, uncond = text
    cams = _cams(3)
    whole = plan_run_memory(unet, 3, (SIZE, SIZE), MemoryBudget(1 << 40, "cpu", "set"))
    one_branch = unet_activation_bytes(unet, 3, (SIZE // 8, SIZE // 8), torch.float32)
    # Room for one branch's activations and the smallest workspace, not for both branches.
    budget = MemoryBudget(whole.peak - whole.workspace - whole.phases["UNet activations"] + one_branch + MIN_WORKSPACE,
                          "cpu", "set")
    run = prepare_run(unet, cams, steps=2, memory_budget=budget)
    assert not run.memory.cfg_batch
    batched = mvcustom_sample(unet, cond, uncond, cams, seed=5, steps=2)
    in_turn = mvcustom_sample(unet, cond, uncond, cams, seed=5, steps=2, run=run)
    torch.testing.assert_close(in_turn, batched, rtol=1e-4, atol=1e-4)  # batch-size-dependent rounding
    assert not torch.equal(in_turn, batched)  # really another code path


def test_a_run_that_cannot_fit_is_refused_before_any_work(unet, text, customize_tiny):
    model, ctx, _block = customize_tiny(unet, _cams(4))
    cond, uncond = text
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(MemoryBudgetError) as error:
            mvcustom_sample(model, cond, uncond, _cams(3), pose_context=ctx, seed=1, steps=2,
                            dfr=DFRPlan(), memory_budget=MemoryBudget(1 << 20, "cpu", "set"))
    finally:
        handle.remove()
    message = str(error.value)
    assert calls == [] and ctx.mode == "off"  # no field depth render, no step, context untouched
    for words in ("3 frames of 64x64", "'window'", "'memory_budget_gb'", "budget of 0.00 GB"):
        assert words in message


def test_the_run_sizes_dense_attention_chunks_from_its_workspace_and_gives_the_unet_back(unet, text, customize_tiny,
                                                                                         monkeypatch):
    """Dense attention's chunks during a run come from the run's workspace (scores and softmax in float32); after the
    run, and after a set-up that fails midway (here: an anchor depth with no positive value), the UNet's own chunk
    budget and the pose context are as before."""
    import mvcustom_core.backbone.dense_attention as dense
    from mvcustom_core.inference.anchor_depth import AnchorDepthError

    model, ctx, _block = customize_tiny(unet, _cams(4))
    dense.enable_dense_attention(model, 3)
    seen = []
    attend = dense.dense_attention
    monkeypatch.setattr(dense, "dense_attention", lambda *a, **k: seen.append(k["chunk_elements"]) or attend(*a, **k))
    cond, uncond = text
    cams = _cams(3)
    probe = plan_run_memory(model, 3, (SIZE, SIZE), MemoryBudget(1 << 40, "cpu", "set"), pose_context=ctx,
                            cache_dtype=torch.float16)
    budget = MemoryBudget(probe.peak - probe.workspace + MIN_WORKSPACE, "cpu", "set")
    mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, seed=1, steps=2, memory_budget=budget)
    assert seen and set(seen) == {MIN_WORKSPACE // 8}

    def plain_call() -> set[int]:
        seen.clear()
        with torch.no_grad():
            model(torch.randn(2, 4, 3, 8, 8), 500, encoder_hidden_states=torch.randn(6, 5, 32))
        return set(seen)

    assert plain_call() == {dense.DEFAULT_CHUNK_ELEMENTS}
    bad_depth = DFRPlan(depth=torch.full((SIZE, SIZE), -1.0), depth_kind="metric", scale=1.0)
    with pytest.raises(AnchorDepthError):
        prepare_run(model, cams, pose_context=ctx, dfr=bad_depth, steps=2, memory_budget=budget)
    assert plain_call() == {dense.DEFAULT_CHUNK_ELEMENTS}
    assert ctx.mode == "off" and ctx.workspace is None


@pytest.mark.parametrize("cache_dtype", ["auto", None])
def test_the_fy_cache_the_first_step_leaves_is_the_estimates_to_the_byte(unet, text, customize_tiny, cache_dtype):
    """What stays allocated after the first step beyond its latents is the pose blocks' Fy cache, and the estimate's
    resident 'Fy cache' is exactly its size (float16 for a float32 UNet under 'auto', else float32)."""
    from mvcustom_core.backbone.sampler import sample

    model, ctx, _block = customize_tiny(unet, _cams(4))
    cond, uncond = text
    run = prepare_run(model, _cams(3), pose_context=ctx, steps=2, memory_budget=MemoryBudget(1 << 40, "cpu", "set"),
                      pose_cache_dtype=cache_dtype)
    try:
        with torch.no_grad():
            x, _peak, kept = measure_allocations(lambda: sample(run.model, cond, uncond, 3, SIZE, SIZE, 2, 5.0, seed=1,
                                                                hooks=run.hooks, end_step=1))
    finally:
        run.release()
        ctx.clear_cache()
        ctx.mode = "off"
    fy_cache = run.memory.resident["Fy cache"]
    assert fy_cache == 2 * 3 * (SIZE // 8) ** 2 * _block.featurenerf.config.channels * (2 if cache_dtype else 4)
    assert kept - x.numel() * x.element_size() == fy_cache
