"""Sampler core vs hand-written DDIM / Euler loops on a tiny random UNetMotionModel; CFG, seeds,
interrupt, latent scale conventions, CONDITIONING and VAE decoding."""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.backbone.sampler import (
    ANIMATEDIFF_SCHEDULER_CONFIG,
    LATENT_SCALE,
    SD15_SCHEDULER_CONFIG,
    conditioning_to_tensor,
    decode_latents,
    from_comfy_latent,
    make_scheduler,
    sample,
    to_comfy_latent,
)

F, SIZE, STEPS = 2, 64, 3  # 2 frames, 64 px -> 8×8 latents, 3 steps


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py (also: unet, text)


def _alphas_cumprod(beta_schedule: str) -> torch.Tensor:
    # diffusers DDPM/DDIM betas: "linear" = linspace(b0, b1); "scaled_linear" = linspace(√b0, √b1)²
    if beta_schedule == "linear":
        betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float32)
    else:
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _leading_timesteps(steps: int) -> list[int]:
    ratio = 1000 // steps  # "leading" spacing + steps_offset 1 (SD1.5 scheduler config)
    return [i * ratio + 1 for i in reversed(range(steps))]


def _eps(unet, x, t, text_states):
    """ε for one video x [F, 4, h, w] straight through diffusers (no sampler code)."""
    with torch.no_grad():
        out = unet(x.permute(1, 0, 2, 3)[None], torch.tensor(t), encoder_hidden_states=text_states.expand(F, -1, -1))
    return out.sample[0].permute(1, 0, 2, 3)


def test_scheduler_configs_match_the_published_betas():
    for config, kind in [(SD15_SCHEDULER_CONFIG, "scaled_linear"), (ANIMATEDIFF_SCHEDULER_CONFIG, "linear")]:
        sched = make_scheduler("ddim", config)
        torch.testing.assert_close(sched.alphas_cumprod, _alphas_cumprod(kind))
        sched.set_timesteps(50)
        assert sched.timesteps.tolist() == _leading_timesteps(50)  # 981, 961, ..., 1
    with pytest.raises(ValueError, match="ddim"):
        make_scheduler("heun")


def test_ddim_equals_hand_written_loop_with_cfg(unet, text):
    cond, uncond = text
    s = 5.0
    out = sample(unet, cond, uncond, F, SIZE, SIZE, steps=STEPS, cfg=s, scheduler="ddim", seed=3)

    a = _alphas_cumprod("linear")  # the default: AnimateDiff's betas
    x = torch.randn(F, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(3))
    ts = _leading_timesteps(STEPS)
    for t in ts:
        e_u, e_c = _eps(unet, x, t, uncond), _eps(unet, x, t, cond)
        eps = e_u + s * (e_c - e_u)  # classifier-free guidance
        prev = t - 1000 // STEPS
        a_t, a_prev = a[t], (a[prev] if prev >= 0 else a[0])  # set_alpha_to_one=False
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps  # DDIM, η = 0
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-5)


def test_euler_equals_hand_written_loop(unet, text):
    cond, _ = text
    out = sample(unet, cond, None, F, SIZE, SIZE, steps=STEPS, scheduler="euler", seed=5)

    a = _alphas_cumprod("linear")
    ts = _leading_timesteps(STEPS)
    sigmas = [((1 - a[t]) / a[t]).sqrt() for t in ts] + [torch.tensor(0.0)]  # σ_t = √((1-ᾱ)/ᾱ)
    # "leading" spacing: init_noise_sigma = √(σ_max² + 1) (diffusers EulerDiscreteScheduler)
    x = torch.randn(F, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(5))
    x = x * (sigmas[0] ** 2 + 1).sqrt()
    for i, t in enumerate(ts):
        eps = _eps(unet, x / (sigmas[i] ** 2 + 1).sqrt(), t, cond)  # c_in = 1/√(σ²+1)
        x = x + (sigmas[i + 1] - sigmas[i]) * eps  # Euler step of dx/dσ = ε (Karras et al. 2022, Alg. 1)
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-4)


def test_cfg_one_or_no_uncond_is_the_conditional_branch(unet, text):
    cond, uncond = text
    only_cond = sample(unet, cond, None, F, SIZE, SIZE, steps=2, seed=1)
    assert torch.equal(sample(unet, cond, uncond, F, SIZE, SIZE, steps=2, cfg=1.0, seed=1), only_cond)
    guided = sample(unet, cond, uncond, F, SIZE, SIZE, steps=2, cfg=5.0, seed=1)
    assert (guided - only_cond).abs().max() > 1e-3


def test_sequential_cfg_equals_batched(unet, text):
    cond, uncond = text
    batched = sample(unet, cond, uncond, F, SIZE, SIZE, steps=2, cfg=3.0, seed=2)
    sequential = sample(unet, cond, uncond, F, SIZE, SIZE, steps=2, cfg=3.0, seed=2, cfg_batch=False)
    torch.testing.assert_close(sequential, batched, rtol=1e-5, atol=1e-5)


def test_same_seed_same_latents_other_seed_differs(unet, text):
    cond, _ = text
    a = sample(unet, cond, None, F, SIZE, SIZE, steps=1, seed=11)
    b = sample(unet, cond, None, F, SIZE, SIZE, steps=1, seed=11)
    c = sample(unet, cond, None, F, SIZE, SIZE, steps=1, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # η > 0 draws scheduler noise from the same seeded generator: reproducible, and different from η = 0
    s1 = sample(unet, cond, None, F, SIZE, SIZE, steps=2, seed=11, eta=1.0)
    s2 = sample(unet, cond, None, F, SIZE, SIZE, steps=2, seed=11, eta=1.0)
    s0 = sample(unet, cond, None, F, SIZE, SIZE, steps=2, seed=11, eta=0.0)
    assert torch.equal(s1, s2) and (s1 - s0).abs().max() > 1e-3


def test_per_frame_prompts_and_bad_text_batch(unet, text):
    cond, _ = text
    shared = sample(unet, cond, None, F, SIZE, SIZE, steps=1, seed=0)
    per_frame = sample(unet, cond.expand(F, -1, -1), None, F, SIZE, SIZE, steps=1, seed=0)
    torch.testing.assert_close(per_frame, shared, rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_frames"):
        sample(unet, cond.expand(3, -1, -1), None, F, SIZE, SIZE, steps=1)
    with pytest.raises(ValueError, match="multiples of 8"):
        sample(unet, cond, None, F, 60, SIZE, steps=1)
    with pytest.raises(ValueError, match="eta"):
        sample(unet, cond, None, F, SIZE, SIZE, steps=1, scheduler="euler", eta=0.5)


def test_interrupt_stops_cleanly_and_progress_reports(unet, text):
    cond, _ = text
    calls = []

    class Stop(Exception):
        pass

    def interrupt():
        if len(calls) == 2:
            raise Stop

    with pytest.raises(Stop):
        sample(unet, cond, None, F, SIZE, SIZE, steps=4, seed=0, interrupt=interrupt,
               callback=lambda i, n, x0: calls.append((i, n, tuple(x0.shape))))
    assert calls == [(0, 4, (F, 4, 8, 8)), (1, 4, (F, 4, 8, 8))]


def test_comfy_latent_scale_round_trip():
    z = torch.randn(3, 4, 8, 8)
    comfy = to_comfy_latent(z)
    # ComfyUI SD15 latent_format.process_in(samples) = samples * 0.18215 is what the model sees
    torch.testing.assert_close(comfy["samples"] * 0.18215, z)
    torch.testing.assert_close(from_comfy_latent(comfy), z)
    assert LATENT_SCALE == 0.18215
    with pytest.raises(ValueError, match="samples"):
        from_comfy_latent({"latent": z})


def test_conditioning_to_tensor_rules():
    c = torch.randn(1, 77, 768)
    assert conditioning_to_tensor([[c, {"pooled_output": None}]]) is c
    with pytest.raises(ValueError, match="one prompt"):
        conditioning_to_tensor([[c, {}], [c, {}]])
    with pytest.raises(ValueError, match="CONDITIONING"):
        conditioning_to_tensor([])
    with pytest.raises(ValueError, match="CONDITIONING tensor"):
        conditioning_to_tensor([[torch.randn(77, 768), {}]])


def test_decode_latents_undoes_the_scale_and_maps_to_unit_range():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, norm_num_groups=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4).eval()
    z = torch.randn(3, 4, 4, 4)
    images = decode_latents(vae, z, chunk=2)
    with torch.no_grad():
        expected = (vae.decode(z / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert images.shape == (3, 3, 8, 8)
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-6)
    assert math.isclose(vae.config.scaling_factor, 0.18215)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_split_run_equals_one_run(unet, text, scheduler):
    cond, uncond = text
    whole = sample(unet, cond, uncond, F, SIZE, SIZE, steps=3, cfg=2.0, seed=4, scheduler=scheduler)
    head = sample(unet, cond, uncond, F, SIZE, SIZE, steps=3, cfg=2.0, seed=4, scheduler=scheduler, end_step=1)
    tail = sample(unet, cond, uncond, F, SIZE, SIZE, steps=3, cfg=2.0, seed=4, scheduler=scheduler,
                  latents=head, start_step=1)
    assert torch.equal(tail, whole)
    with pytest.raises(ValueError, match="start_step"):
        sample(unet, cond, None, F, SIZE, SIZE, steps=3, start_step=1)
    with pytest.raises(ValueError, match="start_step"):
        sample(unet, cond, None, F, SIZE, SIZE, steps=3, start_step=2, end_step=2, latents=head)


def test_batched_cfg_with_prompts_of_different_lengths_equals_sequential(unet, text):
    """A long prompt (ComfyUI: 77·chunks tokens) with a short negative one: the batched call must give what the
    two separate branch calls give (cross-attention is invariant to repeating all its keys the same number of
    times), not fail on concatenating [F, 10, D] with [F, 5, D]."""
    cond, uncond = text
    long_cond = torch.cat([cond, torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(8))], dim=1)
    sequential = sample(unet, long_cond, uncond, F, SIZE, SIZE, steps=2, cfg=3.0, seed=2, cfg_batch=False)
    batched = sample(unet, long_cond, uncond, F, SIZE, SIZE, steps=2, cfg=3.0, seed=2)
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-5)
    short_cond = sample(unet, cond, uncond, F, SIZE, SIZE, steps=2, cfg=3.0, seed=2)
    assert (batched - short_cond).abs().max() > 1e-3  # the extra tokens are attended to, not dropped


def test_decode_latents_chunk_below_one_decodes_frame_by_frame():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[8], in_channels=3, out_channels=3, norm_num_groups=4,
                        down_block_types=["DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D"],
                        latent_channels=4).eval()
    z = torch.randn(3, 4, 4, 4)
    with torch.no_grad():
        expected = (vae.decode(z / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    for chunk in (0, -2):
        torch.testing.assert_close(decode_latents(vae, z, chunk=chunk), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_every_step_count_up_to_the_trained_timesteps_gives_trained_timesteps(scheduler):
    """The node advertises steps up to 1000: with SD1.5's leading spacing + offset 1, 1000 steps asked for t = 1000."""
    for steps in range(1, 1001):
        sched = make_scheduler(scheduler, steps=steps)
        sched.set_timesteps(steps)
        t = sched.timesteps.round().long().tolist()
        assert len(set(t)) == steps and max(t) <= 999 and min(t) >= 0, steps
        if steps < 1000:
            assert t == _leading_timesteps(steps), steps  # unchanged below the maximum
    assert t == list(reversed(range(1000)))  # every trained timestep once
    with pytest.raises(ValueError, match=r"steps must be in \[1, 1000\]"):
        make_scheduler("ddim", steps=1001)


def test_the_maximum_step_count_samples(unet, text):
    """Two steps of the 1000-step schedule (the first is where t = 1000 used to raise IndexError)."""
    cond, uncond = text
    x = sample(unet, cond, uncond, F, SIZE, SIZE, steps=1000, cfg=2.0, seed=0, end_step=2)
    assert x.shape == (F, 4, SIZE // 8, SIZE // 8) and torch.isfinite(x).all()
