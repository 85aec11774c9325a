"""Depth maps that know what they hold, and the conversion of other packs' depth IMAGEs into them.

A monocular estimate is one of three kinds, each fixed only up to the transformation named here; the
alignment to the scene (:func:`mvcustom_core.inference.anchor_depth.align_depth`) fits exactly that
transformation:

====================  =====================================================  ===================================
kind                   the values x relate to true z-depth by                  who gives it
====================  =====================================================  ===================================
``"metric"``           z = s·x (units unknown to the scene: s)                 ZoeDepth, Depth Anything V2 metric
``"relative"``         z = s·x + b (affine-invariant depth)                    depth IMAGEs that encode depth
``"disparity"``        1/z = s·x + b (affine-invariant inverse depth)          Depth Anything (relative), MiDaS
====================  =====================================================  ===================================

Depth IMAGEs from the common ComfyUI packs are normalized to [0, 1] and *near = bright* whatever the model
(checked in their code): ``kijai/ComfyUI-DepthAnythingV2`` min-max normalizes the output (relative models:
disparity; metric models: ``1 − depth``, so depth with near bright); ``Fannovel16/comfyui_controlnet_aux``
does the same for Depth Anything V2 (8-bit), and its ZoeDepth preprocessor maps metric depth linearly with
percentile clipping, ``1 − (z − p2)/(p85 − p2)`` clipped to [0, 1] (the farthest 15 % of pixels black, the
nearest 2 % white). Any normalization is affine, so only the quantity (depth or disparity) and the polarity
matter; pixels at a clip end carry no depth (``invalid`` rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mvcustom_core.checks import check_shape

__all__ = ["DepthKind", "DEPTH_KINDS", "DepthMap", "ImageEncoding", "IMAGE_ENCODINGS", "InvalidRule", "INVALID_RULES",
           "depth_map_from_image", "depth_preview", "DepthMapError"]

DepthKind = Literal["metric", "relative", "disparity"]
DEPTH_KINDS: tuple[str, ...] = ("metric", "relative", "disparity")

ImageEncoding = Literal["disparity, near = bright", "depth, near = bright", "depth, far = bright"]
IMAGE_ENCODINGS: tuple[str, ...] = ("disparity, near = bright", "depth, near = bright", "depth, far = bright")

InvalidRule = Literal["clipped ends", "black", "none"]
INVALID_RULES: tuple[str, ...] = ("clipped ends", "black", "none")
# Half an 8-bit step: a value this close to 0 or 1 is a clipped (saturated) pixel of an 8-bit or float image.
_CLIP_TOLERANCE = 0.5 / 255


class DepthMapError(ValueError):
    """A depth map or depth IMAGE that cannot be used (shape, kind, no valid pixels)."""


@dataclass(frozen=True)
class DepthMap:
    """Per-pixel depth of a batch of images, with its kind (see the module table) and validity.

    Attributes:
        values: ``[B, H, W]`` float32; larger = farther for ``metric`` and ``relative``, nearer for ``disparity``.
        valid: ``[B, H, W]`` bool, pixels that carry depth.
        kind: ``"metric"``, ``"relative"`` or ``"disparity"``.
        source: what produced it, for display (model name, or the IMAGE encoding).
    """

    values: Tensor
    valid: Tensor
    kind: DepthKind
    source: str = ""

    def __post_init__(self) -> None:
        dims = check_shape(self.values, "B H W", "depth values")
        check_shape(self.valid, f"{dims['B']} {dims['H']} {dims['W']}", "depth valid mask")
        if self.kind not in DEPTH_KINDS:
            raise DepthMapError(f"depth kind must be one of {DEPTH_KINDS}, got {self.kind!r}")

    @property
    def batch(self) -> int:
        return self.values.shape[0]

    def frame(self, index: int, num_frames: int) -> tuple[Tensor, Tensor]:
        """``(values [H, W], valid [H, W])`` of frame ``index`` from a map of 1 image or of all ``num_frames``."""
        if self.batch not in (1, num_frames):
            raise DepthMapError(f"depth holds {self.batch} images; expected 1 or one per frame ({num_frames})")
        i = 0 if self.batch == 1 else index
        return self.values[i], self.valid[i]


def depth_map_from_image(image: Tensor, encoding: ImageEncoding = "disparity, near = bright",
                         invalid: InvalidRule = "clipped ends", source: str = "") -> DepthMap:
    """A depth IMAGE from another node ``[B, C, H, W]`` (channel mean taken) or ``[B, H, W]`` in [0, 1] -> DepthMap.

    Args:
        encoding: what the brightness v encodes: ``"disparity, near = bright"`` -> disparity x = v (Depth Anything
            and MiDaS preprocessors); ``"depth, near = bright"`` -> relative depth x = 1 − v (ZoeDepth and metric
            Depth Anything preprocessors); ``"depth, far = bright"`` -> relative depth x = v.
        invalid: ``"clipped ends"``: v within half an 8-bit step of 0 or 1 is saturated by the preprocessor's
            clipping (its depth is only bounded), so invalid; ``"black"``: only v ≈ 0 is invalid (packs that write 0
            for "no depth"); ``"none"``: every pixel is valid.
    """
    if encoding not in IMAGE_ENCODINGS:
        raise DepthMapError(f"depth image encoding must be one of {IMAGE_ENCODINGS}, got {encoding!r}")
    if invalid not in INVALID_RULES:
        raise DepthMapError(f"invalid-pixel rule must be one of {INVALID_RULES}, got {invalid!r}")
    if image.dim() == 4:
        check_shape(image, "B C H W", "depth image")
        image = image.float().mean(dim=1)
    check_shape(image, "B H W", "depth image")
    v = image.float()
    valid = torch.isfinite(v)
    if invalid == "clipped ends":
        valid &= (v > _CLIP_TOLERANCE) & (v < 1 - _CLIP_TOLERANCE)
    elif invalid == "black":
        valid &= v > _CLIP_TOLERANCE
    if encoding == "disparity, near = bright":
        kind, x = "disparity", v
    elif encoding == "depth, near = bright":
        kind, x = "relative", 1.0 - v
    else:
        kind, x = "relative", v
    return DepthMap(torch.where(valid, x, torch.zeros_like(x)), valid, kind, source or f"IMAGE ({encoding})")


def depth_preview(depth: DepthMap) -> Tensor:
    """``[B, 3, H, W]`` grey picture, near = bright, min-max normalized per image over valid pixels (black = invalid).

    The same look as the depth preprocessors' IMAGEs, so it can feed a depth ControlNet too.
    """
    near = depth.values if depth.kind == "disparity" else -depth.values
    out = torch.zeros_like(near)
    for i in range(depth.batch):
        ok = depth.valid[i]
        if ok.any():
            lo, hi = near[i][ok].min(), near[i][ok].max()
            out[i] = torch.where(ok, (near[i] - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(near[i]))
    return out[:, None].expand(-1, 3, -1, -1).clamp(0, 1).contiguous()
