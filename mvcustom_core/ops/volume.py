"""Emission-absorption volume rendering of per-sample densities and features.

Formulas (Max 1995; NeRF, Mildenhall et al. 2020, eq. 3; CustomDiffusion360's renderer, method.md §4.6):

    σ_k = trunc_exp(σ_raw,k)          α_k = 1 − exp(−σ_k δ_k)
    T_k = exp(−Σ_{j<k} σ_j δ_j)       w_k = α_k T_k
    F(r) = Σ_k w_k g_k   O(r) = Σ_k w_k   RGB(r) = Σ_k w_k sigmoid(rgb_k)   D(r) = Σ_k w_k t_k

The background is zero (black features, zero opacity). ``D`` is the *un-normalized* expected depth
(it shrinks with opacity); ``expected_depth / opacity`` gives the depth of the visible surface.
Vectorized torch is already the fast path (one cumsum per ray batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["trunc_exp", "volume_render", "VolumeRender"]


class _TruncExp(torch.autograd.Function):
    """exp in the forward pass; the backward uses exp(clamp(x, −15, 15)) so a large raw density
    cannot produce an infinite gradient (torch-ngp / CustomDiffusion360's ``trunc_exp``)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(-15.0, 15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


@dataclass
class VolumeRender:
    """Per-ray outputs; ``...`` are the ray batch dims."""

    weights: Tensor  # [..., S] w_k
    opacity: Tensor  # [...]  O
    expected_depth: Tensor  # [...]  D = Σ w t
    features: Tensor | None  # [..., C]
    rgb: Tensor | None  # [..., 3]
    alphas: Tensor  # [..., S]

    def surface_depth(self, eps: float = 1e-6) -> Tensor:
        """``[...]`` D / O: depth of the visible surface for opaque rays."""
        return self.expected_depth / self.opacity.clamp_min(eps)


def volume_render(
    sigma_raw: Tensor,
    t: Tensor,
    deltas: Tensor | float,
    features: Tensor | None = None,
    rgb_logits: Tensor | None = None,
) -> VolumeRender:
    """Composite samples along rays.

    Args:
        sigma_raw: ``[..., S]`` raw densities (activated with :func:`trunc_exp`).
        t: ``[..., S]`` sample distances (for the expected depth).
        deltas: ``[..., S]`` or scalar interval lengths δ_k.
        features: ``[..., S, C]`` per-sample features g_k.
        rgb_logits: ``[..., S, 3]`` per-sample colour logits.
    """
    sigma = trunc_exp(sigma_raw)
    tau = sigma * deltas
    alphas = 1.0 - torch.exp(-tau)
    # Exclusive cumulative optical depth: T_k = exp(−Σ_{j<k} τ_j).
    trans = torch.exp(-(torch.cumsum(tau, dim=-1) - tau))
    weights = alphas * trans
    out_features = (weights.unsqueeze(-1) * features).sum(dim=-2) if features is not None else None
    rgb = (weights.unsqueeze(-1) * torch.sigmoid(rgb_logits)).sum(dim=-2) if rgb_logits is not None else None
    return VolumeRender(weights=weights, opacity=weights.sum(dim=-1), expected_depth=(weights * t).sum(dim=-1),
                        features=out_features, rgb=rgb, alphas=alphas)
