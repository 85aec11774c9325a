"""The anchor frame's depth for depth-aware feature rendering (DFR, method.md §7.2).

Sources:

* the customized FeatureNeRF's expected depth ``D(r) = Σ_k w_k t_k`` (method.md §4.6), rendered for the
  anchor camera from one pose-conditioned block (:func:`field_depth`): weight-free and metric in the
  customization's scene frame, but only on the subject (opacity > 0.5);
* a monocular estimate of the generated anchor frame (the paper: ZoeDepth) or a depth IMAGE from another
  pack, a :class:`~mvcustom_core.depth.DepthMap` of kind ``metric``, ``relative`` or ``disparity``, brought to
  the scene's scale by :func:`align_depth`.

Convention: "depth" is always the anchor camera's z-depth (OpenCV camera z, not the ray length), which is
what :func:`mvcustom_core.ops.build_feature_mesh` takes. The field integrates along *unit* ray directions,
so its expected ray length ``t`` converts as ``z = t · (d · forward)`` (:func:`ray_length_to_z`).

Alignment (open choice in the paper, Appendix B.2): the transformation each kind is known up to, fitted to the
field's depth z on the subject's pixels:

* ``metric``: z = s·x, scale only (the model's metres vs. the scene's normalized units);
* ``relative``: z = s·x + b;
* ``disparity``: 1/z = s·x + b. The fit is done in disparity because that is where the unknown map is affine
  (MiDaS, Ranftl et al. 2020, eq. 4, and Depth Anything are trained scale-and-shift invariant on inverse depth):
  converting to depth first would need the unknown shift, and 1/(x + b') is not an affine function of 1/x, so no
  depth-space fit could undo a wrong guess. Residuals are left unweighted in the fit's own space: weighting them by
  the reference depth (which would make them relative depth errors to first order, d(1/z) = −dz/z²) changes
  little over a subject's narrow depth range, but gives wrong reference pixels leverage (a floater at 3z would
  weigh 3 times more, and M-estimators do not resist leverage). The reported residual is the relative depth
  error |ẑ − z| / z, one unit for all kinds.

The fit is robust: an MM-estimate (Yohai 1987), i.e. a least-median-of-squares start and scale (Rousseeuw 1984;
breakdown point 50 %) refined by Tukey's biweight with that scale (95 % Gaussian efficiency), so wrong field
pixels (silhouette rims where the estimate sees the background, floaters) cannot drag the background even when
they are up to half of the subject's pixels (:func:`robust_fit`). :class:`AlignedDepth` reports the median
relative residual and the inlier share. Without a reference (no customization) the median depth goes to the anchor
camera's distance from the origin; a manual ``scale``/``shift`` overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mvcustom_core.cameras import CameraSet
from mvcustom_core.checks import check_shape
from mvcustom_core.depth.maps import DEPTH_KINDS, DepthKind

__all__ = ["DepthKind", "AlignedDepth", "AnchorDepthError", "DepthFit", "fit_scale_shift",
           "robust_fit", "align_depth", "ray_length_to_z", "field_depth"]

# Tukey's biweight constant for 95 % efficiency under Gaussian noise (Holland & Welsch 1977).
_TUKEY_C = 4.685
_MAD_TO_SIGMA = 1.4826
_EXACT = 1e-9  # relative residual below which a fit counts as exact
_INLIER = 0.01  # reported: share of reference pixels the aligned depth meets within 1 %


class AnchorDepthError(ValueError):
    """Unusable anchor depth (empty overlap with the reference, non-positive result, bad kind)."""


@dataclass(frozen=True)
class DepthFit:
    """A robust fit of ``y ≈ s·x (+ b)``.

    Attributes:
        scale, shift: the fitted map (shift 0 for scale-only fits).
        residual: median |relative depth error| over all fitted pixels.
        inliers: share of the fitted pixels whose aligned depth is within 1 % of the reference.
        pixels: number of fitted pixels.
    """

    scale: float
    shift: float
    residual: float
    inliers: float
    pixels: int


@dataclass(frozen=True)
class AlignedDepth:
    """Anchor z-depth in scene units.

    Attributes:
        depth: ``[H, W]`` z-depth, 0 where invalid.
        valid: ``[H, W]`` bool.
        scale, shift: the map applied (in disparity for ``kind="disparity"``).
        kind: what the input was.
        fit: the least-squares fit against the field's depth (None for a manual or median alignment).
        method: ``"fit"``, ``"manual"`` or ``"median"`` (median depth at the anchor camera's distance).
    """

    depth: Tensor
    valid: Tensor
    scale: float
    shift: float
    kind: DepthKind
    fit: DepthFit | None = None
    method: str = "fit"

    def summary(self) -> str:
        """One line for the UI, e.g. ``"disparity → 1/depth = 0.3·x + 0.05; fit residual 0.8 % ..."``."""
        how = "depth" if self.kind != "disparity" else "1/depth"
        text = f"{self.kind} → {how} = {self.scale:.4g}·x + {self.shift:.4g}"
        if self.fit is None:
            return text + (" (manual)" if self.method == "manual" else
                           " (median depth at the anchor camera's distance: nothing to fit against)")
        return (text + f"; fit residual {100 * self.fit.residual:.2g} % median |Δz|/z "
                f"({100 * self.fit.inliers:.0f} % of {self.fit.pixels} subject px within 1 %)")


def _pairs(x: Tensor, y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    if x.shape != y.shape:
        raise AnchorDepthError(f"cannot align depth of shape {tuple(x.shape)} to a reference of shape {tuple(y.shape)}")
    ok = torch.isfinite(x) & torch.isfinite(y)
    if mask is not None:
        ok &= mask.to(torch.bool)
    return x[ok].double(), y[ok].double()


def fit_scale_shift(x: Tensor, y: Tensor, mask: Tensor | None = None) -> tuple[float, float]:
    """Least-squares ``s, b = argmin Σ_mask (s·x + b − y)²`` (2×2 normal equations, float64).

    Args:
        x, y: same shape; mask: bool of the same shape (default: all finite pairs).

    Raises:
        AnchorDepthError: fewer than two distinct x values under the mask.
    """
    xs, ys = _pairs(x, y, mask)
    _need_distinct(xs, 2)
    a = torch.stack([xs, torch.ones_like(xs)], dim=1)  # [P, 2]
    sol = torch.linalg.solve(a.T @ a, a.T @ ys)
    return float(sol[0]), float(sol[1])


def _need_distinct(xs: Tensor, count: int) -> None:
    if xs.numel() < count or (count == 2 and float(xs.max() - xs.min()) == 0.0):
        raise AnchorDepthError(f"depth alignment needs at least {count} distinct depths under the mask, got "
                               f"{xs.numel()} pixels; give a manual scale/shift or a larger mask")


def _lmeds_start(design: Tensor, y: Tensor, starts: int) -> tuple[Tensor, float]:
    """Least median of squares over exact fits of random minimal subsets (Rousseeuw 1984), and its scale.

    Each candidate solves the model exactly on ``p`` random samples (``p`` = 1 or 2 parameters); the one whose
    median squared residual over all samples is least wins. Plain least squares is a candidate too. Breakdown
    point 50 %: as long as half the samples lie on the model, some subset is all inliers and beats every line
    through outliers. Scale: ``1.4826 · (1 + 5/(P − p)) · √median r²`` (Rousseeuw & Leroy 1987, eq. 1.3 of
    ch. 5). Subsets come from a fixed seed, so the fit is deterministic.

    Returns:
        ``(θ [p], σ)``.
    """
    count, params = design.shape
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(count, (starts, params), generator=generator).to(design.device)
    a, b = design[picks], y[picks]  # [M, p, p], [M, p]
    det = a[:, 0, 0] if params == 1 else a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    ok = det.abs() > 1e-12 * a.abs().amax(dim=(1, 2)).clamp_min(1e-300) ** params
    candidates = torch.linalg.solve(a[ok], b[ok][..., None])[..., 0]  # [M', p]
    plain = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    candidates = torch.cat([plain[None], candidates])
    medians = ((design @ candidates.T) - y[:, None]).square().median(dim=0).values  # [M' + 1]
    best = int(medians.argmin())
    sigma = _MAD_TO_SIGMA * (1 + 5 / max(count - params, 1)) * float(medians[best].sqrt())
    return candidates[best], sigma


def robust_fit(x: Tensor, y: Tensor, *, shift: bool = True, iterations: int = 50, starts: int = 500
               ) -> tuple[float, float]:
    """Robust fit of ``y ≈ s·x (+ b)``: an MM-estimate (Yohai 1987).

    1. A high-breakdown start and scale σ: least median of squares over random minimal subsets
       (:func:`_lmeds_start`), 50 % breakdown point.
    2. Tukey's biweight M-estimate from that start with σ fixed, by iteratively reweighted least squares
       (c = 4.685: 95 % efficiency under Gaussian noise; Holland & Welsch 1977). Samples more than c·σ off the
       fit get weight 0.

    The start matters: in a fit of depth to a subject's narrow depth range, samples where the estimate sees the
    background but the field the subject (its silhouette is up to half a latent pixel wider) have the subject's
    y at a far-off x. From plain least squares even 10 % of them tilt the line to nearly flat, which fits every
    sample's y within the subject's depth range, and an M-estimate stays there.

    Args:
        x, y: ``[P]`` float64 samples.
        shift: fit ``b`` too (False: ``b = 0``).
        iterations: IRLS steps at most; starts: random minimal subsets tried.

    Returns:
        ``(s, b)``.

    Raises:
        AnchorDepthError: too few distinct samples for the model.
    """
    _need_distinct(x, 2 if shift else 1)
    design = torch.stack([x, torch.ones_like(x)], dim=1) if shift else x[:, None]  # [P, 1 | 2]
    theta, sigma = _lmeds_start(design, y, starts)
    sigma = max(sigma, _EXACT * float(y.abs().median()))  # half the samples fitted exactly: keep those
    for _ in range(iterations):
        u = (design @ theta - y).abs() / sigma
        w = torch.where(u < _TUKEY_C, (1 - (u / _TUKEY_C) ** 2) ** 2, torch.zeros_like(u)).sqrt()
        new = torch.linalg.lstsq(design * w[:, None], (y * w)[:, None]).solution[:, 0]
        done = torch.allclose(new, theta, rtol=1e-12, atol=0)
        theta = new
        if done:
            break
    return float(theta[0]), float(theta[1]) if shift else 0.0


def align_depth(
    depth: Tensor,  # [H, W] raw values of the kind
    reference: Tensor | None = None,  # [H, W] z-depth in scene units, 0/inf where unknown
    mask: Tensor | None = None,  # [H, W] bool, pixels the reference is trusted on
    *,
    kind: DepthKind = "disparity",
    valid: Tensor | None = None,  # [H, W] bool, pixels the depth map carries depth on
    scale: float | None = None,
    shift: float | None = None,
    center_distance: float | None = None,
) -> AlignedDepth:
    """Bring a depth map to scene z-depth (see the module docstring for the formulas).

    Priority: manual ``scale`` (``shift`` defaults to 0) > robust fit against ``reference`` on ``mask`` (and both
    maps' valid pixels) > median depth at ``center_distance``.

    Returns:
        :class:`AlignedDepth`; pixels that are invalid in ``valid`` or whose result is not a positive finite
        depth are invalid.
    """
    depth = depth if depth.is_floating_point() else depth.float()
    check_shape(depth, "H W", "depth")
    if kind not in DEPTH_KINDS:
        raise AnchorDepthError(f"depth kind must be one of {DEPTH_KINDS}, got {kind!r}")
    if scale is None and shift is not None:
        raise AnchorDepthError("a manual depth shift needs a manual scale too")
    usable = torch.isfinite(depth) if valid is None else (valid.to(torch.bool) & torch.isfinite(depth))
    fit, method = None, "fit"
    if scale is not None:
        s, b, method = float(scale), float(0.0 if shift is None else shift), "manual"
    elif reference is not None:
        check_shape(reference, f"{depth.shape[0]} {depth.shape[1]}", "reference depth")
        ref = reference.to(depth.dtype)
        ok = usable & torch.isfinite(ref) & (ref > 0)
        if mask is not None:
            ok &= mask.to(torch.bool)
        xs, zs = _pairs(depth, ref, ok)
        s, b = robust_fit(xs, 1.0 / zs if kind == "disparity" else zs, shift=kind != "metric")
        fitted = s * xs + b if kind != "disparity" else 1.0 / (s * xs + b)
        error = ((fitted - zs) / zs).abs()
        fit = DepthFit(s, b, float(error.median()), float((error < _INLIER).double().mean()), int(xs.numel()))
    elif center_distance is not None:
        positive = usable & (depth > 0)
        med = float(depth[positive].median()) if positive.any() else 0.0
        if med <= 0:
            raise AnchorDepthError("depth image has no positive values to align")
        # depth: z = s·x puts the median at the distance; disparity: 1/(s·x) does.
        s, b = (center_distance / med, 0.0) if kind != "disparity" else (1.0 / (center_distance * med), 0.0)
        method = "median"
    else:
        raise AnchorDepthError("align_depth needs a reference depth, a center_distance or a manual scale")
    mapped = s * depth + b
    z = mapped if kind != "disparity" else 1.0 / mapped
    ok = torch.isfinite(z) & (z > 0) & usable
    if not ok.any():
        raise AnchorDepthError(f"aligned depth (scale {s:.4g}, shift {b:.4g}) has no positive pixels")
    return AlignedDepth(torch.where(ok, z, torch.zeros_like(z)), ok, s, b, kind, fit, method)


def ray_length_to_z(length: Tensor, cam: CameraSet) -> Tensor:
    """Distance along unit rays through pixel centres ``[h, w]`` -> camera z-depth ``[h, w]`` of one camera.

    ``z = t / ‖K⁻¹ [u, v, 1]ᵀ‖`` (the camera-space ray ``K⁻¹[u, v, 1]`` has z = 1).
    """
    h, w = check_shape(length, "h w", "ray length").values()
    cam = cam.with_image_size((h, w)).to(device=length.device, dtype=length.dtype)
    uv = cam.pixel_centers()
    ray = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1) @ torch.linalg.inv(cam.K[0]).T  # [h, w, 3]
    return length / ray.norm(dim=-1)


def field_depth(
    unet: torch.nn.Module,
    context,  # PoseContext with a reference bank
    cam: CameraSet,  # 1 anchor camera
    size: tuple[int, int],
    *,
    block: str | None = None,
    opacity_threshold: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """The customized FeatureNeRF's expected z-depth of the anchor view and its opacity.

    Renders one pose-conditioned block's FeatureNeRF (default: the first block with references, i.e. the
    highest-resolution encoder block) for ``cam`` on a ``size`` grid, without text (density is computed
    before text conditioning, method.md §4.5) and without jitter. Surface depth is ``D / O`` (expected
    ray length over opacity), then converted to z-depth.

    Returns:
        depth ``[h, w]`` z-depth (0 where opacity ≤ ``opacity_threshold``) and opacity ``[h, w]``, on ``cam``'s
        device (the field runs on the UNet's, which may differ: e.g. a CPU trajectory and a loaded model).
    """
    from mvcustom_core.customization.pose_block import PoseBlockError, pose_blocks

    if cam.num_frames != 1:
        raise AnchorDepthError(f"field_depth renders one anchor camera, got {cam.num_frames}")
    blocks = [b for b in pose_blocks(unet) if b.name in context.references]
    if block is not None:
        blocks = [b for b in blocks if b.name == block]
    if not blocks or context.ref_cams is None:
        raise PoseBlockError("field_depth needs installed pose blocks with a captured reference bank "
                             f"(block {block!r})" if block else "field_depth needs a customization "
                             "(pose blocks with a reference bank)")
    blk = blocks[0]
    # The last bank entry is the cond branch's (training.py stores [uncond, cond]): the references as
    # captured with the subject's prompt, as during training; a one-entry bank serves both.
    refs = context.references[blk.name][-1].float()
    param = next(blk.featurenerf.parameters())
    with torch.no_grad(), torch.autocast(device_type=param.device.type, enabled=False):
        out = blk.featurenerf(refs.to(param.device), context.ref_cams.to(param.device), cam.to(param.device),
                              tuple(size), jitter=False, ray_chunk=context.ray_chunk,
                              workspace=context.workspace)
    opacity = out.opacity[0].float()
    length = out.expected_depth[0].float() / opacity.clamp_min(1e-6)
    z = ray_length_to_z(length, cam.to(length.device))
    depth = torch.where(opacity > opacity_threshold, z, torch.zeros_like(z))
    return depth.to(cam.K.device), opacity.to(cam.K.device)
