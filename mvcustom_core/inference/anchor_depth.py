"""The anchor frame's depth for depth-aware feature rendering (DFR, method.md §7.2).

Two sources:

* the customized FeatureNeRF's expected depth ``D(r) = Σ_k w_k t_k`` (method.md §4.6), rendered for the
  anchor camera from one pose-conditioned block (:func:`field_depth`): weight-free and metric in the
  customization's scene frame; density is text-independent, so no prompt is needed;
* a depth IMAGE from any ComfyUI depth node (ZoeDepth in the paper; MiDaS / Depth Anything give relative
  *inverse* depth), brought to the scene's scale by :func:`align_depth`.

Convention: "depth" is always the anchor camera's z-depth (OpenCV camera z, not the ray length), which is
what :func:`mvcustom_core.ops.build_feature_mesh` takes. The field integrates along *unit* ray directions,
so its expected ray length ``t`` converts as ``z = t · (d · forward)`` (:func:`ray_length_to_z`).

Alignment (open choice in the paper, Appendix B.2): least squares ``min_{s,b} Σ_mask (s·x + b − y)²``
(MiDaS, Ranftl et al. 2020, eq. 4, "scale and shift invariant loss" closed form), with

* ``kind="depth"``: x = the image's depth, y = the reference z-depth;
* ``kind="disparity"``: x = the image's relative inverse depth, y = 1 / reference depth, and the result is
  ``1 / (s·x + b)`` (MiDaS aligns in disparity space for the same reason: its output is affine-invariant
  *inverse* depth).

Without a reference (no customization), the fallback puts the median depth at ``center_distance`` (the
anchor camera's distance to the scene origin, where normalized scenes have their subject); a manual
``scale``/``shift`` overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mvcustom_core.cameras import CameraSet
from mvcustom_core.checks import check_shape

__all__ = ["DepthKind", "AlignedDepth", "AnchorDepthError", "depth_from_image", "fit_scale_shift",
           "align_depth", "ray_length_to_z", "field_depth"]

DepthKind = Literal["depth", "disparity"]


class AnchorDepthError(ValueError):
    """Unusable anchor depth (empty overlap with the reference, non-positive result, bad kind)."""


@dataclass(frozen=True)
class AlignedDepth:
    """Anchor z-depth in scene units.

    Attributes:
        depth: ``[H, W]`` z-depth, 0 where invalid.
        valid: ``[H, W]`` bool.
        scale, shift: the affine map applied (in disparity space for ``kind="disparity"``).
        kind: what the input was.
    """

    depth: Tensor
    valid: Tensor
    scale: float
    shift: float
    kind: DepthKind


def depth_from_image(image: Tensor) -> Tensor:
    """A depth IMAGE ``[H, W]``, ``[C, H, W]`` or ``[1, C, H, W]`` (grey or coloured grey) -> ``[H, W]`` (channel mean)."""
    if image.dim() == 4:
        check_shape(image, "1 C H W", "depth image")
        image = image[0]
    if image.dim() == 3:
        image = image.float().mean(dim=0)
    check_shape(image, "H W", "depth image")
    return image.float()


def fit_scale_shift(x: Tensor, y: Tensor, mask: Tensor | None = None) -> tuple[float, float]:
    """Least-squares ``s, b = argmin Σ_mask (s·x + b − y)²`` (2×2 normal equations, float64).

    Args:
        x, y: same shape; mask: bool of the same shape (default: all finite pairs).

    Raises:
        AnchorDepthError: fewer than two distinct x values under the mask.
    """
    if x.shape != y.shape:
        raise AnchorDepthError(f"cannot align depth of shape {tuple(x.shape)} to a reference of shape {tuple(y.shape)}")
    ok = torch.isfinite(x) & torch.isfinite(y)
    if mask is not None:
        ok &= mask.to(torch.bool)
    xs, ys = x[ok].double(), y[ok].double()
    if xs.numel() < 2 or float(xs.max() - xs.min()) == 0.0:
        raise AnchorDepthError(f"depth alignment needs at least two distinct depths under the mask, got {xs.numel()} "
                               "pixels; give a manual scale/shift or a larger mask")
    a = torch.stack([xs, torch.ones_like(xs)], dim=1)  # [P, 2]
    sol = torch.linalg.solve(a.T @ a, a.T @ ys)
    return float(sol[0]), float(sol[1])


def align_depth(
    depth: Tensor,  # [H, W] raw depth / relative disparity
    reference: Tensor | None = None,  # [H, W] z-depth in scene units, 0/inf where unknown
    mask: Tensor | None = None,  # [H, W] bool, pixels the reference is trusted on
    *,
    kind: DepthKind = "disparity",
    scale: float | None = None,
    shift: float | None = None,
    center_distance: float | None = None,
) -> AlignedDepth:
    """Bring a depth map to scene z-depth (see the module docstring for the formulas).

    Priority: manual ``scale`` (``shift`` defaults to 0) > least squares against ``reference`` on ``mask``
    (and the reference's valid pixels) > median depth at ``center_distance``.

    Returns:
        :class:`AlignedDepth`; pixels whose result is not a positive finite depth are invalid.
    """
    depth = depth if depth.is_floating_point() else depth.float()
    check_shape(depth, "H W", "depth")
    if kind not in ("depth", "disparity"):
        raise AnchorDepthError(f"depth kind must be 'depth' or 'disparity', got {kind!r}")
    if scale is None and shift is not None:
        raise AnchorDepthError("a manual depth shift needs a manual scale too")
    if scale is not None:
        s, b = float(scale), float(0.0 if shift is None else shift)
    elif reference is not None:
        check_shape(reference, f"{depth.shape[0]} {depth.shape[1]}", "reference depth")
        ref = reference.to(depth.dtype)
        ref_ok = torch.isfinite(ref) & (ref > 0)
        if mask is not None:
            ref_ok &= mask.to(torch.bool)
        if kind == "depth":
            s, b = fit_scale_shift(depth, ref, ref_ok)
        else:
            s, b = fit_scale_shift(depth, 1.0 / ref.clamp_min(1e-12), ref_ok)
    elif center_distance is not None:
        med = float(depth[torch.isfinite(depth) & (depth > 0)].median()) if (depth > 0).any() else 0.0
        if med <= 0:
            raise AnchorDepthError("depth image has no positive values to align")
        # depth: z = s·x puts the median at the distance; disparity: 1/(s·x) does.
        s, b = (center_distance / med, 0.0) if kind == "depth" else (1.0 / (center_distance * med), 0.0)
    else:
        raise AnchorDepthError("align_depth needs a reference depth, a center_distance or a manual scale")
    mapped = s * depth + b
    z = mapped if kind == "depth" else 1.0 / mapped
    valid = torch.isfinite(z) & (z > 0) & torch.isfinite(depth)
    if not valid.any():
        raise AnchorDepthError(f"aligned depth (scale {s:.4g}, shift {b:.4g}) has no positive pixels")
    return AlignedDepth(torch.where(valid, z, torch.zeros_like(z)), valid, s, b, kind)


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
