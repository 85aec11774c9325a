"""Atomic file writes, user-named paths kept inside their folder, and picture output.

A write goes to a temporary file in the destination folder and is moved into place with
``os.replace``, so a reader (or a crash) never sees a half-written file and an old file survives a
failed write. A write may also refuse to replace an existing file (``replace=False``, or a predicate
that says whether the file there may be replaced).

A name a user typed (a node input, a command-line argument) is turned into a path by
:func:`resolve_inside` (reading) or checked by :func:`plain_file_name` (writing), which accept only a
relative name that stays inside its folder.
"""

from __future__ import annotations

import errno
import io
import ntpath
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "resolve_inside", "plain_file_name",
           "is_inside", "save_png", "image_grid", "colorize"]

# How a caller says whether an existing file may be replaced: always (True), never (False), or by asking.
Replace = bool | Callable[[Path], bool]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, replace: Replace = True) -> Path:
    """Call ``write(tmp_path)`` on a temporary path beside ``path``, then move it into place.

    For writers that want a file name (``torch.save``, ``safetensors.torch.save_file``, PIL,
    matplotlib). The temporary name keeps ``path``'s suffix, since writers may pick the format from it.

    ``replace``: whether a file already at ``path`` may be replaced: ``True``, ``False``, or a function of
    that file's path (asked only when one exists). A refused replacement raises ``FileExistsError`` and
    leaves the existing file untouched; a path that must not exist is claimed with ``os.link``, which
    fails if a file appeared there since, so two writers never overwrite each other.
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
        if replace is True or (os.path.lexists(path) and callable(replace) and replace(path)):
            os.replace(tmp, path)
        else:
            _link_new(Path(tmp), path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if nothing is there (``FileExistsError`` otherwise)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "a file of this name exists and may not be replaced", str(path)) from None
    except OSError:  # a file system without hard links: check, then rename (not race-free)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "a file of this name exists and may not be replaced",
                                  str(path)) from None
        os.replace(tmp, path)


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path``, with every symbolic link resolved, lies in ``root`` (links resolved too) or is it."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    try:
        return os.path.commonpath([real, base]) == base
    except ValueError:  # different drives (Windows)
        return False


def _relative_parts(name: object) -> list[str] | None:
    """The components of a relative ``name`` (``/`` or ``\\`` separated), or None when it is not one: not a
    string, empty, with a NUL or other control character, absolute (``/x``, ``\\x``, ``C:x``, ``//server``),
    or with a ``..`` component."""
    if not isinstance(name, str) or not name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return None
    if name.startswith(("/", "\\")) or ntpath.splitdrive(name)[0] or os.path.isabs(name):
        return None
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return parts


def resolve_inside(name: str, roots: Iterable[str | os.PathLike],
                   kind: Literal["file", "dir", "any"] = "file") -> Path | None:
    """The path of the relative ``name`` in the first of ``roots`` that holds it, or None.

    None (one answer, so a caller cannot tell a remote user *why*) when ``name`` is not a plain relative
    name (see :func:`_relative_parts`), when no root holds a ``kind`` of that name, or when it lies outside
    its root once symbolic links are resolved; for a folder, also when an entry of it links outside
    (its files are what gets read). A root that is itself a link is fine: its target is the folder.
    """
    parts = _relative_parts(name)
    if parts is None:
        return None
    for root in roots:
        path = Path(root, *parts)
        if not is_inside(path, root):
            continue
        if kind in ("file", "any") and path.is_file():
            return path
        if kind in ("dir", "any") and path.is_dir() and all(is_inside(entry, root) for entry in path.iterdir()):
            return path
    return None


# Windows file naming rules (Microsoft, "Naming Files, Paths, and Namespaces"): these characters are refused or
# mean something else (':' names an NTFS stream of another file), and these device names stay devices in every
# folder, with any suffix ("CON.safetensors").
_WINDOWS_RESERVED_CHARS = frozenset('<>:"|?*')
_WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10))})


def plain_file_name(name: object, max_bytes: int = 200) -> str | None:
    """``name`` if it can be a file name on its own in any folder on any system (no folder part, no ``..``, no
    NUL or control character, none of Windows' ``<>:"|?*``, not a Windows device name such as ``CON`` or
    ``nul.x``, not hidden, no trailing dot or space, at most ``max_bytes`` UTF-8 bytes), else None."""
    if not isinstance(name, str):
        return None
    parts = _relative_parts(name)
    if parts != [name] or name.startswith(".") or name.rstrip(". ") != name or len(name.encode()) > max_bytes:
        return None
    if _WINDOWS_RESERVED_CHARS & set(name) or name.split(".")[0].rstrip().upper() in _WINDOWS_DEVICES:
        return None
    return name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, replace: Replace = True) -> Path:
    """Write ``data`` to ``path`` atomically (``replace`` as in :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), replace=replace)


def atomic_write_text(path: str | os.PathLike, text: str, *, replace: Replace = True) -> Path:
    """Write UTF-8 ``text`` (``\\n`` line endings on every platform) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), replace=replace)


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
