"""CO3D frame annotations (``frame_annotations.jgz``: a gzipped JSON list, or the same list as ``.json``).

Convention (pytorch3d ``implicitron/dataset/frame_data.py::_get_pytorch3d_camera`` and
``renderer/camera_conversions.py::_opencv_from_cameras_projection``, facebookresearch/pytorch3d):
    - Each entry has ``sequence_name``, ``frame_number``, ``frame_timestamp``, ``image: {path, size: [H, W]}`` and
      ``viewpoint: {R, T, focal_length, principal_point, intrinsics_format}``.
    - Extrinsics are PyTorch3D's **row-vector** world-to-view map ``X_view = X_world @ R + T`` with view axes +X left,
      +Y up, +Z forward. OpenCV axes are that frame with x and y negated, ``D = diag(-1, -1, 1)``, so
      ``R_cv = D Rᵀ`` and ``t_cv = D T`` (``X_cv = R_cv X_world + t_cv``); back: ``R = R_cvᵀ D``, ``T = D t_cv``.
    - Intrinsics are in NDC. With ``half = (W/2, H/2)`` the NDC unit ``s`` is ``half`` per axis for
      ``"ndc_norm_image_bounds"`` (CO3Dv1) and ``min(W, H)/2`` on both axes for ``"ndc_isotropic"`` (CO3Dv2);
      ``f_px = f_ndc * s`` and ``p_px = half - p_ndc * s`` (NDC x and y point left and up, pixels right and down).
      NDC ±1 are image *edges*, so a centred principal point is ``(W/2, H/2)``: pixel centres at +0.5, as ours.
    - A category file holds many sequences; pick one with ``sequence=`` (required when there are several).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mvcustom_core.cameras.camera_set import CameraSet, intrinsics_matrix
from mvcustom_core.cameras.formats._common import (PoseFileError, atomic_write_bytes, cameras_from_file_matrices,
                                                   parse_numbers, rescale_to_common_size)

__all__ = ["CO3DMeta", "INTRINSICS_FORMATS", "co3d_from_list", "read_co3d", "co3d_to_list", "write_co3d"]

INTRINSICS_FORMATS = ("ndc_isotropic", "ndc_norm_image_bounds")
_FLIP_XY = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))


@dataclass(frozen=True)
class CO3DMeta:
    """Per-frame annotation fields beyond the camera, in frame order, so a write reproduces the entries.

    Attributes:
        sequence_name: the sequence the frames belong to.
        frame_numbers, frame_timestamps, image_paths: one per frame.
        image_sizes: ``(H, W)`` per frame as annotated (the cameras may have been rescaled to one size).
        intrinsics_format: the first frame's NDC convention (one of :data:`INTRINSICS_FORMATS`).
    """

    sequence_name: str
    frame_numbers: tuple[int, ...]
    frame_timestamps: tuple[float, ...]
    image_paths: tuple[str, ...]
    image_sizes: tuple[tuple[int, int], ...]
    intrinsics_format: str


def _pair(value: Any, where: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PoseFileError(f"{where}: expected 2 numbers, got {value!r}")
    return parse_numbers(value, where)


def co3d_from_list(entries: Any, *, sequence: str | None = None, image_size: tuple[int, int] | None = None,
                   source: str = "<co3d annotations>") -> tuple[CameraSet, CO3DMeta]:
    """Cameras of one sequence from a parsed CO3D frame-annotation list (see the module docstring).

    Args:
        entries: the parsed JSON list of frame annotations.
        sequence: ``sequence_name`` to load; ``None`` requires the list to hold exactly one sequence.
        image_size: ``(H, W)`` of the returned cameras (frames of another size are rescaled); ``None``: the
            annotated size, which must then be the same for every frame.
        source: names the file in errors.

    Returns:
        float64 cameras in file order and :class:`CO3DMeta`.
    """
    if not isinstance(entries, list) or not entries:
        raise PoseFileError(f"{source}: expected a non-empty JSON list of frame annotations")
    names = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("viewpoint"), dict):
            raise PoseFileError(f"{source}: [{i}] is not a frame annotation (an object with a 'viewpoint')")
        names.append(str(e.get("sequence_name", "")))
    if sequence is None:
        distinct = sorted(set(names))
        if len(distinct) > 1:
            shown = ", ".join(distinct[:5]) + (", ..." if len(distinct) > 5 else "")
            raise PoseFileError(f"{source}: holds {len(distinct)} sequences ({shown}); pass sequence=<name>")
        sequence = distinct[0]
    picked = [(i, e) for i, (e, n) in enumerate(zip(entries, names)) if n == sequence]
    if not picked:
        raise PoseFileError(f"{source}: no frames of sequence {sequence!r}")
    K_rows, sizes, w2c, numbers, stamps, paths, locations = [], [], [], [], [], [], []
    formats = []
    for i, e in picked:
        where = f"{source}: [{i}]"
        vp = e["viewpoint"]
        image = e.get("image") or {}
        if "size" not in image:
            raise PoseFileError(f"{where}.image.size missing; it is needed to convert NDC intrinsics to pixels")
        h, w = _pair(image["size"], f"{where}.image.size")
        if h <= 0 or w <= 0:
            raise PoseFileError(f"{where}.image.size {image['size']} is not positive")
        fmt = str(vp.get("intrinsics_format", "ndc_norm_image_bounds")).lower()
        if fmt not in INTRINSICS_FORMATS:
            raise PoseFileError(f"{where}.viewpoint.intrinsics_format {fmt!r} is not one of {INTRINSICS_FORMATS}")
        R_t = _matrix(vp.get("R"), 3, 3, f"{where}.viewpoint.R")
        T_t = _matrix([vp.get("T")], 1, 3, f"{where}.viewpoint.T")[0]
        f = _pair(vp.get("focal_length"), f"{where}.viewpoint.focal_length")
        p = _pair(vp.get("principal_point"), f"{where}.viewpoint.principal_point")
        half = (w / 2.0, h / 2.0)
        s = half if fmt == "ndc_norm_image_bounds" else (min(half), min(half))
        K_rows.append([f[0] * s[0], f[1] * s[1], half[0] - p[0] * s[0], half[1] - p[1] * s[1]])
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = _FLIP_XY @ R_t.T
        m[:3, 3] = _FLIP_XY @ T_t
        w2c.append(m)
        sizes.append((int(round(h)), int(round(w))))
        numbers.append(int(e.get("frame_number", len(numbers))))
        stamps.append(float(e.get("frame_timestamp", 0.0)))
        paths.append(str(image.get("path", "")))
        formats.append(fmt)
        locations.append(f"[{i}]")
    k = torch.tensor(K_rows, dtype=torch.float64)
    K = intrinsics_matrix(k[:, 0], k[:, 1], k[:, 2], k[:, 3])
    K, size = rescale_to_common_size(K, sizes, image_size, source, locations)
    cams = cameras_from_file_matrices(K, size, source, locations, w2c=torch.stack(w2c))
    meta = CO3DMeta(sequence_name=sequence, frame_numbers=tuple(numbers), frame_timestamps=tuple(stamps),
                    image_paths=tuple(paths), image_sizes=tuple(sizes), intrinsics_format=formats[0])
    return cams, meta


def _matrix(value: Any, rows: int, cols: int, where: str) -> torch.Tensor:
    """``[rows, cols]`` float64 from a JSON list of rows, or a :class:`PoseFileError` naming ``where``."""
    if (not isinstance(value, list) or len(value) != rows
            or any(not isinstance(r, list) or len(r) != cols for r in value)):
        raise PoseFileError(f"{where}: expected {rows}x{cols} numbers, got {value!r}")
    return torch.tensor([parse_numbers(r, where) for r in value], dtype=torch.float64)


def read_co3d(path: str | os.PathLike, *, sequence: str | None = None, image_size: tuple[int, int] | None = None
              ) -> tuple[CameraSet, CO3DMeta]:
    """Read ``frame_annotations.jgz`` (gzip) or a ``.json`` list; see :func:`co3d_from_list`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix
            raw = gzip.decompress(raw)
        entries = json.loads(raw.decode("utf-8"))
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise PoseFileError(f"{path}: not a (gzipped) JSON list of CO3D frame annotations ({e})") from e
    return co3d_from_list(entries, sequence=sequence, image_size=image_size, source=str(path))


def co3d_to_list(cams: CameraSet, meta: CO3DMeta | None = None, *,
                 intrinsics_format: str | None = None) -> list[dict]:
    """CO3D frame annotations for ``cams`` (inverse of :func:`co3d_from_list`).

    Intrinsics are written for ``cams.image_size``. ``meta`` supplies sequence name, frame numbers, timestamps and
    image paths; ``intrinsics_format`` defaults to ``meta``'s or ``"ndc_isotropic"`` (CO3Dv2).
    """
    fmt = intrinsics_format or (meta.intrinsics_format if meta is not None else "ndc_isotropic")
    if fmt not in INTRINSICS_FORMATS:
        raise ValueError(f"intrinsics_format {fmt!r} is not one of {INTRINSICS_FORMATS}")
    if meta is not None and len(meta.frame_numbers) != len(cams):
        raise ValueError(f"meta describes {len(meta.frame_numbers)} frames but cams has {len(cams)}")
    cams = cams.to(dtype=torch.float64)
    h, w = cams.image_size
    half = (w / 2.0, h / 2.0)
    s = half if fmt == "ndc_norm_image_bounds" else (min(half), min(half))
    w2c = cams.w2c
    R = w2c[:, :3, :3].transpose(-1, -2) @ _FLIP_XY
    T = w2c[:, :3, 3] @ _FLIP_XY  # D is diagonal, so t @ D == D @ t
    out = []
    for i in range(len(cams)):
        k = cams.K[i]
        out.append({
            "sequence_name": meta.sequence_name if meta is not None else "sequence",
            "frame_number": meta.frame_numbers[i] if meta is not None else i,
            "frame_timestamp": meta.frame_timestamps[i] if meta is not None else float(i),
            "image": {"path": meta.image_paths[i] if meta is not None else f"images/frame{i + 1:06d}.jpg",
                      "size": [h, w]},
            "viewpoint": {
                "R": R[i].tolist(),
                "T": T[i].tolist(),
                "focal_length": [float(k[0, 0]) / s[0], float(k[1, 1]) / s[1]],
                "principal_point": [(half[0] - float(k[0, 2])) / s[0], (half[1] - float(k[1, 2])) / s[1]],
                "intrinsics_format": fmt,
            },
        })
    return out


def write_co3d(cams: CameraSet, path: str | os.PathLike, meta: CO3DMeta | None = None, *,
               intrinsics_format: str | None = None) -> Path:
    """Write :func:`co3d_to_list` atomically; gzipped when ``path`` ends in ``.jgz`` or ``.gz``."""
    path = Path(path)
    data = json.dumps(co3d_to_list(cams, meta, intrinsics_format=intrinsics_format)).encode("utf-8")
    if path.suffix in (".jgz", ".gz"):
        data = gzip.compress(data, mtime=0)
    return atomic_write_bytes(path, data)

