"""Captioned video clips for backbone-stage training: folder scan, frame loading, step-indexed sampling.

Folder layout (``root``):
    - a **frame folder** is any directory holding PNG/JPG files directly; its frames are taken in natural order
      (``f2.png`` before ``f10.png``); names starting with ``.`` (``.ipynb_checkpoints``) are skipped;
    - a **video file** (``.mp4 .webm .mov .mkv .avi .gif``) is a clip too, decoded with PyAV (``av``) when it is
      installed; without it, :func:`scan_clips` raises naming the files (or skips them, ``videos="skip"``);
    - a clip's **name** is its path relative to ``root`` in POSIX form (``cats/clip_001`` or ``dogs/run.mp4``).

Captions (UTF-8 text; a byte-order mark, as Excel and Notepad write, is dropped), first match wins:
    1. ``root/captions.jsonl``: one object per line with a clip field (``clip``, ``name``, ``path``, ``video`` or
       ``file``) and a caption field (``caption`` or ``text``);
    2. ``root/captions.csv`` with a header naming the same fields, or WebVid's ``results_*.csv`` columns
       (``videoid``, ``page_dir``, ``name`` = caption) saved as ``captions.csv``: clip ``<page_dir>/<videoid>``
       or ``<videoid>``;
    3. a sidecar text file: ``<clip>.txt`` beside the clip (``clip_001.txt``, ``run.txt``) or ``caption.txt``
       inside a frame folder.
    Names in the index files may omit a video's suffix. A clip without caption raises, unless ``default_caption``
    is given.

Sampling is a function of ``(seed, step, rank)`` only (no iterator state), so a resumed run reads exactly the
batches an uninterrupted run would have read: global sample ``p = step · G + j`` (``G`` = global batch) is clip
``perm_e[p mod N]`` with ``perm_e`` a seeded permutation of epoch ``e = p // N``; process ``r`` of ``W`` takes
``j = r·G/W ... (r+1)·G/W - 1``. The frame start and caption dropout of a sample are drawn from a generator seeded
by ``(seed, p)``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F_
from torch import Tensor

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "VideoDataError",
    "Clip",
    "video_decoder_available",
    "scan_clips",
    "VideoClipDataset",
    "StepSampler",
    "sample_seed",
    "collate_clips",
    "resize_center_crop",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
CAPTION_FIELDS = ("caption", "text")
CLIP_FIELDS = ("clip", "name", "path", "video", "file")


class VideoDataError(ValueError):
    """A clip folder, caption file or clip that cannot be used, named in the message."""


@dataclass(frozen=True)
class Clip:
    """One training clip.

    Attributes:
        name: path relative to the dataset root, POSIX form.
        path: the frame folder or video file.
        caption: its caption.
        frames: frame files in order (frame folders), or ``None`` for a video file.
    """

    name: str
    path: Path
    caption: str
    frames: tuple[Path, ...] | None = None

    @property
    def is_video(self) -> bool:
        return self.frames is None


def video_decoder_available() -> bool:
    """Whether PyAV (``av``) can be imported (the only video decoder used; torchvision is not)."""
    import importlib.util

    return importlib.util.find_spec("av") is not None


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _read_caption_index(root: Path) -> dict[str, str] | None:
    jsonl, table = root / "captions.jsonl", root / "captions.csv"
    if jsonl.is_file():
        rows = []
        for number, line in enumerate(jsonl.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise VideoDataError(f"{jsonl}:{number}: not a JSON object: {error}") from error
            if not isinstance(row, Mapping):
                raise VideoDataError(f"{jsonl}:{number}: expected a JSON object, got {type(row).__name__}")
            rows.append((f"{jsonl}:{number}", row))
        return _index_rows(rows, jsonl)
    if table.is_file():
        with open(table, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [(f"{table}:{number}", row) for number, row in enumerate(reader, start=2)]
        return _index_rows(rows, table)
    return None


def _index_rows(rows: list[tuple[str, Mapping]], path: Path) -> dict[str, str]:
    index: dict[str, str] = {}
    for where, row in rows:
        if row.get("videoid") not in (None, ""):  # WebVid's results_*.csv: videoid, page_dir, name (the caption)
            clips = [str(row["videoid"])]
            if row.get("page_dir") not in (None, ""):
                clips.append(f"{row['page_dir']}/{row['videoid']}")
            caption = next((row[k] for k in (*CAPTION_FIELDS, "name") if row.get(k) is not None), None)
        else:
            clips = [next((row[k] for k in CLIP_FIELDS if row.get(k) not in (None, "")), None)]
            caption = next((row[k] for k in CAPTION_FIELDS if row.get(k) is not None), None)
        if clips[0] is None or caption is None:
            raise VideoDataError(f"{where}: needs a clip field {CLIP_FIELDS} and a caption field {CAPTION_FIELDS} "
                                 f"(or WebVid's videoid and name), got {sorted(row)}")
        for clip in clips:
            index[Path(str(clip)).as_posix().strip("/")] = str(caption).strip()
    if not index:
        raise VideoDataError(f"{path}: no captions in the file")
    return index


def _caption_for(name: str, path: Path, index: dict[str, str] | None) -> str | None:
    if index is not None:
        for key in (name, str(Path(name).with_suffix("")) if path.is_file() else name):
            if key in index:
                return index[key]
        return None
    candidates = [path.with_suffix(".txt") if path.is_file() else path.parent / f"{path.name}.txt"]
    if path.is_dir():
        candidates.append(path / "caption.txt")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8-sig").strip()
    return None


def scan_clips(
    root: str | os.PathLike,
    *,
    videos: Literal["error", "skip"] = "error",
    default_caption: str | None = None,
) -> list[Clip]:
    """All clips under ``root`` with their captions, sorted by name (see the module docstring for the layout).

    Args:
        root: dataset folder.
        videos: what to do with video files when PyAV is not installed: raise (``"error"``) or leave them out.
        default_caption: caption for clips that have none; ``None`` raises instead.

    Raises:
        VideoDataError: no such folder, no clips, undecodable videos, a clip without caption, a malformed index.
    """
    root = Path(root)
    if not root.is_dir():
        raise VideoDataError(f"{root}: dataset folder not found")
    index = _read_caption_index(root)
    found: list[tuple[str, Path, tuple[Path, ...] | None]] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=_natural_key)
        filenames = [f for f in filenames if not f.startswith(".")]
        folder_path = Path(folder)
        images = sorted((f for f in filenames if f.lower().endswith(IMAGE_SUFFIXES)), key=_natural_key)
        if images and folder_path != root:
            found.append((folder_path.relative_to(root).as_posix(), folder_path,
                          tuple(folder_path / f for f in images)))
        for f in filenames:
            if f.lower().endswith(VIDEO_SUFFIXES):
                found.append(((folder_path / f).relative_to(root).as_posix(), folder_path / f, None))
    if images_at_root := [f for f in os.listdir(root) if f.lower().endswith(IMAGE_SUFFIXES)]:
        raise VideoDataError(f"{root}: holds images directly ({images_at_root[0]!r}, ...); put each clip's frames "
                             "in its own folder")
    video_files = [name for name, _, frames in found if frames is None]
    if video_files and not video_decoder_available():
        if videos == "error":
            raise VideoDataError(
                f"{root}: {len(video_files)} video files ({video_files[0]!r}, ...) need PyAV to decode "
                "(pip install av), or extract their frames into one folder per clip; pass videos='skip' to "
                "train on the frame folders only")
        found = [item for item in found if item[2] is not None]
    clips, uncaptioned = [], []
    for name, path, frames in found:
        caption = _caption_for(name, path, index)
        if caption is None:
            if default_caption is None:
                uncaptioned.append(name)
                continue
            caption = default_caption
        clips.append(Clip(name, path, caption, frames))
    if uncaptioned:
        source = "captions.jsonl/captions.csv" if index is not None else "a sidecar <clip>.txt or caption.txt"
        raise VideoDataError(f"{root}: {len(uncaptioned)} clips have no caption in {source}, such as "
                             f"{uncaptioned[:3]}")
    if not clips:
        raise VideoDataError(f"{root}: no clips (frame folders of {IMAGE_SUFFIXES} or videos {VIDEO_SUFFIXES})")
    return sorted(clips, key=lambda c: _natural_key(c.name))


def sample_seed(seed: int, *values: int) -> int:
    """A well-mixed 63-bit seed from ``seed`` and integers (NumPy ``SeedSequence``), for per-sample generators."""
    state = np.random.SeedSequence([int(seed) & (2**63 - 1), *(int(v) for v in values)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def _load_rgb(path: Path) -> Tensor:
    """``[3, H, W]`` float in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except OSError as error:
        raise VideoDataError(f"{path}: unreadable image: {error}") from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def _decode_video(path: Path, indices: Sequence[int]) -> Tensor:
    """Frames ``indices`` (sorted) of a video as ``[F, 3, H, W]`` in [0, 1], decoding up to the last one."""
    import av

    wanted, frames = set(indices), {}
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    frames[i] = torch.from_numpy(frame.to_ndarray(format="rgb24").copy()).permute(2, 0, 1)
                if i >= max(indices):
                    break
    except Exception as error:  # PyAV raises its own error types
        raise VideoDataError(f"{path}: cannot decode video: {error}") from error
    if len(frames) != len(wanted):
        raise VideoDataError(f"{path}: video has fewer than {max(indices) + 1} frames")
    return torch.stack([frames[i] for i in indices]).float() / 255.0


def _video_length(path: Path) -> int:
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for _ in container.decode(video=0))
    except Exception as error:  # PyAV raises its own error types
        raise VideoDataError(f"{path}: cannot open video: {error}") from error


def resize_center_crop(frames: Tensor, size: tuple[int, int]) -> Tensor:
    """Scale ``[F, 3, h, w]`` so it covers ``size = (H, W)``, then crop the centre: ``[F, 3, H, W]``.

    Antialiased bilinear resampling (``torch.nn.functional.interpolate(antialias=True)``).
    """
    height, width = size
    h, w = frames.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        frames = F_.interpolate(frames, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return frames[..., top:top + height, left:left + width].clamp(0.0, 1.0)


class VideoClipDataset(torch.utils.data.Dataset):
    """Fixed-length frame windows of captioned clips, indexed by ``(clip index, sample seed)``.

    ``dataset[(i, s)]`` -> ``{"pixels": [F, 3, H, W] in [-1, 1], "caption": str, "clip": int, "seed": s}``: ``F`` frames
    ``stride`` apart from a start drawn with seed ``s`` (the stride is lowered for clips too short for it), caption
    replaced by ``""`` with probability ``caption_dropout`` (classifier-free guidance training).

    Args:
        clips: from :func:`scan_clips`.
        num_frames: ``F``.
        size: ``(H, W)`` in pixels (multiples of 8 for SD1.x latents).
        stride: frame step within a clip.
        caption_dropout: probability of an empty caption.

    Clips with fewer than ``num_frames`` frames (known for frame folders) are dropped with a warning.
    """

    def __init__(self, clips: Sequence[Clip], num_frames: int, size: tuple[int, int], *, stride: int = 1,
                 caption_dropout: float = 0.0):
        if num_frames < 1 or stride < 1:
            raise ValueError(f"num_frames and stride must be >= 1, got {num_frames}, {stride}")
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (height, width) >= 1, got {size}")
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
        short = [c.name for c in clips if c.frames is not None and len(c.frames) < num_frames]
        if short:
            warnings.warn(f"{len(short)} clips have fewer than {num_frames} frames and are left out, such as "
                          f"{short[:3]}", stacklevel=2)
        self.clips = [c for c in clips if c.frames is None or len(c.frames) >= num_frames]
        if not self.clips:
            raise VideoDataError(f"no clip has {num_frames} frames or more")
        self.num_frames, self.size, self.stride = int(num_frames), (int(size[0]), int(size[1])), int(stride)
        self.caption_dropout = float(caption_dropout)

    def __len__(self) -> int:
        return len(self.clips)

    def fingerprint(self) -> list[str]:
        """Clip names in order: what a resumed run must see again for the same data order."""
        return [c.name for c in self.clips]

    def frame_indices(self, length: int, generator: torch.Generator) -> list[int]:
        """``F`` indices into a clip of ``length`` frames: largest stride <= ``stride`` that fits, random start."""
        stride = max(1, min(self.stride, (length - 1) // max(1, self.num_frames - 1)))
        span = (self.num_frames - 1) * stride + 1
        start = int(torch.randint(0, length - span + 1, (1,), generator=generator))
        return [start + i * stride for i in range(self.num_frames)]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        clip = self.clips[index]
        generator = torch.Generator().manual_seed(int(seed))
        if clip.frames is not None:
            picks = self.frame_indices(len(clip.frames), generator)
            frames = [_load_rgb(clip.frames[i]) for i in picks]
            shapes = {tuple(f.shape) for f in frames}
            if len(shapes) != 1:
                raise VideoDataError(f"{clip.path}: frames of different sizes {sorted(shapes)}")
            pixels = torch.stack(frames)
        else:
            length = _video_length(clip.path)
            if length < self.num_frames:
                raise VideoDataError(f"{clip.path}: {length} frames, fewer than num_frames={self.num_frames}")
            pixels = _decode_video(clip.path, self.frame_indices(length, generator))
        pixels = resize_center_crop(pixels, self.size) * 2.0 - 1.0
        drop = float(torch.rand((), generator=generator)) < self.caption_dropout
        return {"pixels": pixels, "caption": "" if drop else clip.caption, "clip": index, "seed": int(seed)}


def collate_clips(items: Sequence[dict]) -> dict:
    """Batch dataset items: ``pixels [B, F, 3, H, W]``, ``caption list[str]``, ``clip LongTensor [B]``,
    ``seed list[int]`` (each sample's seed, for the trainer's per-sample noise)."""
    return {
        "pixels": torch.stack([item["pixels"] for item in items]),
        "caption": [item["caption"] for item in items],
        "clip": torch.tensor([item["clip"] for item in items], dtype=torch.long),
        "seed": [item["seed"] for item in items],
    }


class StepSampler(torch.utils.data.Sampler):
    """Yields ``(clip index, sample seed)`` for steps ``start_step ... end_step - 1``, this process's share only.

    Use with ``DataLoader(batch_size=global_batch // world_size)``: each batch is then exactly one step's share.
    See the module docstring for the formula; it depends only on ``(seed, step, rank)``.
    """

    def __init__(self, num_clips: int, global_batch: int, *, seed: int, start_step: int, end_step: int,
                 rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by the {world_size} processes")
        if num_clips < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need num_clips >= 1 and 0 <= rank < world_size, got {num_clips}, {rank}, {world_size}")
        self.num_clips, self.global_batch, self.seed = num_clips, global_batch, seed
        self.start_step, self.end_step, self.rank, self.world_size = start_step, end_step, rank, world_size
        self.per_process = global_batch // world_size
        self._perm_epoch, self._perm = -1, None

    def _clip(self, position: int) -> int:
        epoch = position // self.num_clips
        if epoch != self._perm_epoch:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, 0x5EED, epoch))
            self._perm, self._perm_epoch = torch.randperm(self.num_clips, generator=generator).tolist(), epoch
        return self._perm[position % self.num_clips]

    def step_items(self, step: int) -> list[tuple[int, int]]:
        """This process's ``(clip, seed)`` pairs of one step."""
        first = step * self.global_batch + self.rank * self.per_process
        return [(self._clip(p), sample_seed(self.seed, p)) for p in range(first, first + self.per_process)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for step in range(self.start_step, self.end_step):
            yield from self.step_items(step)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.per_process
