"""Shared pieces of the file-format edge: the error type, atomic writes, number parsing, validation."""

from __future__ import annotations

from typing import Sequence

import torch

from mvcustom_core.cameras.camera_set import CameraSet
from mvcustom_core.files import atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported)

__all__ = ["PoseFileError", "atomic_write_bytes", "atomic_write_text", "is_number", "parse_numbers",
           "validate_frames", "nearest_rotation", "cameras_from_file_matrices", "rescale_to_common_size"]

# Rotations in text files carry ~9 decimals; anything looser than this is a broken file, not rounding.
ROTATION_ATOL = 1e-4


class PoseFileError(ValueError):
    """A camera file (or CAMERACTRL_POSES value) that cannot be read; the message names file and line/key."""


def is_number(tok: str) -> bool:
    """Whether ``tok`` parses as a float (used to tell data lines from headers)."""
    try:
        float(tok)
    except ValueError:
        return False
    return True


def parse_numbers(tokens: Sequence[object], where: str) -> list[float]:
    """Floats from text tokens or JSON values; ``where`` (file and line/key) goes into the error."""
    values = []
    for i, tok in enumerate(tokens):
        if isinstance(tok, bool) or not isinstance(tok, (int, float, str)):
            raise PoseFileError(f"{where}: value {i} is {tok!r}, expected a number")
        try:
            values.append(float(tok))
        except ValueError:
            raise PoseFileError(f"{where}: value {i} is {tok!r}, expected a number") from None
    return values


def validate_frames(cams: CameraSet, source: str, locations: Sequence[str]) -> CameraSet:
    """Run :meth:`CameraSet.validate` and, on failure, name the file and the first bad frame's location.

    Args:
        cams: the cameras just read.
        source: the file (or value) name.
        locations: one entry per frame, e.g. ``"line 5"`` or ``"frames[3]"``.
    """
    try:
        return cams.validate(where=source, atol=ROTATION_ATOL)
    except ValueError:
        pass
    for i, loc in enumerate(locations):
        where = f"{source}: {loc}"
        try:
            cams[i].validate(where=where, atol=ROTATION_ATOL)
        except ValueError as e:
            # validate() numbers frames within the one-frame subset; the location replaces that.
            raise PoseFileError(str(e).replace(f"{where}: frame 0 ", f"{where} ", 1)) from e
    raise AssertionError("validate failed on the set but on no single frame")  # pragma: no cover


def nearest_rotation(R: torch.Tensor) -> torch.Tensor:
    """``[F, 3, 3]`` nearest rotation (Frobenius norm) to each ``[F, 3, 3]`` block: ``U Vᵀ`` of its SVD.

    For blocks that are already rotations up to rounding (det > 0), this only removes the rounding.
    """
    u, _, vh = torch.linalg.svd(R)
    return u @ vh


def cameras_from_file_matrices(K: torch.Tensor, image_size: tuple[int, int], source: str,
                               locations: Sequence[str], *, w2c: torch.Tensor | None = None,
                               c2w: torch.Tensor | None = None) -> CameraSet:
    """Cameras from a file's extrinsics, validated, with rotations snapped to exact rotations.

    Files store rotations to a few decimals (RealEstate10K: 9), so ``RᵀR ≠ I`` by ~1e-9 while
    :class:`CameraSet` assumes a rigid ``c2w`` (its ``w2c`` is ``[Rᵀ | −Rᵀt]``). The raw cameras are validated
    first (a broken file names ``locations[f]``), then each rotation is replaced by its nearest rotation on the
    side the file stores, so that side's translation survives a round trip exactly.

    Args:
        K: ``[F, 3, 3]`` pixel intrinsics.
        image_size: ``(H, W)``.
        source, locations: the file and one location per frame (``"line 5"``) for errors.
        w2c, c2w: exactly one, ``[F, 3, 4]`` or ``[F, 4, 4]``, as stored in the file (OpenCV axes).
    """
    if (w2c is None) == (c2w is None):
        raise ValueError("pass exactly one of w2c and c2w")
    stored = w2c if w2c is not None else c2w
    m = torch.eye(4, dtype=stored.dtype, device=stored.device).repeat(stored.shape[0], 1, 1)
    m[:, :3, :] = stored[:, :3, :]
    if w2c is not None:
        raw = CameraSet.from_w2c(K, m, image_size)
    else:  # a stored bottom row is checked too, then replaced by an exact [0, 0, 0, 1]
        raw = CameraSet(K=K, c2w=stored if stored.shape[-2] == 4 else m, image_size=image_size)
    validate_frames(raw, source, locations)
    m[:, :3, :3] = nearest_rotation(m[:, :3, :3])
    return CameraSet.from_w2c(K, m, image_size) if w2c is not None else CameraSet(K=K, c2w=m, image_size=image_size)


def rescale_to_common_size(K: torch.Tensor, sizes: Sequence[tuple[int, int]],
                           image_size: tuple[int, int] | None, source: str,
                           locations: Sequence[str]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Bring per-frame pixel intrinsics to one image size, as a :class:`CameraSet` needs.

    Args:
        K: ``[F, 3, 3]`` pixel intrinsics, frame f for an image of ``sizes[f] = (H, W)``.
        image_size: target ``(H, W)``; ``None`` requires every frame to have the same size.

    Returns:
        ``K`` rescaled per axis (fx, cx by W'/W; fy, cy by H'/H) and the common size.
    """
    if image_size is None:
        distinct = sorted(set(sizes))
        if len(distinct) > 1:
            first = sizes[0]
            other = next(i for i, s in enumerate(sizes) if s != first)
            raise PoseFileError(f"{source}: frames have different image sizes ({locations[0]}: {first}, "
                                f"{locations[other]}: {sizes[other]}); pass image_size=(H, W) to rescale "
                                "them to one size")
        return K, sizes[0]
    h, w = int(image_size[0]), int(image_size[1])
    size_t = torch.tensor(sizes, dtype=K.dtype)  # [F, 2] (H, W)
    scale = torch.stack([w / size_t[:, 1], h / size_t[:, 0], torch.ones_like(size_t[:, 0])], dim=-1)
    return K * scale[:, :, None], (h, w)
