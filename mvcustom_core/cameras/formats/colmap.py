"""COLMAP models: ``cameras.txt``, ``images.txt`` (and an empty ``points3D.txt`` on write); ``.bin`` via pycolmap.

Convention:
    - ``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...``. Supported models and their parameters:
      SIMPLE_PINHOLE ``f cx cy``; PINHOLE ``fx fy cx cy``; SIMPLE_RADIAL ``f cx cy k``; RADIAL
      ``f cx cy k1 k2``; OPENCV ``fx fy cx cy k1 k2 p1 p2``. Distortion is dropped with a
      :class:`DistortionIgnoredWarning` when nonzero. COLMAP puts the centre of the top-left pixel at
      (0.5, 0.5), as we do, so ``cx, cy`` carry over unchanged.
    - ``images.txt``: per image two lines, ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` and the 2D points
      ``X Y POINT3D_ID ...`` (possibly empty). ``q = (qw, qx, qy, qz)`` (real part first, also kornia's order)
      and ``t`` are the **world-to-camera** rotation and translation with OpenCV axes:
      ``X_cam = R(q) X_world + t``, so ``c2w = inverse([R(q) | t])``.
    - Frames are sorted by image name by default (COLMAP's image ids follow registration order).
    - Binary models (``cameras.bin``, ``images.bin``) are read, and with ``binary=True`` written, through pycolmap
      (optional ``sfm`` extra); its ``Rigid3d`` quaternions are Eigen's ``xyzw`` and are reordered to ``wxyz``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from kornia.geometry.conversions import quaternion_to_rotation_matrix, rotation_matrix_to_quaternion

from mvcustom_core.cameras.camera_set import CameraSet, intrinsics_matrix
from mvcustom_core.cameras.formats._common import (PoseFileError, atomic_write_text, cameras_from_file_matrices,
                                                   is_number, parse_numbers, rescale_to_common_size)
from mvcustom_core.cameras.formats.transforms_json import DistortionIgnoredWarning

__all__ = ["ColmapMeta", "read_colmap_model", "write_colmap_model"]

# model -> (parameter count, indices of fx, fy, cx, cy in PARAMS; fy = fx where both point at one f)
_MODELS = {
    "SIMPLE_PINHOLE": (3, (0, 0, 1, 2)),
    "PINHOLE": (4, (0, 1, 2, 3)),
    "SIMPLE_RADIAL": (4, (0, 0, 1, 2)),
    "RADIAL": (5, (0, 0, 1, 2)),
    "OPENCV": (8, (0, 1, 2, 3)),
}
_DISTORTION_START = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 3, "RADIAL": 3, "OPENCV": 4}
_QUATERNION_NORM_ATOL = 1e-4


@dataclass(frozen=True)
class ColmapMeta:
    """Per frame, in the returned order: image names, COLMAP image ids and camera ids."""

    image_names: tuple[str, ...]
    image_ids: tuple[int, ...]
    camera_ids: tuple[int, ...]


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of every non-comment line, blank ones included."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PoseFileError(f"{path}: file not found (a COLMAP text model needs cameras.txt and images.txt)") \
            from None
    return [(n + 1, line.rstrip("\r\n")) for n, line in enumerate(text.split("\n"))
            if not line.lstrip().startswith("#")]


def _int(tok: str, where: str) -> int:
    try:
        return int(tok)
    except ValueError:
        raise PoseFileError(f"{where}: {tok!r} is not an integer") from None


def _read_cameras(path: Path) -> dict[int, tuple[list[float], tuple[int, int], str]]:
    cameras = {}
    for n, line in _data_lines(path):
        toks = line.split()
        if not toks:
            continue
        where = f"{path}: line {n}"
        if len(toks) < 4:
            raise PoseFileError(f"{where}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', got {len(toks)} values")
        cam_id, model = _int(toks[0], where), toks[1].upper()
        if model not in _MODELS:
            raise PoseFileError(f"{where}: camera model {toks[1]!r} is not supported "
                                f"(supported: {', '.join(_MODELS)})")
        n_params, (ifx, ify, icx, icy) = _MODELS[model]
        if len(toks) != 4 + n_params:
            raise PoseFileError(f"{where}: model {model} takes {n_params} parameters, got {len(toks) - 4}")
        width, height = _int(toks[2], where), _int(toks[3], where)
        if width <= 0 or height <= 0:
            raise PoseFileError(f"{where}: image size {width}x{height} is not positive")
        params = parse_numbers(toks[4:], where)
        _warn_distortion(model, params, where)
        if cam_id in cameras:
            raise PoseFileError(f"{where}: camera id {cam_id} is defined twice")
        cameras[cam_id] = ([params[ifx], params[ify], params[icx], params[icy]], (height, width), f"line {n}")
    if not cameras:
        raise PoseFileError(f"{path}: no cameras")
    return cameras


def _read_images(path: Path) -> list[tuple[int, list[float], int, str, int]]:
    """(image id, [qw qx qy qz tx ty tz], camera id, name, "line N") per image."""
    images = []
    lines = _data_lines(path)
    i = 0
    while i < len(lines):
        n, line = lines[i]
        toks = line.split()
        i += 1
        if not toks:
            continue
        where = f"{path}: line {n}"
        if len(toks) < 10:
            raise PoseFileError(f"{where}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', "
                                f"got {len(toks)} values")
        pose = parse_numbers(toks[1:8], where)
        images.append((_int(toks[0], where), pose, _int(toks[8], where), " ".join(toks[9:]), f"line {n}"))
        # The next line holds the image's 2D points (X Y POINT3D_ID triples), possibly empty.
        if i < len(lines):
            pn, points = lines[i]
            ptoks = points.split()
            if len(ptoks) % 3 != 0 or not all(is_number(t) for t in ptoks):
                raise PoseFileError(f"{path}: line {pn}: expected the 2D-points line (X Y POINT3D_ID triples) "
                                    f"of the image on line {n}; every image line needs one, even if empty")
            i += 1
    if not images:
        raise PoseFileError(f"{path}: no images")
    return images


def _import_pycolmap(path: Path):
    """pycolmap (the optional ``sfm`` extra), or an error saying how to do without it."""
    try:
        import pycolmap
    except ImportError as e:
        raise ImportError(f"{path}: binary COLMAP models need pycolmap (pip install pycolmap), or convert the model "
                          "to text with 'colmap model_converter --output_type TXT'") from e
    return pycolmap


def _read_binary(folder: Path) -> tuple[dict, list]:
    """A binary model (``cameras.bin``, ``images.bin``) through pycolmap, in the text readers' layout."""
    pycolmap = _import_pycolmap(folder / "cameras.bin")
    try:
        rec = pycolmap.Reconstruction(str(folder))
    except Exception as e:  # pycolmap raises its own runtime errors for corrupt files
        raise PoseFileError(f"{folder}: pycolmap could not read the binary model ({e})") from e
    cameras = {}
    for cam_id, cam in rec.cameras.items():
        where = f"{folder / 'cameras.bin'}: camera {cam_id}"
        model = str(cam.model_name).upper()
        if model not in _MODELS:
            raise PoseFileError(f"{where}: camera model {model} is not supported (supported: {', '.join(_MODELS)})")
        params = [float(v) for v in cam.params]
        _, (ifx, ify, icx, icy) = _MODELS[model]
        _warn_distortion(model, params, where)
        cameras[cam_id] = ([params[ifx], params[ify], params[icx], params[icy]], (cam.height, cam.width), where)
    images = []
    for image_id, im in rec.images.items():
        pose = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        x, y, z, w = (float(v) for v in pose.rotation.quat)  # Eigen order: xyzw
        images.append((image_id, [w, x, y, z, *(float(v) for v in pose.translation)], im.camera_id, im.name,
                       f"image {image_id}"))
    if not images:
        raise PoseFileError(f"{folder / 'images.bin'}: no images")
    images.sort(key=lambda im: im[0])
    return cameras, images


def _warn_distortion(model: str, params: list[float], where: str) -> None:
    distortion = params[_DISTORTION_START[model]:]
    if any(d != 0 for d in distortion):
        warnings.warn(f"{where}: {model} distortion {distortion} ignored (pinhole cameras only)",
                      DistortionIgnoredWarning, stacklevel=5)


def read_colmap_model(folder: str | os.PathLike, *, image_size: tuple[int, int] | None = None,
                      sort_by_name: bool = True) -> tuple[CameraSet, ColmapMeta]:
    """Read ``cameras.txt`` and ``images.txt`` from a COLMAP text model folder.

    Args:
        folder: the model folder (e.g. ``sparse/0`` after ``colmap model_converter --output_type TXT``).
        image_size: ``(H, W)`` of the returned cameras; cameras of another size are rescaled. ``None``: all
            images must share one size.
        sort_by_name: order frames by image name (else by order in ``images.txt``).

    Returns:
        float64 cameras and :class:`ColmapMeta`.
    """
    folder = Path(folder)
    cameras_path, images_path = folder / "cameras.txt", folder / "images.txt"
    if not cameras_path.exists() and (folder / "cameras.bin").exists():
        cameras_path, images_path = folder / "cameras.bin", folder / "images.bin"
        cameras, images = _read_binary(folder)
    else:
        cameras = _read_cameras(cameras_path)
        images = _read_images(images_path)
    if sort_by_name:
        images.sort(key=lambda im: im[3])
    for image_id, pose, cam_id, name, loc in images:
        if cam_id not in cameras:
            raise PoseFileError(f"{images_path}: {loc}: camera id {cam_id} is not in {cameras_path}")
        qnorm = sum(q * q for q in pose[:4]) ** 0.5
        if abs(qnorm - 1) > _QUATERNION_NORM_ATOL:
            raise PoseFileError(f"{images_path}: {loc}: quaternion ({', '.join(f'{q:g}' for q in pose[:4])}) "
                                f"has norm {qnorm:.6g}, not 1")
    pose_t = torch.tensor([im[1] for im in images], dtype=torch.float64)  # [F, 7]
    w2c = torch.zeros(len(images), 3, 4, dtype=torch.float64)
    w2c[:, :, :3] = quaternion_to_rotation_matrix(pose_t[:, :4])
    w2c[:, :, 3] = pose_t[:, 4:]
    intr = torch.tensor([cameras[im[2]][0] for im in images], dtype=torch.float64)
    K = intrinsics_matrix(intr[:, 0], intr[:, 1], intr[:, 2], intr[:, 3])
    locations = [f"{images_path.name} {im[4]}" for im in images]
    K, size = rescale_to_common_size(K, [cameras[im[2]][1] for im in images], image_size, str(folder), locations)
    cams = cameras_from_file_matrices(K, size, str(folder), locations, w2c=w2c)
    meta = ColmapMeta(image_names=tuple(im[3] for im in images), image_ids=tuple(im[0] for im in images),
                      camera_ids=tuple(im[2] for im in images))
    return cams, meta


def _fmt(x: float) -> str:
    return repr(float(x))


def write_colmap_model(cams: CameraSet, folder: str | os.PathLike, *,
                       image_names: Sequence[str] | None = None, binary: bool = False) -> Path:
    """Write a COLMAP text model (PINHOLE cameras, one per distinct intrinsics) to ``folder``.

    ``images.txt`` gets an empty 2D-points line per image and ``points3D.txt`` no points. Image names default
    to ``frame_00000.png``, ... (sorted in frame order, so reading back keeps the order). Files are written
    atomically, one by one. ``binary=True`` writes ``*.bin`` instead, through pycolmap.
    """
    folder = Path(folder)
    if binary:
        import tempfile

        pycolmap = _import_pycolmap(folder)

        with tempfile.TemporaryDirectory(dir=folder.parent if folder.parent.exists() else None) as tmp:
            write_colmap_model(cams, tmp, image_names=image_names)
            folder.mkdir(parents=True, exist_ok=True)
            pycolmap.Reconstruction(tmp).write_binary(str(folder))
        return folder
    cams = cams.to(dtype=torch.float64)
    if image_names is None:
        image_names = [f"frame_{i:05d}.png" for i in range(len(cams))]
    if len(image_names) != len(cams):
        raise ValueError(f"image_names has {len(image_names)} entries for {len(cams)} cameras")
    bad = [n for n in image_names if not n or any(c.isspace() for c in n)]
    if bad:
        raise ValueError(f"COLMAP image names cannot be empty or contain whitespace: {bad[0]!r}")
    h, w = cams.image_size
    intr = torch.stack([cams.K[:, 0, 0], cams.K[:, 1, 1], cams.K[:, 0, 2], cams.K[:, 1, 2]], dim=-1).tolist()
    camera_ids: dict[tuple[float, ...], int] = {}
    for row in intr:
        camera_ids.setdefault(tuple(row), len(camera_ids) + 1)
    cam_lines = ["# Camera list with one line of data per camera:",
                 "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
                 f"# Number of cameras: {len(camera_ids)}"]
    cam_lines += [f"{cid} PINHOLE {w} {h} " + " ".join(_fmt(v) for v in row) for row, cid in camera_ids.items()]
    w2c = cams.w2c
    q = rotation_matrix_to_quaternion(w2c[:, :3, :3].contiguous())
    q = torch.where(q[:, :1] < 0, -q, q)  # q and -q are one rotation; COLMAP keeps qw >= 0
    img_lines = ["# Image list with two lines of data per image:",
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)",
                 f"# Number of images: {len(cams)}, mean observations per image: 0"]
    for i in range(len(cams)):
        values = [*q[i].tolist(), *w2c[i, :3, 3].tolist()]
        img_lines.append(f"{i + 1} " + " ".join(_fmt(v) for v in values)
                         + f" {camera_ids[tuple(intr[i])]} {image_names[i]}")
        img_lines.append("")
    atomic_write_text(folder / "cameras.txt", "\n".join(cam_lines) + "\n")
    atomic_write_text(folder / "images.txt", "\n".join(img_lines) + "\n")
    atomic_write_text(folder / "points3D.txt", "# 3D point list with one line of data per point:\n"
                      "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_ID)\n"
                      "# Number of points: 0, mean track length: 0\n")
    return folder
