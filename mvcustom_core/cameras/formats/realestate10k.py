"""RealEstate10K / CameraCtrl pose text files (``assets/pose_files/*.txt``).

Convention:
    - Line 1 is the source video URL. Every further line is one frame of 19 space-separated numbers
      ``timestamp fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3``: microsecond timestamp,
      intrinsics normalized by the image width (fx, cx) and height (fy, cy), two unused columns, and the
      3x4 **world-to-camera** ``[R | t]`` row-major with OpenCV axes (x right, y down, z forward).
    - Conversion: ``K = [[fx W, 0, cx W], [0, fy H, cy H], [0, 0, 1]]`` for ``image_size = (H, W)``
      (default 720x1280, what CameraCtrl assumes), ``c2w = inverse([R | t; 0 0 0 1])``.
    - The 18-value variant of chaojie/ComfyUI-CameraCtrl-Wrapper drops the timestamp. It is accepted only when
      *every* frame line has 18 values and its unused columns (then at 4-5) are zero; any other column count
      is an error. A file is written back in the variant it was read in.
    - Written files use single spaces and no blank lines, because AnimateDiff-Evolved splits lines on
      ``' '`` and parses every line after the first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mvcustom_core.cameras.camera_set import CameraSet
from mvcustom_core.cameras.formats._common import PoseFileError, atomic_write_text, is_number, parse_numbers
from mvcustom_core.cameras.formats.cameractrl_poses import (DEFAULT_POSE_SIZE, cameras_from_pose_rows,
                                                            cameras_to_pose_rows)

__all__ = ["RealEstate10KMeta", "parse_realestate10k", "read_realestate10k", "format_realestate10k",
           "write_realestate10k"]


@dataclass(frozen=True)
class RealEstate10KMeta:
    """What a pose file holds beyond the cameras, so a write reproduces the file.

    Attributes:
        url: line 1 (the source video URL; may be empty).
        timestamps: ``F`` frame timestamps (microseconds); ``None`` for the 18-value variant.
        unused_columns: ``F`` pairs of the two columns between intrinsics and pose (zero in RealEstate10K).
    """

    url: str
    timestamps: tuple[float, ...] | None
    unused_columns: tuple[tuple[float, float], ...]

    @property
    def has_timestamps(self) -> bool:
        return self.timestamps is not None


def parse_realestate10k(text: str, *, image_size: tuple[int, int] = DEFAULT_POSE_SIZE,
                        source: str = "<pose text>") -> tuple[CameraSet, RealEstate10KMeta]:
    """Parse the text of a pose file (see the module docstring); ``source`` names it in errors."""
    lines = text.splitlines()
    start = 1
    url = lines[0].strip() if lines else ""
    # A file whose first line is already a pose row (no URL) is unambiguous: a URL is never all numbers.
    if lines and len(lines[0].split()) in (18, 19) and all(is_number(t) for t in lines[0].split()):
        start, url = 0, ""
    frames = [(n + 1, line.split()) for n, line in enumerate(lines) if n >= start and line.strip()]
    if not frames:
        raise PoseFileError(f"{source}: no pose lines after the URL line")
    counts = {len(toks) for _, toks in frames}
    if counts == {19}:
        has_time = True
    elif counts == {18}:
        has_time = False
    else:
        lineno, toks = next((n, t) for n, t in frames if len(t) != 19)
        raise PoseFileError(f"{source}: line {lineno} has {len(toks)} values, expected 19 "
                            "(timestamp fx fy cx cy 0 0 and a 3x4 world-to-camera)")
    rows = torch.tensor([parse_numbers(toks, f"{source}: line {n}") for n, toks in frames], dtype=torch.float64)
    if not has_time:
        nonzero = torch.nonzero((rows[:, 4:6] != 0).any(dim=-1)).flatten()
        if len(nonzero):
            raise PoseFileError(f"{source}: line {frames[int(nonzero[0])][0]} has 18 values but its columns 5-6 "
                                f"are {rows[int(nonzero[0]), 4:6].tolist()}, not zero, so this is not the "
                                "timestamp-less variant; expected 19 values per line")
        rows = torch.cat([torch.zeros_like(rows[:, :1]), rows], dim=-1)
    cams = cameras_from_pose_rows(rows[:, 1:5], rows[:, 7:], image_size, source=source,
                                  locations=[f"line {n}" for n, _ in frames])
    meta = RealEstate10KMeta(
        url=url,
        timestamps=tuple(rows[:, 0].tolist()) if has_time else None,
        unused_columns=tuple((float(a), float(b)) for a, b in rows[:, 5:7].tolist()),
    )
    return cams, meta


def read_realestate10k(path: str | os.PathLike, *, image_size: tuple[int, int] = DEFAULT_POSE_SIZE
                       ) -> tuple[CameraSet, RealEstate10KMeta]:
    """Read a pose file.

    Args:
        path: the ``.txt`` file.
        image_size: ``(H, W)`` the normalized intrinsics refer to (default 720x1280 as in CameraCtrl).

    Returns:
        float64 cameras and the file's :class:`RealEstate10KMeta`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PoseFileError(f"{path}: not a UTF-8 text file ({e})") from e
    return parse_realestate10k(text, image_size=image_size, source=str(path))


def _number(x: float, decimals: int) -> str:
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    s = f"{x:.{decimals}f}"
    return "0.0" if float(s) == 0 else s  # no "-0.000000000"


def format_realestate10k(cams: CameraSet, meta: RealEstate10KMeta | None = None, *, decimals: int = 12) -> str:
    """The text of a pose file for ``cams``; ``meta`` supplies URL, timestamps and unused columns.

    Without ``meta``: an empty URL line, timestamps 0..F-1, zero unused columns. Intrinsics are normalized by
    ``cams.image_size``. ``decimals`` (default 12) keeps the round trip well inside 1e-6 in pixels.
    """
    if meta is not None and len(meta.unused_columns) != len(cams):
        raise ValueError(f"meta describes {len(meta.unused_columns)} frames but cams has {len(cams)}")
    norm, w2c = cameras_to_pose_rows(cams.to(dtype=torch.float64))
    url = meta.url if meta is not None else ""
    lines = [url]
    for i in range(len(cams)):
        values = []
        if meta is None:
            values.append(float(i))
        elif meta.timestamps is not None:
            values.append(meta.timestamps[i])
        unused = meta.unused_columns[i] if meta is not None else (0.0, 0.0)
        values += [*norm[i].tolist(), *unused, *w2c[i].tolist()]
        lines.append(" ".join(_number(v, decimals) for v in values))
    return "\n".join(lines) + "\n"


def write_realestate10k(cams: CameraSet, path: str | os.PathLike, meta: RealEstate10KMeta | None = None, *,
                        decimals: int = 12) -> Path:
    """Write :func:`format_realestate10k` to ``path`` atomically (temp file + ``os.replace``)."""
    return atomic_write_text(path, format_realestate10k(cams, meta, decimals=decimals))
