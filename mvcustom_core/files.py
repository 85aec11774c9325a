"""Atomic file writes and picture output, shared by every module that writes files.

A write goes to a temporary file in the destination folder and is moved into place with
``os.replace``, so a reader (or a crash) never sees a half-written file and an old file survives a
failed write.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "save_png", "image_grid", "colorize"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary path beside ``path``, then move it into place.

    For writers that want a file name (``torch.save``, ``safetensors.torch.save_file``, PIL,
    matplotlib). The temporary name keeps ``path``'s suffix, since writers may pick the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` (``\\n`` line endings on every platform) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _to_uint8_hwc(image: Tensor) -> np.ndarray:
    """``[3|1, H, W]`` or ``[H, W, 3|1]`` or ``[H, W]`` floats in [0, 1] → ``uint8 [H, W, C]``."""
    x = image.detach().float().cpu()
    if x.ndim == 2:
        x = x[..., None]
    elif x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = x.permute(1, 2, 0)
    if x.ndim != 3 or x.shape[-1] not in (1, 3):
        raise ValueError(f"image must be [3, H, W], [H, W, 3] or [H, W], got {tuple(image.shape)}")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def save_png(image: Tensor, path: str | os.PathLike) -> Path:
    """Save a float image in [0, 1] (layouts of :func:`_to_uint8_hwc`) as PNG, atomically."""
    from PIL import Image

    array = _to_uint8_hwc(image)
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def image_grid(images: Tensor, columns: int | None = None, pad: int = 2, value: float = 1.0) -> Tensor:
    """Tile ``[N, C, H, W]`` images into one ``[C, rows·(H+pad)-pad, cols·(W+pad)-pad]`` picture."""
    n, c, h, w = images.shape
    columns = columns or n
    rows = -(-n // columns)
    grid = images.new_full((c, rows * (h + pad) - pad, columns * (w + pad) - pad), value)
    for i in range(n):
        r, q = divmod(i, columns)
        grid[:, r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = images[i]
    return grid


def colorize(values: Tensor, valid: Tensor | None = None, colormap: str = "turbo") -> Tensor:
    """``[N, 1, H, W]`` scalars → ``[N, 3, H, W]`` colours, min–max normalised over ``valid`` pixels
    (invalid pixels black)."""
    from matplotlib import colormaps

    valid = torch.isfinite(values) if valid is None else valid & torch.isfinite(values)
    finite = values[valid]
    lo, hi = (finite.min(), finite.max()) if finite.numel() else (values.new_tensor(0.0), values.new_tensor(1.0))
    norm = ((values - lo) / (hi - lo).clamp_min(1e-12)).where(valid, torch.zeros_like(values))
    lut = torch.from_numpy(colormaps[colormap](np.linspace(0, 1, 256))[:, :3]).to(values.dtype)
    rgb = lut[(norm[:, 0] * 255).round().long().clamp(0, 255)].permute(0, 3, 1, 2)
    return rgb * valid.to(values.dtype)
