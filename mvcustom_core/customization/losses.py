"""FeatureNeRF training losses (CustomDiffusion360 defaults, method.md §6.2).

Per pose-conditioned block, with ``m`` the subject mask resized to the block's grid:

    L_fg  = mean_r (clamp(O(r), 0, 1) − m(r))²
    L_bg  = mean_{r,k} |α_k(r) − m(r)| · (1 − m(r)) · [m(r) < 0.1]
    L_rgb = Σ_r m(r) ‖RGB(r) − I(r)‖² / (3 Σ_r m(r))

and ``L = L_diff + Σ_blocks (λ_fg L_fg + λ_bg L_bg + λ_rgb L_rgb)`` with λ = (10, 10, 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mvcustom_core.customization.featurenerf import FeatureNeRFOutput
from mvcustom_core.ops import morphology

__all__ = ["FeatureNeRFLossWeights", "resize_mask", "fg_loss", "bg_alpha_loss", "rgb_loss", "featurenerf_losses",
           "masked_denoising_loss"]


@dataclass(frozen=True)
class FeatureNeRFLossWeights:
    """λ of each FeatureNeRF loss (CustomDiffusion360's config values)."""

    fg: float = 10.0
    bg: float = 10.0
    rgb: float = 5.0


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """``[F, 1, H, W]`` mask in [0, 1] → ``[F, h, w]`` by area averaging (soft at the silhouette)."""
    return F.interpolate(mask.float(), size=size, mode="area")[:, 0]


def fg_loss(out: FeatureNeRFOutput, mask: Tensor) -> Tensor:
    """Opacity against the mask ``[F, h, w]``."""
    return (out.opacity.clamp(0, 1) - mask).square().mean()


def bg_alpha_loss(out: FeatureNeRFOutput, mask: Tensor, threshold: float = 0.1) -> Tensor:
    """Per-sample alphas pushed to zero on clear background (``mask < threshold``)."""
    m = mask.unsqueeze(-1)
    return ((out.alphas - m).abs() * (1 - m) * (m < threshold)).mean()


def rgb_loss(out: FeatureNeRFOutput, image: Tensor, mask: Tensor) -> Tensor:
    """Masked MSE of the RGB head against ``image [F, 3, H, W]`` in [0, 1], area-resized to the grid."""
    if out.rgb is None:
        raise ValueError("rgb_loss needs a FeatureNeRF with rgb_head=True")
    target = F.interpolate(image.float(), size=out.rgb.shape[-2:], mode="area")
    m = mask.unsqueeze(1)
    return ((out.rgb - target).square() * m).sum() / (3 * m.sum()).clamp_min(1.0)


def featurenerf_losses(out: FeatureNeRFOutput, mask: Tensor, image: Tensor | None = None,
                       weights: FeatureNeRFLossWeights = FeatureNeRFLossWeights()) -> dict[str, Tensor]:
    """Weighted losses of one block's output; ``mask [F, 1, H, W]`` at any resolution.

    Returns:
        ``{"fg": …, "bg": …, "rgb": …, "total": …}`` (weighted; ``rgb`` only with an image and an RGB head).
    """
    m = resize_mask(mask, tuple(out.opacity.shape[-2:]))
    losses = {"fg": weights.fg * fg_loss(out, m), "bg": weights.bg * bg_alpha_loss(out, m)}
    if image is not None and out.rgb is not None:
        losses["rgb"] = weights.rgb * rgb_loss(out, image, m)
    losses["total"] = sum(losses.values())
    return losses


def masked_denoising_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None, dilate: int = 7) -> Tensor:
    """ε-prediction MSE averaged inside the ``dilate × dilate``-dilated subject mask (CustomDiffusion360's
    ``mask_images``); ``pred, target [B, C, h, w]``, ``mask [B, 1, H, W]`` at any resolution."""
    err = (pred.float() - target.float()).square()
    if mask is None:
        return err.mean()
    m = morphology.dilate(F.interpolate(mask.float(), size=pred.shape[-2:], mode="area"), dilate, outside=-math.inf)
    m = (m > 0).to(err.dtype)
    return (err * m).sum() / (m.sum() * err.shape[1]).clamp_min(1.0)
