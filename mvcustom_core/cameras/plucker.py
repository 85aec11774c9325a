"""Per-pixel Plücker ray embedding, CameraCtrl's formula and channel order.

For each pixel centre (u, v) = (j + 0.5, i + 0.5) of an H×W grid, the camera-space direction
``normalize(((u − cx)/fx, (v − cy)/fy, 1))`` is rotated to the world, ``d = R_c2w d_cam``, the origin is the camera
centre ``o = t_c2w``, and the embedding is ``(o × d, d)`` (moment first). Before that the poses are made
relative to the first frame, ``c2w_rel[i] = w2c[0] c2w[i]``, so frame 0 is the identity.

Source: hehao13/CameraCtrl ``inference.py`` (``get_relative_pose``; ``ray_condition``: ``rays_dxo =
torch.cross(rays_o, rays_d)``, ``plucker = torch.cat([rays_dxo, rays_d], dim=-1)``, pixel grid ``+ 0.5``).
SEVA and CustomDiffusion360 use the direction-first order ``(d, o × d)``: ``order="direction_first"``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mvcustom_core.cameras.camera_set import CameraSet

__all__ = ["plucker_embedding", "relative_to_first_frame", "PLUCKER_ORDERS"]

PLUCKER_ORDERS = ("moment_first", "direction_first")


def relative_to_first_frame(cams: CameraSet) -> CameraSet:
    """The same cameras with frame 0 moved to the identity: ``c2w_rel[i] = w2c[0] @ c2w[i]``.

    (CameraCtrl ``get_relative_pose`` with ``cam_to_origin = 0``.)
    """
    w2c0 = cams.w2c[:1]  # [1, 4, 4]
    c2w = w2c0 @ cams.c2w
    c2w[0] = torch.eye(4, dtype=c2w.dtype, device=c2w.device)  # exact, not w2c0 @ c2w0 up to rounding
    return CameraSet(K=cams.K, c2w=c2w, image_size=cams.image_size)


def plucker_embedding(cams: CameraSet, height: int | None = None, width: int | None = None, *,
                      order: Literal["moment_first", "direction_first"] = "moment_first",
                      relative_to_first: bool = True) -> Tensor:
    """Plücker coordinates of the ray through every pixel centre (see the module docstring).

    Args:
        cams: ``F`` cameras.
        height, width: grid size; default ``cams.image_size``. Another size rescales the intrinsics per axis
            (:meth:`CameraSet.with_image_size`), e.g. to embed at latent resolution. For CameraCtrl's
            aspect-ratio crop use :func:`mvcustom_core.cameras.formats.cameractrl_resize` first.
        order: ``"moment_first"`` gives channels ``(o × d, d)`` (CameraCtrl); ``"direction_first"``
            ``(d, o × d)`` (SEVA, CustomDiffusion360).
        relative_to_first: express every pose relative to frame 0 first (CameraCtrl does).

    Returns:
        ``[F, 6, H, W]`` in the cameras' dtype.

    Example:
        >>> cams = CameraSet.from_fov(torch.eye(4).repeat(2, 1, 1), 90.0, (4, 6))
        >>> tuple(plucker_embedding(cams).shape)
        (2, 6, 4, 6)
    """
    if order not in PLUCKER_ORDERS:
        raise ValueError(f"order must be one of {PLUCKER_ORDERS}, got {order!r}")
    h = cams.height if height is None else int(height)
    w = cams.width if width is None else int(width)
    if (h, w) != cams.image_size:
        cams = cams.with_image_size((h, w))
    if relative_to_first:
        cams = relative_to_first_frame(cams)
    d = cams.ray_directions()  # [F, H, W, 3] unit, world
    o = cams.centers[:, None, None, :].expand_as(d)  # [F, H, W, 3]
    m = torch.linalg.cross(o, d, dim=-1)
    parts = (m, d) if order == "moment_first" else (d, m)
    return torch.cat(parts, dim=-1).permute(0, 3, 1, 2).contiguous()  # [F, 6, H, W]
