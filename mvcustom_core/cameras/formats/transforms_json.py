"""NeRF / nerfstudio ``transforms.json``.

Convention:
    - ``frames[i].transform_matrix`` is a 4x4 **camera-to-world** with OpenGL/NeRF camera axes: x right,
      y up, z backward (the camera looks down -z). Ours is OpenCV (x right, y down, z forward), the same
      camera with y and z flipped: ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)`` and back with the same matrix
      (kornia ``camtoworld_graphics_to_vision_4x4``). The world frame is kept as it is.
    - Intrinsics, per frame or at the top level (a frame's key wins): nerfstudio's ``fl_x, fl_y, cx, cy, w, h``
      in pixels, or original NeRF's ``camera_angle_x`` (horizontal FOV in radians, ``fl_x = 0.5 w /
      tan(camera_angle_x / 2)``), optionally ``camera_angle_y``. Missing ``fl_y`` = ``fl_x``; missing
      ``cx, cy`` = ``w/2, h/2``. nerfstudio puts pixel centres at +0.5 (``get_image_coords(pixel_offset=0.5)``),
      as we do, so ``cx, cy`` carry over unchanged.
    - Distortion (``k1..k4, p1, p2``) is ignored with a warning; non-pinhole ``camera_model`` values
      (fisheye, equirectangular) are an error.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from kornia.geometry.conversions import camtoworld_graphics_to_vision_4x4, camtoworld_vision_to_graphics_4x4

from mvcustom_core.cameras.camera_set import CameraSet, intrinsics_matrix
from mvcustom_core.cameras.formats._common import (PoseFileError, atomic_write_text, cameras_from_file_matrices,
                                                   parse_numbers, rescale_to_common_size)

__all__ = ["TransformsMeta", "DistortionIgnoredWarning", "transforms_from_dict", "read_transforms_json",
           "transforms_to_dict", "write_transforms_json"]

_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_PINHOLE_MODELS = {"OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "PERSPECTIVE"}


class DistortionIgnoredWarning(UserWarning):
    """Lens distortion in a camera file was dropped: the pack models pinhole cameras only."""


@dataclass(frozen=True)
class TransformsMeta:
    """Per-frame ``file_path`` entries (image paths relative to the JSON file), in frame order."""

    file_paths: tuple[str, ...]


def _frame_intrinsics(frame: dict, top: dict, image_size: tuple[int, int] | None, where: str
                      ) -> tuple[list[float], tuple[int, int]]:
    def get(key: str) -> Any:
        return frame[key] if key in frame else top.get(key)

    def num(key: str) -> float | None:
        value = get(key)
        return None if value is None else parse_numbers([value], f"{where}.{key}")[0]

    model = get("camera_model")
    if model is not None and str(model).upper() not in _PINHOLE_MODELS:
        raise PoseFileError(f"{where}: camera_model {model!r} is not a pinhole model; only perspective cameras "
                            "are supported")
    w, h = num("w"), num("h")
    if w is None or h is None:
        if image_size is None:
            raise PoseFileError(f"{where}: no image size ('w'/'h'); pass image_size=(H, W)")
        h, w = float(image_size[0]), float(image_size[1])
    fx, fy = num("fl_x"), num("fl_y")
    if fx is None:
        angle_x = num("camera_angle_x")
        if angle_x is None:
            raise PoseFileError(f"{where}: no focal length ('fl_x' or 'camera_angle_x')")
        fx = 0.5 * w / math.tan(0.5 * angle_x) if 0 < angle_x < math.pi else -1.0
    if fy is None:
        angle_y = num("camera_angle_y")
        fy = (0.5 * h / math.tan(0.5 * angle_y) if 0 < angle_y < math.pi else -1.0) if angle_y is not None else fx
    cx, cy = num("cx"), num("cy")
    distortion = {k: num(k) for k in _DISTORTION_KEYS if get(k) is not None}
    if any(v != 0 for v in distortion.values()):
        warnings.warn(f"{where}: lens distortion {distortion} ignored (pinhole cameras only)",
                      DistortionIgnoredWarning, stacklevel=4)
    return [fx, fy, w / 2 if cx is None else cx, h / 2 if cy is None else cy], (int(round(h)), int(round(w)))


def transforms_from_dict(data: Any, *, image_size: tuple[int, int] | None = None,
                         source: str = "<transforms>") -> tuple[CameraSet, TransformsMeta]:
    """Cameras from a parsed ``transforms.json`` (see the module docstring).

    Args:
        data: the parsed JSON object.
        image_size: ``(H, W)`` of the returned cameras; frames of another size are rescaled to it. Needed when
            the file has no ``w``/``h``. ``None``: the file's size, which must be the same for all frames.
        source: names the file in errors.
    """
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise PoseFileError(f"{source}: expected a JSON object with a 'frames' list")
    frames = data["frames"]
    if not frames:
        raise PoseFileError(f"{source}: 'frames' is empty")
    intr, sizes, c2w, paths, locations = [], [], [], [], []
    for i, frame in enumerate(frames):
        where = f"{source}: frames[{i}]"
        if not isinstance(frame, dict):
            raise PoseFileError(f"{where} is not an object")
        m = frame.get("transform_matrix")
        if not isinstance(m, list) or len(m) not in (3, 4) or any(not isinstance(r, list) or len(r) != 4 for r in m):
            raise PoseFileError(f"{where}.transform_matrix must be a 4x4 (or 3x4) list of rows")
        rows = [parse_numbers(r, f"{where}.transform_matrix[{j}]") for j, r in enumerate(m)]
        if len(rows) == 3:
            rows.append([0.0, 0.0, 0.0, 1.0])
        k, size = _frame_intrinsics(frame, data, image_size, where)
        intr.append(k)
        sizes.append(size)
        c2w.append(rows)
        paths.append(str(frame.get("file_path", "")))
        locations.append(f"frames[{i}]")
    intr_t = torch.tensor(intr, dtype=torch.float64)
    K = intrinsics_matrix(intr_t[:, 0], intr_t[:, 1], intr_t[:, 2], intr_t[:, 3])
    K, size = rescale_to_common_size(K, sizes, image_size, source, locations)
    c2w_cv = camtoworld_graphics_to_vision_4x4(torch.tensor(c2w, dtype=torch.float64))
    cams = cameras_from_file_matrices(K, size, source, locations, c2w=c2w_cv)
    return cams, TransformsMeta(file_paths=tuple(paths))


def read_transforms_json(path: str | os.PathLike, *, image_size: tuple[int, int] | None = None
                         ) -> tuple[CameraSet, TransformsMeta]:
    """Read a ``transforms.json`` file; see :func:`transforms_from_dict`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PoseFileError(f"{path}: not valid JSON ({e})") from e
    return transforms_from_dict(data, image_size=image_size, source=str(path))


def transforms_to_dict(cams: CameraSet, *, file_paths: Sequence[str] | None = None) -> dict:
    """A nerfstudio-style ``transforms.json`` object for ``cams``.

    Shared intrinsics go to the top level (with ``camera_angle_x`` for original-NeRF loaders), differing ones
    to each frame. ``file_paths`` default to ``images/frame_00000.png``, ...
    """
    cams = cams.to(dtype=torch.float64)
    h, w = cams.image_size
    if file_paths is None:
        file_paths = [f"images/frame_{i:05d}.png" for i in range(len(cams))]
    if len(file_paths) != len(cams):
        raise ValueError(f"file_paths has {len(file_paths)} entries for {len(cams)} cameras")
    c2w_gl = camtoworld_vision_to_graphics_4x4(cams.c2w)
    fx, fy, cx, cy = (cams.K[:, 0, 0], cams.K[:, 1, 1], cams.K[:, 0, 2], cams.K[:, 1, 2])
    intr = torch.stack([fx, fy, cx, cy], dim=-1)
    shared = bool((intr == intr[:1]).all())
    out: dict[str, Any] = {"camera_model": "OPENCV", "w": w, "h": h}
    if shared:
        out.update(fl_x=float(fx[0]), fl_y=float(fy[0]), cx=float(cx[0]), cy=float(cy[0]),
                   camera_angle_x=2 * math.atan(0.5 * w / float(fx[0])))
    frames = []
    for i in range(len(cams)):
        frame: dict[str, Any] = {"file_path": file_paths[i], "transform_matrix": c2w_gl[i].tolist()}
        if not shared:
            frame.update(fl_x=float(fx[i]), fl_y=float(fy[i]), cx=float(cx[i]), cy=float(cy[i]))
        frames.append(frame)
    out["frames"] = frames
    return out


def write_transforms_json(cams: CameraSet, path: str | os.PathLike, *,
                          file_paths: Sequence[str] | None = None) -> Path:
    """Write :func:`transforms_to_dict` to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(transforms_to_dict(cams, file_paths=file_paths), indent=2) + "\n")
