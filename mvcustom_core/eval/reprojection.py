"""Reprojection consistency: warp each frame into its neighbours through depth and cameras, score the overlap.

A weight-free multi-view consistency metric: if frames, depth and cameras agree, a frame warped into a
neighbour's view reproduces the neighbour's pixels wherever both see the same surface. Warping is
backward (for every target pixel: unproject with the target depth, project into the source, sample
the source bilinearly), and a depth test against the source depth drops target pixels that the source
does not see (occluded or off-screen), so only co-visible pixels are scored.

Scores: PSNR and SSIM restricted to the co-visible mask. SSIM follows Wang, Bovik, Sheikh & Simoncelli,
"Image quality assessment: from error visibility to structural similarity", IEEE TIP 13(4), 2004
(Gaussian window 11, σ = 1.5, K1 = 0.01, K2 = 0.03), computed by ``kornia.metrics.ssim``; the map is
averaged only where the whole 11×11 window lies inside the mask, so pixels outside the overlap never
leak into a score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F_
from kornia.metrics import ssim as kornia_ssim
from torch import Tensor

from mvcustom_core.cameras import CameraSet
from mvcustom_core.checks import check_finite, check_shape
from mvcustom_core.eval.errors import EvalInputError
from mvcustom_core.ops import morphology

__all__ = ["ReprojectionScores", "neighbour_pairs", "warp_into", "masked_psnr", "masked_ssim",
           "reprojection_consistency", "MAX_PSNR_DB", "SSIM_WINDOW"]

MAX_PSNR_DB = 100.0
SSIM_WINDOW = 11


def neighbour_pairs(num_frames: int, window: int = 1, *, cyclic: bool = False) -> tuple[Tensor, Tensor]:
    """Ordered (source, target) index pairs of frames at most ``window`` steps apart, both directions.

    Args:
        num_frames: F.
        window: largest index distance (``>= 1``).
        cyclic: also pair across the ends (a closed orbit: frame F-1 neighbours frame 0).

    Returns:
        ``(src [P], tgt [P])`` int64, sorted by target then source.
    """
    if window < 1:
        raise EvalInputError(f"window must be >= 1, got {window}")
    idx = torch.arange(num_frames)
    d = (idx[None, :] - idx[:, None]).abs()
    if cyclic:
        d = torch.minimum(d, num_frames - d)
    tgt, src = torch.nonzero((d > 0) & (d <= window), as_tuple=True)
    return src, tgt


def warp_into(src_images: Tensor, src_depth: Tensor, tgt_depth: Tensor, src_cams: CameraSet, tgt_cams: CameraSet,
              *, depth_tolerance: float = 0.02) -> tuple[Tensor, Tensor]:
    """Backward-warp P source images into P target views (pairwise, frame p of each argument together).

    For target pixel centre u with depth z_t: X = unproject_t(u, z_t); (u_s, z_s) = project_s(X); the
    warped value is the source image sampled bilinearly at u_s. The pixel is *co-visible* when z_t is
    finite and positive, u_s lies inside the source image, z_s > 0, and the source's own depth at u_s
    (bilinear, the colour's taps) agrees with z_s within ``depth_tolerance · z_s``: occluded pixels and
    pixels whose taps straddle a depth edge fail.

    Args:
        src_images: ``[P, C, H, W]``.
        src_depth: ``[P, 1, H, W]`` camera-space z of the sources (non-finite: no surface).
        tgt_depth: ``[P, 1, H, W]`` camera-space z of the targets.
        src_cams: P cameras of the sources, image size (H, W).
        tgt_cams: P cameras of the targets, image size (H, W).
        depth_tolerance: relative depth-test tolerance.

    Returns:
        ``warped [P, C, H, W]`` (zero where not co-visible) and ``covisible [P, 1, H, W]`` bool.
    """
    dims = check_shape(src_images, "P C H W", "src_images")
    check_shape(src_depth, "P 1 H W", "src_depth", dims)
    check_shape(tgt_depth, "P 1 H W", "tgt_depth", dims)
    p, h, w = dims["P"], dims["H"], dims["W"]
    for name, cams in (("src_cams", src_cams), ("tgt_cams", tgt_cams)):
        if cams.num_frames != p or cams.image_size != (h, w):
            raise EvalInputError(f"{name}: expected {p} cameras of image size {(h, w)}, got {cams.num_frames} "
                                 f"of {cams.image_size}")
    dtype = src_images.dtype if src_images.is_floating_point() else torch.float32
    uv_t = tgt_cams.pixel_centers(dtype).to(src_images.device).reshape(1, -1, 2).expand(p, -1, -1)
    z_t = tgt_depth.to(dtype).reshape(p, -1)
    ok = torch.isfinite(z_t) & (z_t > 0)
    world = tgt_cams.to(src_images.device, dtype).unproject(uv_t, torch.where(ok, z_t, torch.ones_like(z_t)))
    uv_s, z_s = src_cams.to(src_images.device, dtype).project(world)
    ok &= torch.isfinite(uv_s).all(-1) & (z_s > 0)
    ok &= (uv_s[..., 0] >= 0) & (uv_s[..., 0] <= w) & (uv_s[..., 1] >= 0) & (uv_s[..., 1] <= h)
    # Pixel centres at +0.5 and align_corners=False: the image edges u = 0 and u = W map to -1 and +1.
    grid = torch.where(ok[..., None], uv_s, torch.zeros_like(uv_s))
    grid = torch.stack([2 * grid[..., 0] / w - 1, 2 * grid[..., 1] / h - 1], -1).reshape(p, h, w, 2)
    # The source depth is sampled with the same bilinear taps as the colour: where the taps straddle a
    # depth edge the interpolated depth misses z_s and the pixel (a fore/background colour blend) is dropped.
    src_z_at = F_.grid_sample(src_depth.to(dtype).nan_to_num(posinf=-1.0, neginf=-1.0, nan=-1.0), grid,
                              mode="bilinear", padding_mode="border", align_corners=False).reshape(p, -1)
    ok &= (src_z_at > 0) & ((src_z_at - z_s).abs() <= depth_tolerance * z_s)
    warped = F_.grid_sample(src_images.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)
    covisible = ok.reshape(p, 1, h, w)
    return warped * covisible, covisible


def masked_psnr(a: Tensor, b: Tensor, mask: Tensor, *, max_val: float = 1.0) -> Tensor:
    """PSNR over the pixels of ``mask``: ``10 log10(max_val² / MSE)``, MSE averaged over masked pixels and channels.

    Args:
        a, b: ``[P, C, H, W]``.
        mask: ``[P, 1, H, W]`` bool.

    Returns:
        ``[P]`` in dB, capped at ``MAX_PSNR_DB`` (identical images); NaN for an empty mask.
    """
    dims = check_shape(a, "P C H W", "a")
    check_shape(b, "P C H W", "b", dims)
    check_shape(mask, "P 1 H W", "mask", dims)
    m = mask.to(a.dtype)
    count = m.sum((1, 2, 3)) * dims["C"]
    mse = (((a - b) ** 2) * m).sum((1, 2, 3)) / count.clamp_min(1)
    floor = max_val ** 2 * 10 ** (-MAX_PSNR_DB / 10)
    psnr = 10 * torch.log10(max_val ** 2 / mse.clamp_min(floor))
    return torch.where(count > 0, psnr, torch.full_like(psnr, math.nan))


def masked_ssim(a: Tensor, b: Tensor, mask: Tensor, *, max_val: float = 1.0, window: int = SSIM_WINDOW) -> Tensor:
    """Mean SSIM (Wang et al. 2004, Gaussian window ``window``, σ 1.5) over pixels whose window lies in ``mask``.

    Args:
        a, b: ``[P, C, H, W]``.
        mask: ``[P, 1, H, W]`` bool.

    Returns:
        ``[P]`` in [-1, 1]; NaN where no full window fits inside the mask.
    """
    dims = check_shape(a, "P C H W", "a")
    check_shape(b, "P C H W", "b", dims)
    check_shape(mask, "P 1 H W", "mask", dims)
    m = mask.to(a.dtype)
    # Outside the mask both images take the same value, then only windows wholly inside are averaged.
    ssim_map = kornia_ssim(a * m, b * m, window, max_val=max_val).mean(1, keepdim=True)
    # Erosion by the window, with everything beyond the image border counted as outside the mask.
    inside = morphology.erode(m, window, outside=0.0)
    count = inside.sum((1, 2, 3))
    score = (ssim_map * inside).sum((1, 2, 3)) / count.clamp_min(1)
    return torch.where(count > 0, score, torch.full_like(score, math.nan))


@dataclass(frozen=True)
class ReprojectionScores:
    """Per-pair and mean reprojection consistency.

    Attributes:
        src, tgt: ``[P]`` frame indices of each scored pair.
        psnr: ``[P]`` masked PSNR in dB (NaN where the overlap is below ``min_overlap``).
        ssim: ``[P]`` masked SSIM (NaN likewise).
        overlap: ``[P]`` co-visible fraction of the target image.
    """

    src: Tensor
    tgt: Tensor
    psnr: Tensor
    ssim: Tensor
    overlap: Tensor

    @property
    def mean_psnr(self) -> float:
        """Mean PSNR over the scored pairs (NaN if none)."""
        return _nanmean(self.psnr)

    @property
    def mean_ssim(self) -> float:
        return _nanmean(self.ssim)

    @property
    def mean_overlap(self) -> float:
        return float(self.overlap.mean()) if self.overlap.numel() else math.nan


def _nanmean(x: Tensor) -> float:
    keep = x[~torch.isnan(x)]
    return float(keep.mean()) if keep.numel() else math.nan


def reprojection_consistency(frames: Tensor, depth: Tensor, cams: CameraSet, *, window: int = 1,
                             cyclic: bool = False, depth_tolerance: float = 0.02, min_overlap: float = 0.05,
                             pairs_per_batch: int = 8) -> ReprojectionScores:
    """Warp every frame into its neighbours and score the co-visible pixels.

    Args:
        frames: ``[F, 3, H, W]`` RGB in [0, 1].
        depth: ``[F, 1, H, W]`` camera-space z of each frame in the world units of ``cams``
            (non-finite or ≤ 0: no surface, never scored).
        cams: the F cameras the frames are meant to be seen from.
        window, cyclic: which pairs, see :func:`neighbour_pairs`.
        depth_tolerance: relative depth-test tolerance of :func:`warp_into`.
        min_overlap: pairs whose co-visible fraction is smaller are not scored (NaN).
        pairs_per_batch: pairs warped at once (memory bound).

    Returns:
        :class:`ReprojectionScores`.
    """
    dims = check_shape(frames, "F 3 H W", "frames")
    check_shape(depth, "F 1 H W", "depth", dims)
    check_finite(frames, "frames")
    if cams.num_frames != dims["F"] or cams.image_size != (dims["H"], dims["W"]):
        raise EvalInputError(f"cams: expected {dims['F']} cameras of image size {(dims['H'], dims['W'])}, "
                             f"got {cams.num_frames} of {cams.image_size}")
    src, tgt = neighbour_pairs(dims["F"], window, cyclic=cyclic)
    frames = frames.float()
    psnr, ssim, overlap = [], [], []
    for start in range(0, len(src), pairs_per_batch):
        s, t = src[start:start + pairs_per_batch], tgt[start:start + pairs_per_batch]
        warped, covisible = warp_into(frames[s], depth[s], depth[t], cams[s], cams[t],
                                      depth_tolerance=depth_tolerance)
        frac = covisible.flatten(1).float().mean(1)
        keep = frac >= min_overlap
        nan = torch.full_like(frac, math.nan)
        psnr.append(torch.where(keep, masked_psnr(warped, frames[t], covisible), nan))
        ssim.append(torch.where(keep, masked_ssim(warped, frames[t], covisible), nan))
        overlap.append(frac)
    empty = torch.zeros(0)
    return ReprojectionScores(src=src, tgt=tgt, psnr=torch.cat(psnr) if psnr else empty,
                              ssim=torch.cat(ssim) if ssim else empty, overlap=torch.cat(overlap) if overlap else empty)
