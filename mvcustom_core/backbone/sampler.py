"""Sampler core: DDIM (paper default: 50 steps, η = 0, CFG 5) and Euler over a UNetMotionModel.

All F frames are denoised jointly: the latents ``[F, 4, h, w]`` go into the UNetMotionModel as one
video ``[N, 4, F, h, w]`` (N = 2 with batched guidance), so the motion modules (dense
spatio-temporal attention when enabled) see every frame at every step.

Convention (latent scale):
    ``sample`` takes and returns latents in the *diffusion space*: VAE latents × 0.18215 (SD1.5's
    ``scaling_factor``), i.e. what the UNet sees. ComfyUI's LATENT ``samples`` are the *unscaled* VAE
    latents: its SD15 latent format multiplies by 0.18215 in ``process_in`` and divides in
    ``process_out`` (Comfy-Org/ComfyUI ``comfy/latent_formats.py``, class ``SD15``). Use
    ``to_comfy_latent`` / ``from_comfy_latent`` at the node boundary.

Notation (DDIM, Song et al. 2021, eq. 12 with σ = 0): ᾱ_t = ``scheduler.alphas_cumprod[t]``,
    x̂0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t,   x_{t−1} = √ᾱ_{t−1} x̂0 + √(1−ᾱ_{t−1}) ε.
Guidance (Ho & Salimans 2022): ε = ε_uncond + s (ε_cond − ε_uncond).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from ..checks import about, check_shape
from .hooks import FeatureHook, StepContext, run_step_hooks

__all__ = [
    "SD15_SCHEDULER_CONFIG",
    "ANIMATEDIFF_SCHEDULER_CONFIG",
    "DEFAULT_SCHEDULER_CONFIG",
    "LATENT_SCALE",
    "make_scheduler",
    "fit_steps_offset",
    "initial_noise",
    "sample",
    "predict_noise",
    "to_comfy_latent",
    "from_comfy_latent",
    "conditioning_to_tensor",
    "decode_latents",
]

SchedulerName = Literal["ddim", "euler"]

# SD1.5's scheduler_config.json (runwayml/stable-diffusion-v1-5, hand-copied: no hub access).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
# AnimateDiff's motion modules are sampled with *linear* betas: diffusers' AnimateDiff docs build
# DDIMScheduler(..., beta_schedule="linear", clip_sample=False, steps_offset=1); open-mmlab/mmagic
# configs/animatediff/*.py use beta_schedule='linear'; ComfyUI AnimateDiff-Evolved's default is
# "sqrt_linear (AnimateDiff)" (= diffusers "linear"). CameraCtrl likewise (peers.md §1.1).
ANIMATEDIFF_SCHEDULER_CONFIG: dict[str, Any] = {**SD15_SCHEDULER_CONFIG, "beta_schedule": "linear"}
# The default: the backbone is an AnimateDiff UNet, and both training loops (backbone stage and
# customization) noise with these betas, so sampling must use them too.
DEFAULT_SCHEDULER_CONFIG = ANIMATEDIFF_SCHEDULER_CONFIG

LATENT_SCALE = 0.18215  # SD1.5 VAE scaling_factor


def fit_steps_offset(config: dict[str, Any], steps: int) -> dict[str, Any]:
    """``config`` with ``steps_offset`` lowered, if needed, so the first of ``steps`` timesteps exists.

    With ``"leading"`` spacing diffusers puts the timesteps at ``i·⌊T/S⌋ + offset`` (``i < S``, T = 1000
    trained timesteps). SD1.5's offset 1 puts the first one at ``T`` when ``S = T`` — one past the last trained
    timestep (an ``IndexError`` in ``alphas_cumprod``) — while the grid ``0 … T−1`` needs no shift then. For
    every ``S < T``, ``(S−1)·⌊T/S⌋ + 1 ≤ T − 1``, so those schedules are unchanged.
    """
    if config.get("timestep_spacing", "leading") != "leading":
        return config
    train = int(config.get("num_train_timesteps", 1000))
    last = (int(steps) - 1) * (train // int(steps))
    offset = min(int(config.get("steps_offset", 0)), train - 1 - last)
    return {**config, "steps_offset": max(offset, 0)}


def make_scheduler(name: SchedulerName = "ddim", config: dict[str, Any] | None = None, steps: int | None = None):
    """A fresh diffusers scheduler (``DDIMScheduler`` or ``EulerDiscreteScheduler``) from a config dict.

    Keys the scheduler does not take (e.g. ``clip_sample`` for Euler) are dropped. With ``steps`` (1 … T) the
    offset is fitted so that every step count gives trained timesteps (:func:`fit_steps_offset`).
    """
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    if name == "ddim":
        cls = DDIMScheduler
    elif name == "euler":
        cls = EulerDiscreteScheduler
    else:
        raise ValueError(f"scheduler must be 'ddim' or 'euler', got {name!r}")
    config = dict(DEFAULT_SCHEDULER_CONFIG if config is None else config)
    if steps is not None:
        train = int(config.get("num_train_timesteps", 1000))
        if not 1 <= int(steps) <= train:
            raise about("steps", ValueError(f"steps must be in [1, {train}] (the trained timesteps), got {steps}"))
        config = fit_steps_offset(config, int(steps))
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in config.items() if k in accepted})


def initial_noise(num_frames: int, height: int, width: int, generator: torch.Generator,
                  channels: int = 4) -> Tensor:
    """Standard normal latents ``[F, channels, height // 8, width // 8]`` drawn on the CPU.

    Drawing on the CPU makes a seed give the same latents on every device.
    """
    return torch.randn(num_frames, channels, height // 8, width // 8, generator=generator, dtype=torch.float32)


def _frames_text(text: Tensor, num_frames: int, name: str) -> Tensor:
    """[1 | F, L, D] or [L, D] -> [F, L, D] (one prompt broadcast to all frames, or one per frame)."""
    if text.ndim == 2:
        text = text[None]
    dims = check_shape(text, "B L D", name)
    if dims["B"] == 1:
        return text.expand(num_frames, -1, -1)
    if dims["B"] != num_frames:
        raise ValueError(f"{name} has batch {dims['B']}; expected 1 (shared by all frames) or "
                         f"num_frames = {num_frames} (one per frame)")
    return text


def _equal_length_texts(*texts: Tensor) -> list[Tensor]:
    """Text states ``[F, L_i, D]`` repeated along L to ``lcm(L_i)`` so that branches can share one batch.

    Cross-attention is unchanged when every key/value is repeated the same number of times (each softmax
    weight is split evenly over the copies). A long prompt (ComfyUI: 77·chunks tokens) and a short negative
    prompt then run batched; ComfyUI pads the same way (``comfy/conds.py``, ``CONDCrossAttn.concat``).
    """
    length = math.lcm(*(t.shape[1] for t in texts))
    return [t.repeat(1, length // t.shape[1], 1) for t in texts]


def predict_noise(unet: torch.nn.Module, x: Tensor, t: Tensor, text: Tensor) -> Tensor:
    """One model call on N videos of F frames.

    Args:
        x: [N, F, C, h, w] model input (already ``scale_model_input``-ed).
        t: 0-dim timestep.
        text: [N·F, L, D] text states (video-major, frame-minor, as diffusers' AnimateDiff pipeline).

    Returns:
        ε, [N, F, C, h, w] float32. A model without motion modules (a plain ``UNet2DConditionModel``)
        gets the N·F frames as an image batch.
    """
    n, f = x.shape[:2]
    param = next(unet.parameters())
    text = text.to(param.device, param.dtype)
    if hasattr(unet, "motion_modules") or any(hasattr(b, "motion_modules") for b in getattr(unet, "down_blocks", [])):
        video = x.permute(0, 2, 1, 3, 4).to(param.device, param.dtype)  # [N, C, F, h, w]
        out = unet(video, t, encoder_hidden_states=text).sample.permute(0, 2, 1, 3, 4)
    else:
        out = unet(x.flatten(0, 1).to(param.device, param.dtype), t, encoder_hidden_states=text).sample
    return out.reshape(x.shape).float()


def sample(
    unet: torch.nn.Module,
    cond: Tensor,
    uncond: Tensor | None,
    num_frames: int,
    height: int,
    width: int,
    steps: int = 50,
    cfg: float = 5.0,
    scheduler: SchedulerName = "ddim",
    seed: int = 0,
    *,
    eta: float = 0.0,
    hooks: Sequence[Any] = (),
    callback: Callable[[int, int, Tensor], None] | None = None,
    interrupt: Callable[[], None] | None = None,
    latents: Tensor | None = None,
    scheduler_config: dict[str, Any] | None = None,
    cfg_batch: bool = True,
    start_step: int = 0,
    end_step: int | None = None,
) -> Tensor:
    """Denoise F frames jointly from noise (or from given ``latents`` at the first timestep).

    Args:
        unet: diffusers ``UNetMotionModel`` (any device/dtype; scheduler math runs in float32).
        cond, uncond: text states [1 | F, L, D] (or [L, D]); ``uncond`` None or ``cfg == 1`` runs
            the conditional branch only.
        num_frames, height, width: F and the *pixel* size (multiples of 8); latents are [F, 4, H/8, W/8].
        steps, cfg, eta: number of steps, guidance scale s, DDIM η (Euler ignores η).
        scheduler: ``"ddim"`` or ``"euler"``; ``scheduler_config`` defaults to ``DEFAULT_SCHEDULER_CONFIG``
            (= ``ANIMATEDIFF_SCHEDULER_CONFIG``, the linear betas AnimateDiff and the pack's training loops
            use; ``SD15_SCHEDULER_CONFIG`` has SD1.5's ``scaled_linear`` betas).
        seed: seeds a CPU ``torch.Generator`` for the initial noise and any scheduler noise; the same
            seed gives identical latents.
        hooks: step hooks and ``FeatureHook``s (see ``hooks.py``); FeatureHooks are installed for the
            call and always removed.
        callback: ``callback(step, total, x0_pred)`` after each step (x0_pred [F, 4, h, w], diffusion space).
        interrupt: called before every step; it stops sampling by raising (e.g. ComfyUI's
            ``throw_exception_if_processing_interrupted``); the exception propagates, hooks are removed.
        latents: optional start latents [F, 4, h, w] in the diffusion space, used as-is (not scaled
            by ``init_noise_sigma``).
        cfg_batch: run both guidance branches in one model call (faster) or one after the other (half
            the activation memory).
        start_step, end_step: run only steps ``[start_step, end_step)`` of the ``steps``-step schedule
            (step indices as in ``StepContext.step``); with ``start_step > 0`` pass ``latents`` noised to
            that step's timestep t = ``scheduler.timesteps[start_step]`` in the scheduler's own space
            (DDIM: √ᾱ_t x0 + √(1−ᾱ_t) ε, i.e. ``add_noise``; Euler: x0 + σ_t ε). Running ``[0, k)`` and then
            ``[k, steps)`` on its result equals one run (deterministic samplers: DDIM η = 0, Euler).

    Returns:
        Latents [F, 4, H/8, W/8], float32, diffusion space (VAE latents × 0.18215), on the UNet's device.
    """
    if height % 8 or width % 8 or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive multiples of 8, got {height}×{width}")
    if steps < 1 or num_frames < 1:
        raise ValueError(f"steps and num_frames must be >= 1, got {steps}, {num_frames}")
    end_step = steps if end_step is None else end_step
    if not 0 <= start_step < end_step <= steps:
        raise ValueError(f"need 0 <= start_step < end_step <= steps, got {start_step}, {end_step}, {steps}")
    if eta != 0.0 and scheduler != "ddim":
        raise ValueError(f"eta applies to DDIM only (scheduler={scheduler!r})")
    if start_step > 0 and latents is None:
        raise ValueError("start_step > 0 needs latents noised to timesteps[start_step]")
    device = next(unet.parameters()).device
    generator = torch.Generator().manual_seed(int(seed))
    sched = make_scheduler(scheduler, scheduler_config, steps=steps)
    sched.set_timesteps(steps, device=device)

    cond_f = _frames_text(cond, num_frames, "cond")
    guided = uncond is not None and cfg != 1.0
    uncond_f = _frames_text(uncond, num_frames, "uncond") if guided else None

    if latents is None:
        x = initial_noise(num_frames, height, width, generator).to(device) * sched.init_noise_sigma
    else:
        check_shape(latents, f"{num_frames} 4 {height // 8} {width // 8}", "latents")
        x = latents.to(device, torch.float32)

    step_hooks = [h for h in hooks if not isinstance(h, FeatureHook)]
    feature_hooks = [h for h in hooks if isinstance(h, FeatureHook)]
    total = len(sched.timesteps)
    try:
        for h in feature_hooks:
            h.install(unet)
        for i, t in enumerate(sched.timesteps):
            if not start_step <= i < end_step:
                continue
            if interrupt is not None:
                interrupt()
            for h in feature_hooks:
                h.step = i
            model_in = sched.scale_model_input(x, t)[None]  # [1, F, 4, h, w]
            with torch.no_grad():
                if not guided:
                    for h in feature_hooks:
                        h.branch = "cond"
                    eps = predict_noise(unet, model_in, t, cond_f)[0]
                elif cfg_batch:
                    for h in feature_hooks:
                        h.branch = "uncond+cond"
                    e_u, e_c = predict_noise(unet, model_in.expand(2, -1, -1, -1, -1), t,
                                             torch.cat(_equal_length_texts(uncond_f, cond_f)))
                    eps = e_u + cfg * (e_c - e_u)
                else:
                    for h in feature_hooks:
                        h.branch = "uncond"
                    e_u = predict_noise(unet, model_in, t, uncond_f)[0]
                    for h in feature_hooks:
                        h.branch = "cond"
                    e_c = predict_noise(unet, model_in, t, cond_f)[0]
                    eps = e_u + cfg * (e_c - e_u)
            kwargs = {"eta": eta} if scheduler == "ddim" else {}
            out = sched.step(eps, t, x, generator=generator, **kwargs)
            ctx = StepContext(step=i, total=total, t=t, latents_in=x, noise_pred=eps,
                              x0_pred=out.pred_original_sample, latents=out.prev_sample,
                              scheduler=sched, generator=generator)
            x = run_step_hooks(step_hooks, ctx) if step_hooks else out.prev_sample
            if callback is not None:
                callback(i, total, ctx.x0_pred)
    finally:
        for h in feature_hooks:
            h.remove()
    return x


def to_comfy_latent(latents: Tensor) -> dict[str, Tensor]:
    """Diffusion-space latents [F, 4, h, w] -> ComfyUI LATENT ``{"samples": latents / 0.18215}`` (CPU)."""
    check_shape(latents, "F 4 h w", "latents")
    return {"samples": (latents / LATENT_SCALE).detach().cpu()}


def from_comfy_latent(latent: dict[str, Tensor]) -> Tensor:
    """ComfyUI LATENT dict -> diffusion-space latents [F, 4, h, w] (``samples`` × 0.18215)."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError(f"expected a ComfyUI LATENT dict with 'samples', got {type(latent).__name__}")
    samples = latent["samples"]
    check_shape(samples, "F 4 h w", "LATENT samples")
    return samples.float() * LATENT_SCALE


def conditioning_to_tensor(conditioning: Any) -> Tensor:
    """ComfyUI CONDITIONING -> text states [B, L, D].

    CONDITIONING is a list of ``[tensor [B, L, D], dict]`` pairs (L = 77·chunks for long prompts).
    Exactly one pair is supported: several pairs (ConditioningCombine, area or timestep ranges)
    have no meaning for this sampler and raise. The options dict (pooled output, …) is ignored.
    ``sample`` accepts B = 1 (one prompt for all frames) or B = F (one prompt per frame).
    """
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError(f"CONDITIONING must be a non-empty list of [tensor, dict] pairs, got "
                         f"{type(conditioning).__name__}")
    if len(conditioning) > 1:
        raise ValueError(f"CONDITIONING has {len(conditioning)} entries; the MVCustom sampler takes one prompt "
                         "(no ConditioningCombine / area / timestep-range conditioning)")
    entry = conditioning[0]
    if not isinstance(entry, (list, tuple)) or not entry or not isinstance(entry[0], Tensor):
        raise ValueError("CONDITIONING entry must be [tensor [B, L, D], dict]")
    check_shape(entry[0], "B L D", "CONDITIONING tensor")
    return entry[0]


def decode_latents(vae: torch.nn.Module, latents: Tensor, chunk: int | None = None,
                   memory_budget: Any = None, progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Diffusion-space latents [F, 4, h, w] -> images [F, 3, 8h, 8w] in [0, 1] with a diffusers AutoencoderKL.

    Decodes ``chunk`` frames at a time; by default as many as fit the memory workspace (a
    :class:`~mvcustom_core.memory.MemoryBudget`, GiB, or None = from the VAE device's free memory), from the
    per-frame estimate :func:`~mvcustom_core.memory_estimate.vae_decode_frame_bytes`. The VAE's
    ``config.scaling_factor`` undoes the latent scale.
    ``progress(frames done, F)`` after each chunk (it may raise to stop).
    """
    from mvcustom_core.memory import MemoryBudget, chunk_slices, resolve_budget, rows_per_chunk
    from mvcustom_core.memory_estimate import vae_decode_frame_bytes

    check_shape(latents, "F 4 h w", "latents")
    param = next(vae.parameters())
    scale = getattr(getattr(vae, "config", None), "scaling_factor", LATENT_SCALE)
    n, h, w = latents.shape[0], latents.shape[-2], latents.shape[-1]
    if chunk is None:
        budget = memory_budget if isinstance(memory_budget, MemoryBudget) else resolve_budget(memory_budget,
                                                                                               param.device)
        per_frame = vae_decode_frame_bytes(vae, (8 * h, 8 * w), param.dtype)
        # Decoding runs alone (after sampling): the whole budget is its scratch, at least one frame at a time.
        chunk = rows_per_chunk(n, per_frame, budget.bytes)
    frames = []
    with torch.no_grad():
        for sl in chunk_slices(n, max(1, chunk)):
            z = (latents[sl] / scale).to(param.device, param.dtype)
            frames.append(vae.decode(z).sample.float())
            if progress is not None:
                progress(min(sl.stop, n), n)
    return (torch.cat(frames) / 2 + 0.5).clamp(0, 1)
