"""Ray sampling for the FeatureNeRF branch: stratified samples and inverse-CDF importance samples.

Convention: a ray is ``o + t·d`` with unit ``d`` (world units, :class:`~mvcustom_core.cameras.CameraSet`
convention), so ``t`` is the distance from the camera centre. Samples live in ``[near, far]`` split
into ``S`` equal bins of width ``δ = (far − near) / S``; un-jittered samples are the bin centres
(CustomDiffusion360 uses 24 samples on [0, 2] in normalized scene units, method.md §4.4).

Plain torch is already the fast path here: every op is a handful of vectorized tensor ops (cumsum,
searchsorted, gather) with no per-ray loop, so a kernel would not pay.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mvcustom_core.cameras import CameraSet

__all__ = ["camera_rays", "stratified_samples", "importance_samples", "points_along_rays", "bin_edges"]


def camera_rays(cams: CameraSet, height: int | None = None, width: int | None = None) -> tuple[Tensor, Tensor]:
    """One ray per pixel (cell) centre of an ``height × width`` grid over each camera's image.

    Args:
        cams: F cameras; the grid may be coarser than ``cams.image_size`` (e.g. a UNet feature map):
            intrinsics are rescaled so cells cover the same field of view.

    Returns:
        origins: ``[F, h, w, 3]`` camera centres (broadcast).
        dirs: ``[F, h, w, 3]`` unit world directions.
    """
    if height is not None or width is not None:
        cams = cams.with_image_size((height or cams.height, width or cams.width))
    dirs = cams.ray_directions()
    origins = cams.centers[:, None, None, :].expand_as(dirs)
    return origins, dirs


def stratified_samples(
    near: float,
    far: float,
    num_samples: int,
    batch_shape: tuple[int, ...],
    *,
    jitter: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``[*batch_shape, S]`` sample distances: bin centres, or uniform within each bin when ``jitter``."""
    if not far > near:
        raise ValueError(f"far ({far}) must be greater than near ({near})")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    delta = (far - near) / num_samples
    lower = near + delta * torch.arange(num_samples, dtype=dtype, device=device)
    offset = (torch.rand(*batch_shape, num_samples, generator=generator, dtype=dtype).to(device)
              if jitter else torch.full((*batch_shape, num_samples), 0.5, dtype=dtype, device=device))
    return lower + delta * offset


def bin_edges(near: float, far: float, num_bins: int, *, dtype=torch.float32, device=None) -> Tensor:
    """``[num_bins + 1]`` equally spaced bin edges on ``[near, far]``."""
    return torch.linspace(near, far, num_bins + 1, dtype=dtype, device=device)


def importance_samples(
    edges: Tensor,
    weights: Tensor,
    num_samples: int,
    *,
    floor: float = 0.01,
    deterministic: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw sample distances from the piecewise-constant PDF given by per-bin weights.

    Inverse-transform sampling of the hierarchical volume sampler (Mildenhall et al., NeRF, ECCV 2020,
    §5.2): pdf ∝ w + floor per bin, cdf by cumulative sum, ``t = edge_lo + (u − cdf_lo)/(cdf_hi − cdf_lo)·δ``.
    The floor (+0.01, CustomDiffusion360) keeps every bin reachable so an empty ray degrades to uniform.

    Args:
        edges: ``[..., S+1]`` (or ``[S+1]``, shared) increasing bin edges.
        weights: ``[..., S]`` non-negative weights from a previous rendering pass.
        num_samples: N samples per ray.
        deterministic: ``u`` at the centres of N equal quantile bins (sorted output); otherwise uniform
            random ``u`` (sorted after drawing).

    Returns:
        ``[..., N]`` sorted distances, detached (samples are positions, not a differentiable quantity).
    """
    weights = weights.detach()
    if edges.dim() == 1:
        edges = edges.expand(*weights.shape[:-1], edges.shape[0])
    if edges.shape[-1] != weights.shape[-1] + 1:
        raise ValueError(f"edges must have one more entry than weights per ray, got {edges.shape[-1]} "
                         f"and {weights.shape[-1]}")
    if bool((weights < 0).any()):
        raise ValueError("weights must be non-negative")
    pdf = weights + floor
    pdf = pdf / pdf.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), pdf.cumsum(dim=-1)], dim=-1).clamp(max=1.0)
    cdf[..., -1] = 1.0
    if deterministic:
        u = (torch.arange(num_samples, dtype=weights.dtype, device=weights.device) + 0.5) / num_samples
        u = u.expand(*weights.shape[:-1], num_samples).contiguous()
    else:
        u = torch.rand(*weights.shape[:-1], num_samples, generator=generator, dtype=weights.dtype)
        u = u.to(weights.device).sort(dim=-1).values
    # Bin index i with cdf[i] <= u < cdf[i+1].
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, pdf.shape[-1]) - 1
    cdf_lo, cdf_hi = cdf.gather(-1, idx), cdf.gather(-1, idx + 1)
    e_lo, e_hi = edges.gather(-1, idx), edges.gather(-1, idx + 1)
    frac = ((u - cdf_lo) / (cdf_hi - cdf_lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    return (e_lo + frac * (e_hi - e_lo)).detach()


def points_along_rays(origins: Tensor, dirs: Tensor, t: Tensor) -> Tensor:
    """``origins, dirs: [..., 3]``, ``t: [..., S]`` -> ``[..., S, 3]`` points ``o + t·d``."""
    return origins.unsqueeze(-2) + t.unsqueeze(-1) * dirs.unsqueeze(-2)
