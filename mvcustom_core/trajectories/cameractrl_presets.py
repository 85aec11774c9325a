"""The nine CameraCtrl-style presets of ComfyUI camera packs, as camera sets in our convention.

Facts (read from the packs, not copied; see docs/trajectories.md):

- Base angle π/3, base translation norm 1.5. Frame ``i`` of ``n`` (note ``i / n``: the last frame stops
  one step short of the full move)::

      angle_i = (i / n) * speed * (π / 3) * angle_vec        # radians about x, y, z
      T_i     = (i / n) * speed * 1.5 * T_vec
      R_i     = Rz(angle_z) @ Ry(angle_y) @ Rx(angle_x)      # right-handed rotations
      row_i   = [R_i | T_i]                                  # 3 x 4

  A combo (several names) sums the names' angle and T vectors before this formula.
- **What a row means differs between packs, and so do the vector signs:**

  ``"animatediff_evolved"`` (``Kosinkadink/ComfyUI-AnimateDiff-Evolved`` ``animatediff/nodes_cameractrl.py``,
  table ``CAMERA``, ``get_camera_motion``, ``CameraCtrlPose``; ``chaojie/ComfyUI-CameraCtrl-Wrapper``
  ``nodes.py`` has the same nodes and default intrinsics, its table lives in ``camera_utils.py``, not
  checked here): the row is written into the RealEstate10K pose layout, i.e. it is
  **world-to-camera**. Pan Left ``T = (1, 0, 0)``, Zoom In ``(0, 0, -2)``, ACW ``angle = (0, 0, 1)``.

  ``"comfy_core"`` (``comfyanonymous/ComfyUI`` ``comfy_extras/nodes_camera_trajectory.py``,
  ``CAMERA_DICT``, ``WanCameraEmbedding``): the row is padded with ``[0, 0, 0, 1]`` and read back as a 4 x 4
  **camera-to-world** matrix. Pan Left ``T = (-1, 0, 0)``, Zoom In ``(0, 0, 2)``, ACW ``(0, 0, -1)``.

  The flipped signs and the flipped reading cancel: every single preset moves the camera the same way
  in both packs (Pan Left: the centre moves to -x of the first camera's frame, i.e. left; Zoom In: +z,
  forward; CW: the camera turns clockwise as seen from behind it). Combos of a roll and a move do
  differ: AnimateDiff-Evolved's centre is ``-Rᵀ T`` (the move direction turns with the roll), core's
  is ``T``. "Zoom" in these presets is a move along the viewing axis, not a focal-length change.
- **World frame:** the first camera is the world frame (identity c2w), as CameraCtrl's relative
  poses put it; OpenCV axes, so "up" is -y.
- **Intrinsics:** default normalized (fx, fy, cx, cy) = (0.474812461, 0.844111024, 0.5, 0.5), the
  chaojie/AnimateDiff-Evolved defaults, which are square pixels on the 1280 x 720 RealEstate10K video
  the poses came from (core's ``WanCameraEmbedding`` defaults to 0.5, 0.5, 0.5, 0.5 instead). CameraCtrl
  fits the intrinsics to the sample size before use (peers.md §1.3, CameraCtrl
  ``inference.py``): with original aspect ``W0/H0`` and sample aspect ``W/H``, if ``W0/H0 > W/H`` scale
  fx by ``(H·W0/H0)/W``, else fy by ``(W·H0/W0)/H``; pixel K = ``(fx·W, fy·H, cx·W, cy·H)``. Pass
  ``original_pose_size=None`` to skip that fit and use ``fx·W, fy·H`` as given.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from torch import Tensor

from mvcustom_core.cameras.camera_set import CameraSet, intrinsics_matrix
from mvcustom_core.trajectories.presets import (
    DEFAULT_IMAGE_SIZE,
    TrajectoryError,
    _check_common,
    _check_frames,
    _finite,
    _preset,
)

__all__ = [
    "CAMERACTRL_PRESET_NAMES",
    "CAMERACTRL_VECTORS",
    "CAMERACTRL_DEFAULT_INTRINSICS",
    "CAMERACTRL_PRESET_KEYS",
    "Convention",
    "cameractrl_motion_rows",
    "cameractrl_trajectory",
    "euler_zyx_to_rotation_matrix",
]

Convention = Literal["animatediff_evolved", "comfy_core"]

BASE_ANGLE = math.pi / 3
BASE_T_NORM = 1.5
CAMERACTRL_DEFAULT_INTRINSICS = (0.474812461, 0.844111024, 0.5, 0.5)
REALESTATE10K_VIDEO_SIZE = (720, 1280)  # (H, W) the RealEstate10K poses were recorded at

CAMERACTRL_PRESET_NAMES = ("Static", "Pan Up", "Pan Down", "Pan Left", "Pan Right", "Zoom In", "Zoom Out", "ACW", "CW")
# make_trajectory names: "cameractrl_" + snake case of the pack name ("Pan Up" -> "cameractrl_pan_up").
CAMERACTRL_PRESET_KEYS = {name: "cameractrl_" + name.lower().replace(" ", "_") for name in CAMERACTRL_PRESET_NAMES}
# ComfyUI core spells the two rotations out in its combo box.
_ALIASES = {"Anti Clockwise (ACW)": "ACW", "ClockWise (CW)": "CW"}

# name -> (angle vector, T vector), per pack.
CAMERACTRL_VECTORS: dict[str, dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]]] = {
    "animatediff_evolved": {
        "Static": ((0, 0, 0), (0, 0, 0)),
        "Pan Up": ((0, 0, 0), (0, 1, 0)),
        "Pan Down": ((0, 0, 0), (0, -1, 0)),
        "Pan Left": ((0, 0, 0), (1, 0, 0)),
        "Pan Right": ((0, 0, 0), (-1, 0, 0)),
        "Zoom In": ((0, 0, 0), (0, 0, -2)),
        "Zoom Out": ((0, 0, 0), (0, 0, 2)),
        "ACW": ((0, 0, 1), (0, 0, 0)),
        "CW": ((0, 0, -1), (0, 0, 0)),
    },
    "comfy_core": {
        "Static": ((0, 0, 0), (0, 0, 0)),
        "Pan Up": ((0, 0, 0), (0, -1, 0)),
        "Pan Down": ((0, 0, 0), (0, 1, 0)),
        "Pan Left": ((0, 0, 0), (-1, 0, 0)),
        "Pan Right": ((0, 0, 0), (1, 0, 0)),
        "Zoom In": ((0, 0, 0), (0, 0, 2)),
        "Zoom Out": ((0, 0, 0), (0, 0, -2)),
        "ACW": ((0, 0, -1), (0, 0, 0)),
        "CW": ((0, 0, 1), (0, 0, 0)),
    },
}


def euler_zyx_to_rotation_matrix(angles: Tensor) -> Tensor:
    """``R = Rz(θz) @ Ry(θy) @ Rx(θx)`` for ``angles: [..., 3]`` = (θx, θy, θz) radians -> ``[..., 3, 3]``."""
    eye = torch.eye(3, dtype=angles.dtype, device=angles.device)
    rx, ry, rz = (axis_angle_to_rotation_matrix(angles[..., k, None] * eye[k]) for k in range(3))
    return rz @ ry @ rx


def _resolve(names: str | Sequence[str], convention: str) -> tuple[Tensor, Tensor]:
    """Summed ``(angle_vec [3], T_vec [3])`` of one name or a combo."""
    if convention not in CAMERACTRL_VECTORS:
        raise TrajectoryError(f"convention must be one of {sorted(CAMERACTRL_VECTORS)}, got {convention!r}")
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise TrajectoryError("names must hold at least one CameraCtrl preset name")
    angle, T = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for name in names:
        key = _ALIASES.get(name, name)
        if key not in CAMERACTRL_VECTORS[convention]:
            raise TrajectoryError(f"unknown CameraCtrl preset {name!r} in names; "
                                  f"choose from {list(CAMERACTRL_PRESET_NAMES)}")
        a, t = CAMERACTRL_VECTORS[convention][key]
        angle += torch.tensor(a, dtype=torch.float64)
        T += torch.tensor(t, dtype=torch.float64)
    return angle, T


def cameractrl_motion_rows(
    names: str | Sequence[str],
    frames: int,
    *,
    speed: float = 1.0,
    convention: Convention = "animatediff_evolved",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The ``[F, 3, 4]`` rows ``[R_i | T_i]`` exactly as the pack of ``convention`` builds them.

    They are world-to-camera for ``"animatediff_evolved"`` and camera-to-world for ``"comfy_core"``
    (see the module docstring); :func:`cameractrl_trajectory` turns them into cameras.
    """
    frames = _check_frames(frames)
    speed = _finite("speed", speed)
    angle_vec, t_vec = _resolve(names, convention)
    progress = torch.arange(frames, dtype=torch.float64) / frames * speed  # [F]
    R = euler_zyx_to_rotation_matrix(progress[:, None] * BASE_ANGLE * angle_vec)  # [F, 3, 3]
    T = progress[:, None] * BASE_T_NORM * t_vec  # [F, 3]
    return torch.cat([R, T[:, :, None]], dim=-1).to(dtype)


def cameractrl_trajectory(
    names: str | Sequence[str],
    frames: int,
    *,
    speed: float = 1.0,
    convention: Convention = "animatediff_evolved",
    image_size: tuple[int, int] = (512, 512),
    intrinsics: Sequence[float] = CAMERACTRL_DEFAULT_INTRINSICS,
    original_pose_size: tuple[int, int] | None = REALESTATE10K_VIDEO_SIZE,
    dtype: torch.dtype = torch.float64,
) -> CameraSet:
    """A CameraCtrl preset (or a combo of several) as a :class:`CameraSet`.

    Args:
        names: one of :data:`CAMERACTRL_PRESET_NAMES` (core's long ACW/CW names are accepted), or a list
            whose vectors are summed.
        frames: number of frames ``n``, >= 1.
        speed: multiplies the angle and translation (the packs' ``speed``).
        convention: whose vector signs and row reading to use.
        image_size: ``(H, W)`` of the output.
        intrinsics: normalized ``(fx, fy, cx, cy)`` (by W, H, W, H).
        original_pose_size: ``(H0, W0)`` the normalized intrinsics refer to, for CameraCtrl's aspect fit;
            ``None`` skips the fit.

    Returns:
        ``frames`` cameras, the first at the identity.
    """
    rows = cameractrl_motion_rows(names, frames, speed=speed, convention=convention, dtype=torch.float64)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64).expand(frames, 1, 4)
    matrix = torch.cat([rows, bottom], dim=1)
    K = _pixel_intrinsics(intrinsics, image_size, original_pose_size).expand(frames, 3, 3)
    if convention == "animatediff_evolved":
        cams = CameraSet.from_w2c(K, matrix, image_size)
    else:
        cams = CameraSet(K=K, c2w=matrix, image_size=image_size)
    return cams.to(dtype=dtype)


def _pixel_intrinsics(intrinsics: Sequence[float], image_size: tuple[int, int],
                      original_pose_size: tuple[int, int] | None) -> Tensor:
    """``[1, 3, 3]`` pixel K from normalized intrinsics, with CameraCtrl's aspect fit (module docstring)."""
    values = [_finite(f"intrinsics[{i}]", v) for i, v in enumerate(intrinsics)]
    if len(values) != 4 or values[0] <= 0 or values[1] <= 0:
        raise TrajectoryError(f"intrinsics must be 4 values (fx, fy, cx, cy) with fx, fy > 0, got {list(intrinsics)}")
    fx, fy, cx, cy = values
    h, w = (int(s) for s in image_size)
    if h <= 0 or w <= 0:
        raise TrajectoryError(f"image_size must be two positive integers (H, W), got {image_size!r}")
    if original_pose_size is not None:
        h0, w0 = (_finite("original_pose_size", s) for s in original_pose_size)
        if h0 <= 0 or w0 <= 0:
            raise TrajectoryError(f"original_pose_size must be positive (H0, W0), got {original_pose_size!r}")
        if w0 / h0 > w / h:
            fx = fx * (h * w0 / h0) / w
        else:
            fy = fy * (w * h0 / w0) / h
    f = torch.tensor
    return intrinsics_matrix(f([fx * w], dtype=torch.float64), f([fy * h], dtype=torch.float64), cx * w, cy * h)


# What each preset does to the camera, the same in both packs (module docstring).
_MOTION_WORDS = {
    "Static": "the camera does not move",
    "Pan Up": "the centre moves up (camera -y) by 1.5 · speed · i/n, no turn",
    "Pan Down": "the centre moves down (camera +y) by 1.5 · speed · i/n, no turn",
    "Pan Left": "the centre moves left (camera -x) by 1.5 · speed · i/n, no turn",
    "Pan Right": "the centre moves right (camera +x) by 1.5 · speed · i/n, no turn",
    "Zoom In": "the centre moves forward (camera +z) by 3 · speed · i/n; the focal length is unchanged",
    "Zoom Out": "the centre moves backward (camera -z) by 3 · speed · i/n; the focal length is unchanged",
    "ACW": "the camera rolls counter-clockwise as seen from behind it by (π/3) · speed · i/n",
    "CW": "the camera rolls clockwise as seen from behind it by (π/3) · speed · i/n",
}


def _register_cameractrl_preset(name: str) -> None:
    def preset(
        frames: int,
        *,
        speed: float = 1.0,
        convention: Convention = "animatediff_evolved",
        image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
        fov_y_deg: float | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> CameraSet:
        if fov_y_deg is None:
            return cameractrl_trajectory(name, frames, speed=speed, convention=convention, image_size=image_size,
                                         dtype=dtype)
        _check_common(image_size, fov_y_deg)
        cams = cameractrl_trajectory(name, frames, speed=speed, convention=convention, image_size=image_size)
        return CameraSet.from_fov(cams.c2w, fov_y_deg, cams.image_size).to(dtype=dtype)

    key = CAMERACTRL_PRESET_KEYS[name]
    preset.__name__ = preset.__qualname__ = key
    preset.__doc__ = (f"CameraCtrl preset {name!r}: {_MOTION_WORDS[name]} at frame i of n (the last frame stops one "
                      f"step short). The first camera is the identity. ``fov_y_deg=None`` keeps CameraCtrl's default "
                      f"intrinsics (see :func:`cameractrl_trajectory`).")
    _preset(
        key,
        speed=("×", "multiplies the move (the packs' speed)"),
        convention=("", "whose vector signs and row reading to follow; single presets move the same in both",
                    tuple(CAMERACTRL_VECTORS)),
    )(preset)


for _name in CAMERACTRL_PRESET_NAMES:
    _register_cameractrl_preset(_name)
