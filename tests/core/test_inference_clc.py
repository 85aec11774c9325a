"""CLC step hook: only uncovered latents, only t ≥ τ, and the refreshed values equal diffusers' DDIM step from
the re-noised x_t' (x̂0 kept, fresh noise)."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.backbone.hooks import StepContext
from mvcustom_core.backbone.sampler import make_scheduler
from mvcustom_core.inference.clc import CLCError, CLCHook, CLCPlan, erode, keep_mask


def _context(step: int, sched, generator_seed: int = 3):
    g = torch.Generator().manual_seed(0)
    t = sched.timesteps[step]
    x_t = torch.randn(3, 4, 6, 6, generator=g)
    eps = torch.randn(3, 4, 6, 6, generator=g)
    out = sched.step(eps, t, x_t)
    return StepContext(step=step, total=len(sched.timesteps), t=t, latents_in=x_t, noise_pred=eps,
                       x0_pred=out.pred_original_sample, latents=out.prev_sample, scheduler=sched,
                       generator=torch.Generator().manual_seed(generator_seed))


def test_erosion_shrinks_covered_region_by_the_radius():
    m = torch.zeros(1, 1, 9, 9)
    m[..., 2:7, 2:7] = 1
    assert torch.equal(erode(m, 1)[0, 0].nonzero().min(0).values, torch.tensor([3, 3]))
    assert erode(m, 1).sum() == 9 and erode(m, 0).sum() == 25
    full = torch.ones(1, 1, 4, 4)
    assert torch.equal(erode(full, 2), full)  # outside the image does not erode


def test_clc_refreshes_only_uncovered_latents_with_the_renoised_ddim_step():
    sched = make_scheduler("ddim")
    sched.set_timesteps(10)
    coverage = torch.zeros(3, 1, 6, 6)
    coverage[:, :, :, :3] = 1  # left half seen by the anchor
    keep = keep_mask(coverage, anchor=1, erosion=0)
    hook = CLCHook(CLCPlan(tau=500, erosion=0), keep)
    ctx = _context(0, sched)  # t = 901 >= tau
    out = hook.on_step(ctx)
    kept = keep.expand(-1, 4, -1, -1) > 0.5
    assert torch.equal(out[kept], ctx.latents[kept])  # covered latents and the whole anchor untouched
    assert (out[~kept] != ctx.latents[~kept]).all()
    # Ground truth: re-noise x̂0 to t with the same fresh noise, then diffusers' DDIM step with that noise.
    noise = torch.randn(ctx.latents.shape, generator=torch.Generator().manual_seed(3))
    a_t = sched.alphas_cumprod[int(ctx.t)]
    x_t_new = a_t.sqrt() * ctx.x0_pred + (1 - a_t).sqrt() * noise
    reference = make_scheduler("ddim")
    reference.set_timesteps(10)
    expected = reference.step(noise, ctx.t, x_t_new).prev_sample
    torch.testing.assert_close(out[~kept], expected[~kept], rtol=1e-5, atol=1e-5)


def test_clc_in_frame_chunks_equals_one_chunk(monkeypatch):
    """A workspace of one frame: the same refreshed latents and the same noise draw as all frames at once."""
    import mvcustom_core.inference.clc as clc

    sched = make_scheduler("ddim")
    sched.set_timesteps(10)
    coverage = torch.zeros(3, 1, 6, 6)
    coverage[:, :, 2:, 1:4] = 1
    keep = keep_mask(coverage, anchor=0, erosion=0)
    whole = CLCHook(CLCPlan(tau=500, erosion=0), keep).on_step(_context(1, sched))
    frames = []
    renoise = clc.renoise_to_next
    monkeypatch.setattr(clc, "renoise_to_next", lambda ctx, noise, x0: frames.append(len(x0)) or renoise(ctx, noise, x0))
    hook = CLCHook(CLCPlan(tau=500, erosion=0), keep)
    hook.workspace = 4 * 6 * 6 * 16  # one frame's noise, fresh latents, mask and blend
    assert torch.equal(hook.on_step(_context(1, sched)), whole)
    assert frames == [1, 1, 1]


def test_clc_is_inactive_below_tau():
    sched = make_scheduler("ddim")
    sched.set_timesteps(10)
    hook = CLCHook(CLCPlan(tau=500), torch.zeros(3, 1, 6, 6))
    acted = [step for step in range(10) if hook.on_step(_context(step, sched)) is not None]
    assert acted == [i for i, t in enumerate(sched.timesteps) if int(t) >= 500] == [0, 1, 2, 3, 4]


def test_euler_refresh_uses_the_next_sigma():
    sched = make_scheduler("euler")
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 2, 2, generator=g) * sched.init_noise_sigma
    eps = torch.randn(1, 4, 2, 2, generator=g)
    t = sched.timesteps[0]
    out = sched.step(eps, t, x)
    ctx = StepContext(0, 5, t, x, eps, out.pred_original_sample, out.prev_sample, sched, torch.Generator().manual_seed(9))
    new = CLCHook(CLCPlan(tau=0), torch.zeros(1, 1, 2, 2)).on_step(ctx)
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(new, out.pred_original_sample + sched.sigmas[1] * noise)


def test_bad_settings_raise():
    with pytest.raises(CLCError, match="tau"):
        CLCPlan(tau=1001)
    with pytest.raises(CLCError, match="erosion"):
        CLCPlan(erosion=-1)


def _erode_reference(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Plain loops: kept where every in-image pixel of the (2p+1)² window is 1."""
    out = torch.zeros_like(mask)
    f, _, h, w = mask.shape
    for n in range(f):
        for i in range(h):
            for j in range(w):
                window = mask[n, 0, max(0, i - pixels):i + pixels + 1, max(0, j - pixels):j + pixels + 1]
                out[n, 0, i, j] = float(bool((window > 0.5).all()))
    return out


@pytest.mark.parametrize("pixels", [0, 1, 2, 4])
def test_erosion_matches_a_plain_min_filter_on_non_square_masks(pixels):
    g = torch.Generator().manual_seed(pixels)
    mask = (torch.rand(2, 1, 5, 9, generator=g) > 0.25).float()
    mask[1, 0, 1:4, 2:8] = 1.0
    assert torch.equal(erode(mask, pixels), _erode_reference(mask, pixels))


def test_keep_mask_keeps_the_anchor_whole_and_leaves_the_coverage_untouched():
    coverage = torch.zeros(3, 1, 4, 6)
    coverage[:, :, :, :4] = 1.0
    before = coverage.clone()
    for erosion in (0, 1):
        keep = keep_mask(coverage, anchor=2, erosion=erosion)
        assert torch.equal(coverage, before)
        assert keep[2].eq(1).all()
        assert torch.equal(keep[:2], _erode_reference(coverage[:2], erosion))


def test_clc_noise_comes_from_the_samplers_generator_and_the_mask_must_match():
    sched = make_scheduler("ddim")
    sched.set_timesteps(10)
    hook = CLCHook(CLCPlan(tau=0, erosion=0), torch.zeros(3, 1, 6, 6))
    a, b, c = (hook.on_step(_context(0, sched, seed)) for seed in (3, 3, 4))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(CLCError, match="does not match"):
        CLCHook(CLCPlan(tau=0), torch.zeros(3, 1, 6, 5)).on_step(_context(0, sched))
