"""Consistency-aware latent completion (CLC, MVCustom Sec. 3.4; method.md §7.3) as a sampler step hook.

For the early steps with timestep ``t ≥ τ`` and each non-anchor frame with keep mask ``m`` (1 where the
anchor sees the latent, from the DFR geometry at latent resolution, optionally eroded)::

    x̂_0  = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t                     (the scheduler's pred_original_sample)
    x_t' = √ᾱ_t x̂_0 + √(1−ᾱ_t) ε_new,   ε_new ~ N(0, I)    (re-noise to the same t)
    x_t ← m ⊙ x_t + (1 − m) ⊙ x_t'                          (only disoccluded latents are refreshed)
    continue the DDIM step from the modified x_t

Choice for "continue" (open in the paper): no extra UNet pass. The noise consistent with ``x_t'`` and the
model's ``x̂_0`` is exactly ``ε_new``, so the deterministic DDIM step (Song et al. 2021, eq. 12, η = 0)
from ``x_t'`` is ``x_{t−1}' = √ᾱ_{t−1} x̂_0 + √(1−ᾱ_{t−1}) ε_new``; in the kept region the step is the
sampler's own. The hook therefore runs after the scheduler step and returns
``m ⊙ x_{t−1} + (1 − m) ⊙ x_{t−1}'``. (Euler: ``x_{next}' = x̂_0 + σ_next ε_new``, the same argument in
the σ parametrization of Karras et al. 2022.) Fresh noise is drawn from the sampler's CPU generator, so a
seed reproduces the run.

When (paper: "from T down to τ", τ close to T; method.md §7.3 suggests the first 10–20 % of the steps): CLC acts on
the first 10 % of the schedule, steps ``i < ⌊0.1·S + ½⌋`` of S (:func:`~mvcustom_core.backbone.schedule.leading_steps`,
the rule of the pose-block ratio and DFR): 5 of 50 steps (timesteps 981 … 901 of DDIM's leading spacing, what the
earlier default τ = 900 selected at 50 steps), 2 of 20, 3 of 30, 10 of 100. A timestep threshold τ (act while
t ≥ τ; ``CLCPlan.tau``, workflows saved before fractions) still works; it covers a different share of the steps
at each step count (τ = 900: 5 of 50 but 2 of 30).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mvcustom_core.backbone.hooks import StepContext
from mvcustom_core.backbone.schedule import check_fraction, leading_steps
from mvcustom_core.checks import check_shape
from mvcustom_core.memory import MAX_WORKSPACE, chunk_slices, dtype_bytes, rows_per_chunk
from mvcustom_core.ops import morphology

__all__ = ["CLCPlan", "CLCHook", "CLCError", "erode", "keep_mask", "renoise_to_next", "DEFAULT_CLC_FRACTION"]

DEFAULT_CLC_FRACTION = 0.1  # the first 5 of 50 steps (method.md §7.3: the first 10-20 %)


class CLCError(ValueError):
    """Bad CLC settings or masks."""


@dataclass(frozen=True)
class CLCPlan:
    """CLC settings.

    Attributes:
        fraction: part of the schedule CLC acts on: steps ``i < ⌊fraction·S + ½⌋`` of S (default 0.1).
        erosion: latent pixels the anchor's coverage is shrunk by (a (2e+1)² min-filter), so boundary
            latents also regenerate.
        tau: a timestep threshold τ in [0, 1000] instead: CLC acts on steps whose timestep t ≥ τ; None =
            ``fraction``.
    """

    fraction: float = DEFAULT_CLC_FRACTION
    erosion: int = 1
    tau: int | None = None

    def __post_init__(self) -> None:
        if self.tau is not None and not 0 <= int(self.tau) <= 1000:
            raise CLCError(f"CLC tau must be a timestep in [0, 1000], got {self.tau}")
        try:
            check_fraction(self.fraction, "CLC fraction")
        except ValueError as error:
            raise CLCError(str(error)) from None
        if int(self.erosion) < 0:
            raise CLCError(f"CLC erosion must be >= 0 latent pixels, got {self.erosion}")

    def acts(self, step: int, total: int, t: int) -> bool:
        """Whether CLC acts on step ``step`` (0-based) of ``total``, whose timestep is ``t``."""
        if self.tau is not None:
            return int(t) >= int(self.tau)
        return step < leading_steps(self.fraction, total)


def erode(mask: Tensor, pixels: int) -> Tensor:
    """Binary erosion of ``[F, 1, h, w]`` 0/1 masks by a ``(2·pixels+1)²`` square; outside the image counts as 1.

    Example:
        >>> m = torch.zeros(1, 1, 5, 5); m[..., 1:4, 1:4] = 1
        >>> erode(m, 1)[0, 0].nonzero().tolist()
        [[2, 2]]
    """
    check_shape(mask, "F 1 h w", "mask")
    if pixels <= 0:
        return mask.clone()
    return morphology.erode(mask.float(), 2 * pixels + 1, outside=1.0).to(mask.dtype)


def keep_mask(coverage: Tensor, anchor: int, erosion: int) -> Tensor:
    """``[F, 1, h, w]`` float: 1 where latents are kept (eroded anchor coverage; the anchor frame all 1)."""
    m = erode(coverage.float(), erosion)
    m[anchor] = 1.0
    return m


def renoise_to_next(ctx: StepContext, noise: Tensor, x0: Tensor | None = None) -> Tensor:
    """``x̂_0`` (default ``ctx.x0_pred``; or some of its frames) re-noised to the *next* step's noise level with
    ``noise`` (DDIM ᾱ_{t−1} or Euler σ_next)."""
    sched = ctx.scheduler
    x0 = ctx.x0_pred if x0 is None else x0
    if hasattr(sched, "sigmas") and not hasattr(sched, "final_alpha_cumprod"):  # Euler-type (σ space)
        sigma_next = sched.sigmas[ctx.step + 1].to(x0)
        return x0 + sigma_next * noise
    if hasattr(sched, "alphas_cumprod"):  # DDIM: diffusers' previous-timestep rule
        prev_t = int(ctx.t) - sched.config.num_train_timesteps // sched.num_inference_steps
        a_prev = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod
        a_prev = a_prev.to(x0)
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * noise
    raise CLCError(f"CLC does not know how to re-noise with {type(sched).__name__}")


class CLCHook:
    """Sampler step hook for CLC (see the module docstring).

    Args:
        plan: when (fraction or τ) and erosion.
        keep: ``[F, 1, h, w]`` latent keep mask (:func:`keep_mask`), 1 = anchor-visible; None = not known yet
            (one pass: set with ``start`` when the anchor geometry is built mid-sampling).
    ``start``: the step the fraction's window begins at (0; one pass: the step the geometry was built at).
    ``record`` lists the step indices CLC acted on.
    """

    def __init__(self, plan: CLCPlan, keep: Tensor | None) -> None:
        if keep is not None:
            check_shape(keep, "F 1 h w", "CLC keep mask")
        self.plan = plan
        self.keep = None if keep is None else keep.float()
        self.start = 0
        self.record: list[int] = []
        self.workspace: int | None = None  # scratch bytes of one chunk of frames (None: memory.MAX_WORKSPACE)

    def on_step(self, ctx: StepContext) -> Tensor | None:
        if self.keep is None or ctx.step < self.start:
            return None
        if not self.plan.acts(ctx.step - self.start, ctx.total, int(ctx.t)):
            return None
        if self.keep.shape[0] != ctx.latents.shape[0] or self.keep.shape[-2:] != ctx.latents.shape[-2:]:
            raise CLCError(f"CLC mask {tuple(self.keep.shape)} does not match latents {tuple(ctx.latents.shape)}")
        # One draw for all frames, so the seed's noise does not depend on the chunking; it stays on the CPU.
        noise = torch.randn(ctx.latents.shape, generator=ctx.generator, dtype=torch.float32)
        latents, device = ctx.latents, ctx.latents.device
        out = torch.empty_like(latents)
        per_frame = latents[0].numel() * 4 * dtype_bytes(torch.float32)  # noise, fresh latents, keep mask, blend
        workspace = MAX_WORKSPACE if self.workspace is None else self.workspace
        for sl in chunk_slices(latents.shape[0], rows_per_chunk(latents.shape[0], per_frame, workspace)):
            fresh = renoise_to_next(ctx, noise[sl].to(device), x0=ctx.x0_pred[sl])
            keep = self.keep[sl].to(device) > 0.5
            out[sl] = torch.where(keep, latents[sl], fresh.to(latents.dtype))
        self.record.append(ctx.step)
        return out
