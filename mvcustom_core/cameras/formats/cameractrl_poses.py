"""CameraCtrl pose rows: the ``CAMERACTRL_POSES`` value of AnimateDiff-Evolved and WanVideoWrapper.

Convention:
    - One row per frame, 19 numbers: ``[timestamp, fx, fy, cx, cy, c5, c6, r11, r12, r13, t1, r21, r22, r23,
      t2, r31, r32, r33, t3]``. The last 12 are the 3x4 **world-to-camera** ``[R | t]``, row-major, OpenCV
      axes (x right, y down, z forward), the same axes as :class:`CameraSet`.
    - ``fx, fy, cx, cy`` are *normalized*: divided by the width (fx, cx) or height (fy, cy) of the video the
      poses came from (the "source" or "pose" size, 1280x720 for RealEstate10K in CameraCtrl).
    - Columns 5-6 (``c5, c6``) are zero in RealEstate10K files. AnimateDiff-Evolved stores the source width
      and height there (``CameraEntry.orig_pose_width = entry[5]``, ``orig_pose_height = entry[6]``, default
      1280, 720); WanVideoWrapper ignores them and always assumes 1280x720. Here: nonzero columns 5-6 give
      the source size ``(W0, H0) = (c5, c6)``; zeros mean ``default_source_size`` (720, 1280).
    - Rendering at ``(H, W)`` of another aspect uses CameraCtrl's fix (hehao13/CameraCtrl ``inference.py``,
      peers.md §1.3): the source is resized to cover the target and centre-cropped, so if ``W0/H0 > W/H``
      ``fx_px = fx * H * W0 / H0`` and ``fy_px = fy * H``, else ``fx_px = fx * W`` and
      ``fy_px = fy * W * H0 / W0``; always ``cx_px = cx * W`` and ``cy_px = cy * H``. (For a centred principal
      point, as in every RealEstate10K file, this equals the geometric centre crop; CameraCtrl keeps ``cx * W``
      for an off-centre one too, and so do we, so our Plücker maps match its.)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mvcustom_core.cameras.camera_set import CameraSet, intrinsics_matrix
from mvcustom_core.cameras.formats._common import PoseFileError, cameras_from_file_matrices, parse_numbers

__all__ = ["DEFAULT_POSE_SIZE", "cameras_from_cameractrl_poses", "cameras_to_cameractrl_poses",
           "cameractrl_resize", "cameras_from_pose_rows", "cameras_to_pose_rows"]

DEFAULT_POSE_SIZE = (720, 1280)  # (H, W) of the source video CameraCtrl assumes for RealEstate10K poses
_ROW_LEN = 19


def cameras_from_pose_rows(intrinsics: Tensor, w2c: Tensor, image_size: tuple[int, int], *,
                           source: str = "<poses>", locations: Sequence[str] | None = None) -> CameraSet:
    """Validated cameras from normalized intrinsics and 3x4 world-to-camera rows (no aspect fix).

    Rotations are snapped to exact rotations (:func:`~._common.cameras_from_file_matrices`), so writing the
    cameras back gives the rows' translations exactly and their rotations to within the file's rounding.

    Args:
        intrinsics: ``[F, 4]`` (fx / W, fy / H, cx / W, cy / H).
        w2c: ``[F, 12]`` row-major 3x4 world-to-camera.
        image_size: ``(H, W)`` the normalized intrinsics refer to.
        source, locations: name the input and each row in errors (default ``row i``).
    """
    h, w = image_size
    K = intrinsics_matrix(intrinsics[:, 0] * w, intrinsics[:, 1] * h, intrinsics[:, 2] * w, intrinsics[:, 3] * h)
    if locations is None:
        locations = [f"row {i}" for i in range(len(w2c))]
    return cameras_from_file_matrices(K, (h, w), source, locations, w2c=w2c.reshape(-1, 3, 4))


def cameras_to_pose_rows(cams: CameraSet) -> tuple[Tensor, Tensor]:
    """``([F, 4] normalized intrinsics, [F, 12] row-major 3x4 world-to-camera)`` of ``cams``."""
    return cams.normalized_intrinsics(), cams.w2c[:, :3, :].reshape(-1, 12)


def _cameractrl_focal_scale(source_wh: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``[F, 2]`` factors (sx, sy) with fx_px = fx * W * sx, fy_px = fy * H * sy (CameraCtrl's aspect fix)."""
    h, w = image_size
    source_ratio = source_wh[:, 0] / source_wh[:, 1]
    wider = source_ratio > w / h
    one = torch.ones_like(source_ratio)
    # Source wider than target: heights match after the resize, the width is cropped, so fx grows.
    sx = torch.where(wider, h * source_ratio / w, one)
    sy = torch.where(wider, one, w / source_ratio / h)
    return torch.stack([sx, sy], dim=-1)


def cameractrl_resize(cams: CameraSet, image_size: tuple[int, int]) -> CameraSet:
    """The same cameras at ``image_size`` by CameraCtrl's resize-to-cover + centre-crop aspect fix.

    Unlike :meth:`CameraSet.with_image_size` (a stretch), this keeps pixels square when the aspect ratio
    changes: a 1280x720 source rendered at 256x384 keeps its full height and loses the sides.

    Args:
        cams: cameras at their source size ``cams.image_size``.
        image_size: target ``(H, W)``.
    """
    h, w = image_size
    norm = cams.normalized_intrinsics()
    src = torch.tensor([cams.width, cams.height], dtype=norm.dtype, device=norm.device).expand(len(cams), 2)
    s = _cameractrl_focal_scale(src, (h, w))
    K = intrinsics_matrix(norm[:, 0] * w * s[:, 0], norm[:, 1] * h * s[:, 1], norm[:, 2] * w, norm[:, 3] * h)
    K[:, 0, 1] = cams.K[:, 0, 1] * w / cams.width * s[:, 0]
    return CameraSet(K=K, c2w=cams.c2w, image_size=(h, w))


def _rows_tensor(poses: Sequence[Sequence[float]], name: str) -> Tensor:
    if isinstance(poses, Tensor):
        poses = poses.tolist()
    if len(poses) == 0:
        raise PoseFileError(f"{name} is empty; it needs one row per frame")
    rows = []
    for i, row in enumerate(poses):
        if isinstance(row, Tensor):
            row = row.tolist()
        if not isinstance(row, (list, tuple)) or len(row) != _ROW_LEN:
            n = len(row) if isinstance(row, (list, tuple)) else type(row).__name__
            raise PoseFileError(f"{name}: row {i} has {n} values, expected {_ROW_LEN} "
                                "[timestamp, fx, fy, cx, cy, width, height, 3x4 world-to-camera]")
        rows.append(parse_numbers(row, f"{name}: row {i}"))
    return torch.tensor(rows, dtype=torch.float64)


def cameras_from_cameractrl_poses(poses: Sequence[Sequence[float]], image_size: tuple[int, int] | None = None, *,
                                  default_source_size: tuple[int, int] = DEFAULT_POSE_SIZE,
                                  name: str = "CAMERACTRL_POSES") -> CameraSet:
    """Cameras from a ``CAMERACTRL_POSES`` list (see the module docstring for the layout).

    Args:
        poses: ``F`` rows of 19 numbers.
        image_size: ``(H, W)`` of the returned cameras. ``None``: the source size (columns 5-6 or
            ``default_source_size``), which must then agree across rows.
        default_source_size: ``(H0, W0)`` for rows whose columns 5-6 are zero.
        name: how errors refer to the value.

    Returns:
        float64 cameras; intrinsics by CameraCtrl's aspect fix from each row's source size to ``image_size``.
    """
    rows = _rows_tensor(poses, name)
    source_wh = rows[:, 5:7].clone()
    unset = (source_wh == 0).all(dim=-1)
    source_wh[unset] = torch.tensor([default_source_size[1], default_source_size[0]], dtype=rows.dtype)
    bad = torch.nonzero((source_wh <= 0).any(dim=-1)).flatten()
    if len(bad):
        i = int(bad[0])
        raise PoseFileError(f"{name}: row {i} has source width/height (columns 5-6) "
                            f"{rows[i, 5:7].tolist()}; expected both positive or both zero")
    if image_size is None:
        distinct = torch.unique(source_wh, dim=0)
        if len(distinct) > 1:
            raise PoseFileError(f"{name}: rows have different source sizes {distinct.tolist()} (columns 5-6); "
                                "pass image_size=(H, W)")
        image_size = (int(distinct[0, 1]), int(distinct[0, 0]))
    h, w = int(image_size[0]), int(image_size[1])
    s = _cameractrl_focal_scale(source_wh, (h, w))
    norm = rows[:, 1:5] * torch.stack([s[:, 0], s[:, 1], torch.ones_like(s[:, 0]), torch.ones_like(s[:, 0])], -1)
    return cameras_from_pose_rows(norm, rows[:, 7:], (h, w), source=name)


def cameras_to_cameractrl_poses(cams: CameraSet, *, source_size: tuple[int, int] | None = None,
                                timestamps: Sequence[float] | None = None) -> list[list[float]]:
    """A ``CAMERACTRL_POSES`` list for ``cams``; inverse of :func:`cameras_from_cameractrl_poses`.

    Args:
        cams: ``F`` cameras.
        source_size: ``(H0, W0)`` to state as the source size in columns 5-6 (AnimateDiff-Evolved divides by
            them, so they are never written as zero). Default ``cams.image_size``: the normalized intrinsics
            are then plain ``K / (W, H)``. Pass ``(720, 1280)`` for WanVideoWrapper, which ignores columns 5-6
            and assumes 1280x720: the intrinsics are pre-divided so its aspect fix gives back ``cams.K``.
        timestamps: column 0; default the frame index.

    Returns:
        ``F`` lists of 19 Python floats.
    """
    h, w = cams.image_size
    h0, w0 = source_size if source_size is not None else (h, w)
    norm, w2c = cameras_to_pose_rows(cams.to(dtype=torch.float64))
    src = torch.tensor([[float(w0), float(h0)]], dtype=torch.float64).expand(len(cams), 2)
    s = _cameractrl_focal_scale(src, (h, w))
    norm = norm.clone()
    norm[:, 0] /= s[:, 0]
    norm[:, 1] /= s[:, 1]
    if timestamps is None:
        timestamps = range(len(cams))
    if len(timestamps) != len(cams):
        raise ValueError(f"timestamps has {len(timestamps)} entries for {len(cams)} cameras")
    return [[float(t), *norm[i].tolist(), float(w0), float(h0), *w2c[i].tolist()]
            for i, t in enumerate(timestamps)]
