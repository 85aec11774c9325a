"""Camera files in, :class:`~mvcustom_core.cameras.CameraSet` out, and back.

One entry point for every format the pack reads and writes:

>>> cams = load_camera_file("assets/pose_files/0bf152ef84195293.txt")           # doctest: +SKIP
>>> save_camera_file(cams, "out/transforms.json")                              # doctest: +SKIP

``load_camera_file_with_meta`` also returns what a format stores beside the cameras (URL and timestamps, image
names, frame numbers, ...), and ``save_camera_file(..., meta=...)`` writes it back, so a load + save reproduces
the file. The conventions and conversion formulas of each format are in its module and in ``docs/cameras.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvcustom_core.cameras.camera_set import CameraSet
from mvcustom_core.checks import about
from mvcustom_core.cameras.formats._common import PoseFileError, atomic_write_text
from mvcustom_core.cameras.formats.cameractrl_poses import (DEFAULT_POSE_SIZE, cameractrl_resize,
                                                            cameras_from_cameractrl_poses, cameras_to_cameractrl_poses)
from mvcustom_core.cameras.formats.co3d import CO3DMeta, read_co3d, write_co3d
from mvcustom_core.cameras.formats.colmap import ColmapMeta, read_colmap_model, write_colmap_model
from mvcustom_core.cameras.formats.realestate10k import RealEstate10KMeta, read_realestate10k, write_realestate10k
from mvcustom_core.cameras.formats.transforms_json import (DistortionIgnoredWarning, TransformsMeta,
                                                           read_transforms_json, write_transforms_json)

__all__ = ["FORMATS", "CameraFile", "CameraCtrlPosesMeta", "PoseFileError", "DistortionIgnoredWarning",
           "detect_format", "load_camera_file", "load_camera_file_with_meta", "save_camera_file",
           "cameras_from_cameractrl_poses", "cameras_to_cameractrl_poses", "cameractrl_resize", "DEFAULT_POSE_SIZE",
           "RealEstate10KMeta", "TransformsMeta", "ColmapMeta", "CO3DMeta"]

FORMATS = ("realestate10k", "cameractrl_json", "transforms_json", "colmap", "co3d")
"""Format names: RealEstate10K/CameraCtrl ``.txt``; a ``CAMERACTRL_POSES`` list saved as JSON; NeRF/nerfstudio
``transforms.json``; a COLMAP model folder (text, or binary through pycolmap); CO3D ``frame_annotations.jgz``."""


@dataclass(frozen=True)
class CameraCtrlPosesMeta:
    """Column 0 (timestamps) of a saved ``CAMERACTRL_POSES`` list."""

    timestamps: tuple[float, ...]


@dataclass(frozen=True)
class CameraFile:
    """A loaded camera file: the cameras, the format's per-frame metadata, and the format name."""

    cameras: CameraSet
    meta: Any
    format: str


def detect_format(path: str | os.PathLike) -> str:
    """The :data:`FORMATS` name of ``path``, from its name and, for ``.json``, its top-level structure.

    A folder is a COLMAP model (``cameras.txt``/``images.txt`` or ``.bin``) or holds a ``transforms.json``.
    """
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        if any((path / f"cameras.{ext}").exists() for ext in ("txt", "bin")):
            return "colmap"
        if (path / "transforms.json").exists():
            return "transforms_json"
        raise PoseFileError(f"{path}: folder holds neither a COLMAP model (cameras.txt/images.txt or .bin) nor a "
                            "transforms.json")
    if name in ("cameras.txt", "images.txt", "points3d.txt", "cameras.bin", "images.bin", "points3d.bin"):
        return "colmap"
    if name.endswith((".jgz", ".json.gz")):
        return "co3d"
    if name.endswith(".json"):
        if not path.exists():
            return "transforms_json"  # a save target; read targets are inspected below
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PoseFileError(f"{path}: not valid JSON ({e})") from e
        if isinstance(data, dict) and "frames" in data:
            return "transforms_json"
        if isinstance(data, list) and data and isinstance(data[0], dict) and "viewpoint" in data[0]:
            return "co3d"
        if isinstance(data, list) and data and isinstance(data[0], list):
            return "cameractrl_json"
        raise PoseFileError(f"{path}: JSON is neither a transforms.json object (with 'frames'), a CO3D annotation "
                            "list (objects with 'viewpoint') nor a CAMERACTRL_POSES list of rows")
    if name.endswith(".txt"):
        return "realestate10k"
    raise PoseFileError(f"{path}: cannot tell the camera format from the name; pass format= one of {FORMATS}")


_COLMAP_FILES = ("cameras.txt", "images.txt", "points3d.txt", "cameras.bin", "images.bin", "points3d.bin")


def _check_kind(path: Path, fmt: str) -> None:
    """A format that reads one file given a folder, or a folder reader given a stray file, is a wrong
    ``format`` (marked so with :func:`~mvcustom_core.checks.about`), not a broken file."""
    if path.is_dir() and fmt not in ("colmap", "transforms_json"):
        raise about("format", PoseFileError(f"{path} is a folder; format {fmt!r} reads a single file"))
    if fmt == "colmap" and not path.is_dir() and path.name.lower() not in _COLMAP_FILES:
        raise about("format", PoseFileError(f"{path} is not part of a COLMAP model; format 'colmap' reads a model "
                                            "folder (cameras, images and points3D files) or one of its files"))
    if fmt == "transforms_json" and path.is_dir() and not (path / "transforms.json").is_file():
        raise about("format", PoseFileError(f"{path} is a folder without a transforms.json"))


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown camera format {fmt!r}; expected one of {FORMATS}")
    return fmt


def load_camera_file_with_meta(path: str | os.PathLike, *, format: str | None = None,
                               image_size: tuple[int, int] | None = None, **options: Any) -> CameraFile:
    """Read any supported camera file.

    Args:
        path: the file (a COLMAP model may be given as its folder or any file in it).
        format: one of :data:`FORMATS`; ``None`` detects it (:func:`detect_format`).
        image_size: ``(H, W)`` of the returned cameras. RealEstate10K stores normalized intrinsics, so this is
            the size they refer to (default 720x1280, CameraCtrl's); pixel formats rescale to it per axis
            (default: the file's size). For ``cameractrl_json`` it applies CameraCtrl's aspect fix.
        options: format-specific keywords: ``sequence=`` (co3d), ``sort_by_name=`` (colmap).

    Returns:
        :class:`CameraFile` with float64 cameras.

    Raises:
        PoseFileError: naming the file and line (or JSON key) of what could not be read.
    """
    path = Path(path)
    fmt = _check_format(format) if format is not None else detect_format(path)
    if not path.exists():
        raise FileNotFoundError(f"camera file not found: {path}")
    _check_kind(path, fmt)
    if fmt == "realestate10k":
        cams, meta = read_realestate10k(path, image_size=image_size or DEFAULT_POSE_SIZE, **options)
    elif fmt == "cameractrl_json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PoseFileError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(rows, list):
            raise PoseFileError(f"{path}: expected a JSON list of 19-number rows")
        cams = cameras_from_cameractrl_poses(rows, image_size, name=str(path), **options)
        meta = CameraCtrlPosesMeta(timestamps=tuple(float(r[0]) for r in rows))
    elif fmt == "transforms_json":
        target = path / "transforms.json" if path.is_dir() else path
        cams, meta = read_transforms_json(target, image_size=image_size, **options)
    elif fmt == "colmap":
        folder = path if path.is_dir() else path.parent
        cams, meta = read_colmap_model(folder, image_size=image_size, **options)
    else:
        cams, meta = read_co3d(path, image_size=image_size, **options)
    return CameraFile(cameras=cams, meta=meta, format=fmt)


def load_camera_file(path: str | os.PathLike, *, format: str | None = None,
                     image_size: tuple[int, int] | None = None, **options: Any) -> CameraSet:
    """The cameras of :func:`load_camera_file_with_meta` (float64, ``[F]`` frames)."""
    return load_camera_file_with_meta(path, format=format, image_size=image_size, **options).cameras


def save_camera_file(cams: CameraSet, path: str | os.PathLike, format: str | None = None, *,
                     meta: Any = None, **options: Any) -> Path:
    """Write ``cams`` atomically (temp file + ``os.replace``) in ``format`` (default: from the name).

    Args:
        cams: the cameras; their ``image_size`` is the size written (normalized formats divide by it).
        path: target file, or folder for ``colmap`` (a ``cameras.txt`` path means its folder).
        format: one of :data:`FORMATS`; ``None``: ``.txt`` realestate10k, ``.json`` transforms_json,
            ``.jgz`` co3d, a folder or ``cameras.txt`` colmap.
        meta: the ``meta`` of a :class:`CameraFile` of the same format (URL, timestamps, names, ...).
        options: format-specific keywords (``binary=True`` for colmap, ``intrinsics_format=`` for co3d,
            ``source_size=`` for cameractrl_json).

    Returns:
        the written path.
    """
    path = Path(path)
    if format is None:
        name = path.name.lower()
        if path.is_dir() or not path.suffix or name in ("cameras.txt", "images.txt", "cameras.bin", "images.bin"):
            format = "colmap"
        else:
            format = detect_format(path)
    _check_format(format)
    if meta is not None and not _meta_matches(format, meta):
        raise ValueError(f"meta of type {type(meta).__name__} does not belong to format {format!r}")
    if format == "realestate10k":
        return write_realestate10k(cams, path, meta, **options)
    if format == "cameractrl_json":
        rows = cameras_to_cameractrl_poses(cams, timestamps=meta.timestamps if meta is not None else None, **options)
        return atomic_write_text(path, json.dumps(rows) + "\n")
    if format == "transforms_json":
        return write_transforms_json(cams, path, file_paths=meta.file_paths if meta is not None else None, **options)
    if format == "colmap":
        folder = path.parent if path.suffix in (".txt", ".bin") else path
        return write_colmap_model(cams, folder, image_names=meta.image_names if meta is not None else None,
                                  **options)
    return write_co3d(cams, path, meta, **options)


def _meta_matches(fmt: str, meta: Any) -> bool:
    expected = {"realestate10k": RealEstate10KMeta, "cameractrl_json": CameraCtrlPosesMeta,
                "transforms_json": TransformsMeta, "colmap": ColmapMeta, "co3d": CO3DMeta}[fmt]
    return isinstance(meta, expected)
