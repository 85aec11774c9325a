"""The CameraCtrl-style presets of ComfyUI camera packs, as camera sets in our convention.

Facts (read from the packs, not copied; see docs/trajectories.md):

- Base angle π/3, base translation norm 1.5. A motion is an angle vector and a translation vector; frame
  ``i`` of a segment is::

      angle_i = (i / b) * speed * (π / 3) * angle_vec        # radians about x, y, z
      T_i     = (i / b) * speed * 1.5 * T_vec
      R_i     = Rz(angle_z) @ Ry(angle_y) @ Rx(angle_x)      # right-handed rotations
      row_i   = [R_i | T_i]                                  # 3 x 4

  with ``b = 16`` in AnimateDiff-Evolved whatever the frame count (``get_camera_motion(..., n, base=16)``:
  a segment moves by the same amount per frame at 8 or 32 frames, so 32 frames go twice as far as 16), and
  ``b = n`` (the frame count) in ComfyUI core (the last frame stops one step short of the full move).
  Several motions (AnimateDiff-Evolved's Combo / Adv. pose nodes) are summed, each times its strength,
  before this formula, so their order does not matter.
- **What a row means differs between packs, and so do the vector signs:**

  ``"animatediff_evolved"`` (``Kosinkadink/ComfyUI-AnimateDiff-Evolved`` ``animatediff/nodes_cameractrl.py``:
  table ``CAM``, ``get_camera_motion``, nodes "Create CameraCtrl Poses" (Basic / Combo / Adv.)): the row is
  written into the RealEstate10K pose layout, i.e. it is **world-to-camera**. Pan Left ``T = (1, 0, 0)``,
  Zoom In ``(0, 0, -2)``, Roll Anticlockwise ``angle = (0, 0, 1)``, Tilt Down ``(1, 0, 0)``, Tilt Left
  ``(0, 1, 0)``. Its 13 names are :data:`CAMERACTRL_PRESET_NAMES`.

  ``"comfy_core"`` (``comfyanonymous/ComfyUI`` ``comfy_extras/nodes_camera_trajectory.py``,
  ``CAMERA_DICT``, ``WanCameraEmbedding``): the row is padded with ``[0, 0, 0, 1]`` and read back as a 4 x 4
  **camera-to-world** matrix, and every vector is the negative of AnimateDiff-Evolved's (Pan Left
  ``T = (-1, 0, 0)``, Zoom In ``(0, 0, 2)``, "Anti Clockwise (ACW)" ``(0, 0, -1)``). Core has no Tilt
  presets; the pack adds them with the same negation.

  The flipped signs and the flipped reading cancel: every single preset moves the camera the same way
  in both packs (Pan Left: the centre moves to -x of the first camera's frame, i.e. left; Zoom In: +z,
  forward; Roll Clockwise: the camera turns clockwise as seen from behind it; Tilt Down: the view turns
  down). Sums of a turn and a move do differ: AnimateDiff-Evolved's centre is ``-Rᵀ T`` (the move direction
  turns with the camera), core's is ``T``. "Zoom" in these presets is a move along the viewing axis, not a
  focal-length change.
- **Chaining** (AnimateDiff-Evolved's ``prev_poses`` input): a new segment continues from the last camera
  of the previous poses, ``w2c'_i = [R_i | T_i] · w2c_last`` (4 x 4 products), and both segments keep all
  their frames (the joint camera appears twice). :func:`~mvcustom_core.trajectories.chain` does this.
- **World frame:** the first camera is the world frame (identity c2w), as CameraCtrl's relative
  poses put it; OpenCV axes, so "up" is -y.
- **Intrinsics:** default normalized (fx, fy, cx, cy) = (0.474812461, 0.844111024, 0.5, 0.5) at a
  1280 x 720 source (AnimateDiff-Evolved's ``CAM.DEFAULT_FX`` ... and ``DEFAULT_POSE_WIDTH/HEIGHT``), square
  pixels on the RealEstate10K video the poses came from (core's ``WanCameraEmbedding`` defaults to 0.5,
  0.5, 0.5, 0.5 instead). CameraCtrl fits the intrinsics to the sample size before use (peers.md §1.3,
  CameraCtrl ``inference.py``, AnimateDiff-Evolved ``prepare_pose_embedding``): with source aspect ``W0/H0``
  and sample aspect ``W/H``, if ``W0/H0 > W/H`` scale fx by ``(H·W0/H0)/W``, else fy by ``(W·H0/W0)/H``;
  pixel K = ``(fx·W, fy·H, cx·W, cy·H)``. Pass ``original_pose_size=None`` to skip that fit.
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
    _preset_alias,
)

__all__ = [
    "ADE_FRAME_BASE",
    "CAMERACTRL_CONVENTIONS",
    "CAMERACTRL_PRESET_NAMES",
    "CAMERACTRL_VECTORS",
    "CAMERACTRL_DEFAULT_INTRINSICS",
    "CAMERACTRL_PRESET_KEYS",
    "Convention",
    "cameractrl_motion_rows",
    "cameractrl_trajectory",
    "canonical_cameractrl_name",
    "euler_zyx_to_rotation_matrix",
]

Convention = Literal["animatediff_evolved", "comfy_core"]
CAMERACTRL_CONVENTIONS: tuple[str, ...] = ("animatediff_evolved", "comfy_core")

BASE_ANGLE = math.pi / 3
BASE_T_NORM = 1.5
ADE_FRAME_BASE = 16  # AnimateDiff-Evolved: frame i is at progress i / 16 whatever the frame count
CAMERACTRL_DEFAULT_INTRINSICS = (0.474812461, 0.844111024, 0.5, 0.5)
REALESTATE10K_VIDEO_SIZE = (720, 1280)  # (H, W) the RealEstate10K poses were recorded at

# AnimateDiff-Evolved's names, in its menu order.
CAMERACTRL_PRESET_NAMES = ("Static", "Pan Up", "Pan Down", "Pan Left", "Pan Right", "Zoom In", "Zoom Out",
                           "Roll Clockwise", "Roll Anticlockwise", "Tilt Down", "Tilt Up", "Tilt Left", "Tilt Right")
# make_trajectory names: "cameractrl_" + snake case of the pack name ("Pan Up" -> "cameractrl_pan_up").
CAMERACTRL_PRESET_KEYS = {name: "cameractrl_" + name.lower().replace(" ", "_") for name in CAMERACTRL_PRESET_NAMES}
# Other spellings of the two rolls: the pack's earlier short names (chaojie/ComfyUI-CameraCtrl-Wrapper's), and
# ComfyUI core's combo entries.
_ALIASES = {"ACW": "Roll Anticlockwise", "CW": "Roll Clockwise",
            "Anti Clockwise (ACW)": "Roll Anticlockwise", "ClockWise (CW)": "Roll Clockwise"}

_Vec = tuple[float, float, float]
# name -> (angle vector, T vector) as AnimateDiff-Evolved's table CAM states them.
_ADE_VECTORS: dict[str, tuple[_Vec, _Vec]] = {
    "Static": ((0, 0, 0), (0, 0, 0)),
    "Pan Up": ((0, 0, 0), (0, 1, 0)),
    "Pan Down": ((0, 0, 0), (0, -1, 0)),
    "Pan Left": ((0, 0, 0), (1, 0, 0)),
    "Pan Right": ((0, 0, 0), (-1, 0, 0)),
    "Zoom In": ((0, 0, 0), (0, 0, -2)),
    "Zoom Out": ((0, 0, 0), (0, 0, 2)),
    "Roll Clockwise": ((0, 0, -1), (0, 0, 0)),
    "Roll Anticlockwise": ((0, 0, 1), (0, 0, 0)),
    "Tilt Down": ((1, 0, 0), (0, 0, 0)),
    "Tilt Up": ((-1, 0, 0), (0, 0, 0)),
    "Tilt Left": ((0, 1, 0), (0, 0, 0)),
    "Tilt Right": ((0, -1, 0), (0, 0, 0)),
}


def _negated(vectors: dict[str, tuple[_Vec, _Vec]]) -> dict[str, tuple[_Vec, _Vec]]:
    return {name: (tuple(-a for a in angle), tuple(-t for t in T)) for name, (angle, T) in vectors.items()}


# name -> (angle vector, T vector), per pack. Core's CAMERA_DICT is AnimateDiff-Evolved's table negated.
CAMERACTRL_VECTORS: dict[str, dict[str, tuple[_Vec, _Vec]]] = {
    "animatediff_evolved": _ADE_VECTORS,
    "comfy_core": _negated(_ADE_VECTORS),
}


def euler_zyx_to_rotation_matrix(angles: Tensor) -> Tensor:
    """``R = Rz(θz) @ Ry(θy) @ Rx(θx)`` for ``angles: [..., 3]`` = (θx, θy, θz) radians -> ``[..., 3, 3]``."""
    eye = torch.eye(3, dtype=angles.dtype, device=angles.device)
    rx, ry, rz = (axis_angle_to_rotation_matrix(angles[..., k, None] * eye[k]) for k in range(3))
    return rz @ ry @ rx


def canonical_cameractrl_name(name: str) -> str:
    """AnimateDiff-Evolved's spelling of a preset name (the rolls have other spellings, see ``_ALIASES``)."""
    key = _ALIASES.get(name, name)
    if key not in _ADE_VECTORS:
        raise TrajectoryError(f"unknown CameraCtrl preset {name!r}; choose from {list(CAMERACTRL_PRESET_NAMES)}")
    return key


def _resolve(names: str | Sequence[str], strengths: Sequence[float] | None,
             convention: str) -> tuple[Tensor, Tensor]:
    """Summed ``(angle_vec [3], T_vec [3])`` of one name or several, each times its strength."""
    if convention not in CAMERACTRL_VECTORS:
        raise TrajectoryError(f"convention must be one of {list(CAMERACTRL_VECTORS)}, got {convention!r}")
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise TrajectoryError("names must hold at least one CameraCtrl preset name")
    strengths = [1.0] * len(names) if strengths is None else list(strengths)
    if len(strengths) != len(names):
        raise TrajectoryError(f"strengths has {len(strengths)} values for {len(names)} names")
    angle, T = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for k, (name, strength) in enumerate(zip(names, strengths)):
        a, t = CAMERACTRL_VECTORS[convention][canonical_cameractrl_name(name)]
        s = _finite(f"strengths[{k}]", strength)
        angle += s * torch.tensor(a, dtype=torch.float64)
        T += s * torch.tensor(t, dtype=torch.float64)
    return angle, T


def _progress(frames: int, convention: str) -> Tensor:
    """``[F]`` progress ``i / b``: ``b = 16`` for AnimateDiff-Evolved, the frame count for ComfyUI core."""
    base = ADE_FRAME_BASE if convention == "animatediff_evolved" else frames
    return torch.arange(frames, dtype=torch.float64) / base


def cameractrl_motion_rows(
    names: str | Sequence[str],
    frames: int,
    *,
    speed: float = 1.0,
    strengths: Sequence[float] | None = None,
    convention: Convention = "animatediff_evolved",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The ``[F, 3, 4]`` rows ``[R_i | T_i]`` exactly as the pack of ``convention`` builds them.

    They are world-to-camera for ``"animatediff_evolved"`` and camera-to-world for ``"comfy_core"``
    (see the module docstring); :func:`cameractrl_trajectory` turns them into cameras.
    """
    frames = _check_frames(frames)
    speed = _finite("speed", speed)
    angle_vec, t_vec = _resolve(names, strengths, convention)
    progress = _progress(frames, convention) * speed  # [F]
    R = euler_zyx_to_rotation_matrix(progress[:, None] * BASE_ANGLE * angle_vec)  # [F, 3, 3]
    T = progress[:, None] * BASE_T_NORM * t_vec  # [F, 3]
    return torch.cat([R, T[:, :, None]], dim=-1).to(dtype)


def cameractrl_trajectory(
    names: str | Sequence[str],
    frames: int,
    *,
    speed: float = 1.0,
    strengths: Sequence[float] | None = None,
    convention: Convention = "animatediff_evolved",
    image_size: tuple[int, int] = (512, 512),
    intrinsics: Sequence[float] = CAMERACTRL_DEFAULT_INTRINSICS,
    original_pose_size: tuple[int, int] | None = REALESTATE10K_VIDEO_SIZE,
    dtype: torch.dtype = torch.float64,
) -> CameraSet:
    """A CameraCtrl preset (or the sum of several) as a :class:`CameraSet`.

    Args:
        names: one of :data:`CAMERACTRL_PRESET_NAMES` (the rolls' other spellings "ACW", "CW" and core's
            long names are accepted), or a list whose vectors are summed.
        frames: number of frames ``n``, >= 1.
        speed: multiplies the angle and translation (the packs' ``speed``).
        strengths: one factor per name (AnimateDiff-Evolved's Adv. node), default all 1.
        convention: whose vector signs, row reading and frame progress (``i/16`` or ``i/n``) to use.
        image_size: ``(H, W)`` of the output.
        intrinsics: normalized ``(fx, fy, cx, cy)`` (by W0, H0, W0, H0 of ``original_pose_size``).
        original_pose_size: ``(H0, W0)`` the normalized intrinsics refer to, for CameraCtrl's aspect fit;
            ``None`` skips the fit.

    Returns:
        ``frames`` cameras, the first at the identity.
    """
    rows = cameractrl_motion_rows(names, frames, speed=speed, strengths=strengths, convention=convention)
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


# What each preset does to the camera, the same in both packs (module docstring); b = 16 or n.
_MOTION_WORDS = {
    "Static": "the camera does not move",
    "Pan Up": "the centre moves up (camera -y) by 1.5 · speed · i/b, no turn",
    "Pan Down": "the centre moves down (camera +y) by 1.5 · speed · i/b, no turn",
    "Pan Left": "the centre moves left (camera -x) by 1.5 · speed · i/b, no turn",
    "Pan Right": "the centre moves right (camera +x) by 1.5 · speed · i/b, no turn",
    "Zoom In": "the centre moves forward (camera +z) by 3 · speed · i/b; the focal length is unchanged",
    "Zoom Out": "the centre moves backward (camera -z) by 3 · speed · i/b; the focal length is unchanged",
    "Roll Clockwise": "the camera rolls clockwise as seen from behind it by (π/3) · speed · i/b",
    "Roll Anticlockwise": "the camera rolls counter-clockwise as seen from behind it by (π/3) · speed · i/b",
    "Tilt Down": "the camera turns down about its own x axis by (π/3) · speed · i/b",
    "Tilt Up": "the camera turns up about its own x axis by (π/3) · speed · i/b",
    "Tilt Left": "the camera turns left about its own y axis by (π/3) · speed · i/b",
    "Tilt Right": "the camera turns right about its own y axis by (π/3) · speed · i/b",
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
    preset.__doc__ = (f"CameraCtrl preset {name!r}: {_MOTION_WORDS[name]} at frame i (b = 16 for AnimateDiff-Evolved, "
                      f"the frame count n for ComfyUI core). The first camera is the identity. ``fov_y_deg=None`` "
                      f"keeps CameraCtrl's default intrinsics (see :func:`cameractrl_trajectory`).")
    _preset(
        key,
        speed=("×", "multiplies the move (the packs' speed)"),
        convention=("", "whose vector signs, row reading and frame progress to follow (AnimateDiff-Evolved: i/16 "
                        "per frame at any frame count; ComfyUI core: i/n); single presets move the same way in both",
                    CAMERACTRL_CONVENTIONS),
    )(preset)


for _name in CAMERACTRL_PRESET_NAMES:
    _register_cameractrl_preset(_name)
for _alias, _name in (("ACW", "Roll Anticlockwise"), ("CW", "Roll Clockwise")):
    # make_trajectory keys of the pack's earlier roll names, so saved graphs and scripts keep working.
    _preset_alias("cameractrl_" + _alias.lower(), CAMERACTRL_PRESET_KEYS[_name])
