"""Export of a generated multi-view set: PNG frames, their cameras as ``transforms.json``, the anchor point cloud.

Layout of an export folder::

    <folder>/transforms.json          cameras (mvcustom_core.cameras.formats, NeRF/instant-ngp layout)
    <folder>/images/frame_00000.png   one PNG per frame, referenced by file_path
    <folder>/anchor_points.ply        the anchor depth unprojected to world points, coloured by the anchor frame

Every file is written atomically (temp file in the same folder + ``os.replace``), so an interrupted export
never leaves a half-written file. The PLY is the standard vertex-only format (Turk 1994; the header grammar
of paulbourke.net/dataformats/ply): ``x y z`` float32 and ``red green blue`` uchar per vertex, binary little
endian or ASCII.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from mvcustom_core.cameras import CameraSet
from mvcustom_core.cameras.formats import TransformsMeta, save_camera_file
from mvcustom_core.checks import check_shape
from mvcustom_core.files import atomic_write_bytes, save_png
from mvcustom_core.inference.dfr import anchor_index

__all__ = ["ExportResult", "export_views", "write_ply", "read_ply", "anchor_point_cloud"]


@dataclass(frozen=True)
class ExportResult:
    """Paths written by :func:`export_views`."""

    transforms: Path
    images: tuple[Path, ...]
    ply: Path | None


def anchor_point_cloud(depth: Tensor, cam: CameraSet, image: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Unproject an anchor z-depth map into coloured world points.

    Args:
        depth: ``[H, W]`` z-depth, ``<= 0`` or non-finite = no point.
        cam: the anchor camera (1 frame; rescaled to the depth's size).
        image: ``[3, H', W']`` colours in [0, 1] (resized to the depth's size, bilinear); None = grey.

    Returns:
        points ``[P, 3]`` (row-major over valid pixels) and colours ``[P, 3]`` uint8.
    """
    h, w = check_shape(depth, "H W", "anchor depth").values()
    cam = cam.with_image_size((h, w)).to(device=depth.device, dtype=torch.float64)
    valid = torch.isfinite(depth) & (depth > 0)
    uv = cam.pixel_centers()[valid]
    points = cam.unproject(uv[None], depth[valid].double()[None])[0].float()
    if image is None:
        colours = torch.full((points.shape[0], 3), 128, dtype=torch.uint8)
    else:
        check_shape(image, "3 H W", "anchor image")
        img = image.float()[None]
        if tuple(img.shape[-2:]) != (h, w):
            img = torch.nn.functional.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
        colours = (img[0].permute(1, 2, 0)[valid.cpu()].clamp(0, 1) * 255).round().to(torch.uint8)
    return points, colours


def _ply_bytes(points: np.ndarray, colours: np.ndarray, binary: bool) -> bytes:
    n = points.shape[0]
    header = ("ply\n" + ("format binary_little_endian 1.0\n" if binary else "format ascii 1.0\n")
              + "comment MVCustom anchor point cloud\n"
              + f"element vertex {n}\n"
              + "property float x\nproperty float y\nproperty float z\n"
              + "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n").encode("ascii")
    if binary:
        record = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
        data = np.empty(n, dtype=record)
        data["x"], data["y"], data["z"] = points[:, 0], points[:, 1], points[:, 2]
        data["r"], data["g"], data["b"] = colours[:, 0], colours[:, 1], colours[:, 2]
        return header + data.tobytes()
    lines = [f"{x!r} {y!r} {z!r} {r} {g} {b}" for (x, y, z), (r, g, b) in
             zip(points.astype(np.float32).tolist(), colours.tolist())]
    return header + ("\n".join(lines) + ("\n" if lines else "")).encode("ascii")


def write_ply(path: str | os.PathLike, points: Tensor, colours: Tensor, *, binary: bool = True) -> Path:
    """Write ``points [P, 3]`` (float32 on disk) and ``colours [P, 3]`` uint8 as a vertex PLY, atomically."""
    check_shape(points, "P 3", "points")
    check_shape(colours, f"{points.shape[0]} 3", "colours")
    data = _ply_bytes(points.detach().cpu().float().numpy(), colours.detach().cpu().to(torch.uint8).numpy(), binary)
    return atomic_write_bytes(path, data)


def read_ply(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Read a PLY written by :func:`write_ply` (binary little endian or ASCII) -> points ``[P, 3]``, colours ``[P, 3]``."""
    raw = Path(path).read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic or 'end_header')")
    header = raw[:end].decode("ascii").splitlines()
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    body = raw[end + len(b"end_header\n"):]
    if "format binary_little_endian 1.0" in header:
        record = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
        data = np.frombuffer(body, dtype=record, count=count)
        points = np.stack([data["x"], data["y"], data["z"]], axis=1)
        colours = np.stack([data["r"], data["g"], data["b"]], axis=1)
    elif "format ascii 1.0" in header:
        rows = np.array([line.split() for line in body.decode("ascii").splitlines()[:count]], dtype=np.float64)
        rows = rows.reshape(count, 6)
        points, colours = rows[:, :3].astype(np.float32), rows[:, 3:].astype(np.uint8)
    else:
        raise ValueError(f"{path}: unsupported PLY format line")
    return torch.from_numpy(points.copy()), torch.from_numpy(colours.copy())


def export_views(
    folder: str | os.PathLike,
    frames: Tensor,  # [F, 3, H, W] in [0, 1]
    cams: CameraSet,
    *,
    anchor: int | None = None,
    anchor_depth: Tensor | None = None,  # [h, w] z-depth of the anchor frame
    binary_ply: bool = True,
    prefix: str = "frame",
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Write frames as PNGs, their cameras as ``transforms.json`` and (given a depth) the anchor point cloud.

    The cameras are written at the frames' size (intrinsics rescaled when the trajectory's size differs).
    ``progress(files written, F + 2)`` after each file (it may raise to stop; what is written stays whole).
    """
    dims = check_shape(frames, "F 3 H W", "frames")
    if cams.num_frames != dims["F"]:
        raise ValueError(f"frames has {dims['F']} images but the trajectory has {cams.num_frames} cameras")
    a = anchor_index(anchor, dims["F"])  # checked before any file is written; negative counts from the end
    folder = Path(folder)
    cams = cams.with_image_size((dims["H"], dims["W"]))
    names = [f"images/{prefix}_{i:05d}.png" for i in range(dims["F"])]
    total = dims["F"] + 2
    report = progress if progress is not None else (lambda done, total: None)
    images = []
    for i, name in enumerate(names):
        images.append(save_png(frames[i].detach().float().cpu(), folder / name))
        report(i + 1, total)
    images = tuple(images)
    transforms = save_camera_file(cams, folder / "transforms.json", "transforms_json", meta=TransformsMeta(tuple(names)))
    report(total - 1, total)
    ply = None
    if anchor_depth is not None:
        points, colours = anchor_point_cloud(anchor_depth.float().cpu(), cams[a].to(dtype=torch.float64),
                                             frames[a].detach().cpu())
        ply = write_ply(folder / "anchor_points.ply", points, colours, binary=binary_ply)
    report(total, total)
    return ExportResult(Path(transforms), images, ply)
