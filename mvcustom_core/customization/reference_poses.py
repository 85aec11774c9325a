"""Reference photos, masks and cameras for customization: checks, and three ways to get the poses.

Poses come from a camera file (CO3D, transforms.json, COLMAP, … via
:func:`~mvcustom_core.cameras.formats.load_camera_file`), from an assumed turntable (N photos evenly
around the subject at one elevation), or from the photos themselves by structure-from-motion
(pycolmap, :func:`mvcustom_core.eval.sfm.register_frames`). Whatever the source, the cameras are then
normalized as in CustomDiffusion360 (method.md §4.3): the point closest to all optical axes moves to the
origin and the farthest camera to distance 1, the scale FeatureNeRF's ``[near, far] = [0, 2]`` assumes.

Layouts: images ``[M, 3, H, W]`` in [0, 1], masks ``[M, 1, H, W]`` in [0, 1] (1 = subject).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from mvcustom_core.cameras import CameraSet, load_camera_file, normalize_cameras

__all__ = ["ReferenceInputError", "ReferenceSet", "check_reference_inputs", "reference_cameras_from_file",
           "turntable_reference_cameras", "estimate_reference_cameras", "prepare_reference_set"]


class ReferenceInputError(ValueError):
    """Reference images, masks or cameras that cannot be used; the message names the input."""


class ReferenceSet:
    """Checked reference photos with their masks and normalized cameras.

    Attributes:
        images: ``[M, 3, H, W]`` float32 in [0, 1].
        masks: ``[M, 1, H, W]`` float32 in [0, 1].
        cameras: M cameras at ``(H, W)``, normalized (subject centre at the origin, farthest camera at 1).
        new_from_old: ``[4, 4]`` similarity applied by the normalization.
    """

    def __init__(self, images: Tensor, masks: Tensor, cameras: CameraSet, new_from_old: Tensor) -> None:
        self.images, self.masks, self.cameras, self.new_from_old = images, masks, cameras, new_from_old

    def __len__(self) -> int:
        return self.images.shape[0]


def _stack_images(images: Tensor | Sequence[Tensor], name: str, channels: int | None) -> Tensor:
    if isinstance(images, Tensor):
        items = list(images) if images.ndim == 4 else [images]
    else:
        items = list(images)
    if not items:
        raise ReferenceInputError(f"{name}: no images given")
    first = tuple(items[0].shape[-2:])
    for i, item in enumerate(items):
        if item.ndim == 2:
            item = item[None]
            items[i] = item
        if item.ndim != 3:
            raise ReferenceInputError(f"{name}[{i}]: expected [C, H, W], got shape {tuple(item.shape)}")
        if tuple(item.shape[-2:]) != first:
            raise ReferenceInputError(f"{name}[{i}] is {item.shape[-1]}x{item.shape[-2]} (WxH) but {name}[0] is "
                                      f"{first[1]}x{first[0]}: all reference images must have one size")
        if channels is not None and item.shape[0] < channels:
            raise ReferenceInputError(f"{name}[{i}] has {item.shape[0]} channels, expected {channels}")
    out = torch.stack([x[:channels] if channels else x[:1] for x in items]).float()
    if not torch.isfinite(out).all():
        raise ReferenceInputError(f"{name}: contains NaN or infinite values")
    return out


def check_reference_inputs(images: Tensor | Sequence[Tensor], masks: Tensor | Sequence[Tensor],
                           cameras: CameraSet | None = None) -> tuple[Tensor, Tensor, CameraSet | None]:
    """Validate and stack the reference set.

    Args:
        images: ``[M, 3, H, W]`` or a list of ``[3, H, W]`` in [0, 1].
        masks: ``[M, 1, H, W]`` / ``[M, H, W]`` or a list, same size as the images.
        cameras: M cameras (any image size of the same aspect ratio; rescaled to ``(H, W)``).

    Returns:
        ``(images [M, 3, H, W], masks [M, 1, H, W], cameras at (H, W))``.

    Raises:
        ReferenceInputError: one image only; sizes differ; a mask is empty or covers the whole image;
            the camera count or aspect ratio differs from the images.
    """
    imgs = _stack_images(images, "images", 3)
    if isinstance(masks, Tensor) and masks.ndim == 3 and masks.shape[0] == imgs.shape[0] \
            and tuple(masks.shape[-2:]) == tuple(imgs.shape[-2:]):
        masks = masks[:, None]
    msk = _stack_images(masks, "masks", None)
    m, (h, w) = imgs.shape[0], imgs.shape[-2:]
    if m < 2:
        raise ReferenceInputError(f"images: {m} reference image given; customization needs at least 2 views of "
                                  f"the subject (CustomDiffusion360 uses ~50)")
    if msk.shape[0] != m:
        raise ReferenceInputError(f"masks: {msk.shape[0]} masks for {m} images; give one mask per image")
    if tuple(msk.shape[-2:]) != (h, w):
        raise ReferenceInputError(f"masks are {msk.shape[-1]}x{msk.shape[-2]} but images {w}x{h}: resize them "
                                  f"together")
    coverage = msk.flatten(1).mean(1)
    for i, c in enumerate(coverage.tolist()):
        if c <= 0.0:
            raise ReferenceInputError(f"masks[{i}] is all zero: the subject mask must mark the subject (white)")
        if c >= 1.0:
            raise ReferenceInputError(f"masks[{i}] is all one: the subject mask covers the whole image, so the "
                                      f"background losses have nothing to learn from; mask the subject only")
    if cameras is not None:
        if cameras.num_frames != m:
            raise ReferenceInputError(f"cameras: {cameras.num_frames} cameras for {m} images; give one camera "
                                      f"per reference image")
        ch, cw = cameras.image_size
        if abs(ch * w - cw * h) > max(ch, cw):  # aspect ratios differ by more than a pixel
            raise ReferenceInputError(f"cameras refer to {cw}x{ch} images but the images are {w}x{h} "
                                      f"(another aspect ratio)")
        cameras.validate(where="cameras")
        cameras = cameras.with_image_size((h, w))
    return imgs.clamp(0, 1), msk.clamp(0, 1), cameras


def reference_cameras_from_file(path: str | os.PathLike, image_size: tuple[int, int], *,
                                format: str | None = None, **options) -> CameraSet:
    """Cameras of a pose file at ``image_size`` (``(H, W)`` of the reference photos), not yet normalized."""
    return load_camera_file(path, format=format, image_size=image_size, **options).to(dtype=torch.float32)


def turntable_reference_cameras(n: int, image_size: tuple[int, int], *, elevation_deg: float = 15.0,
                                fov_y_deg: float = 40.0, start_azimuth_deg: float = 0.0,
                                clockwise: bool = False) -> CameraSet:
    """``n`` cameras evenly around the subject at one elevation, in photo order (an assumed turntable).

    The subject sits at the origin; cameras are at distance 1 (already normalized); world up is −y as in
    :func:`mvcustom_core.synthetic.turntable_cameras`. ``clockwise`` reverses the order of azimuths.
    """
    from mvcustom_core.synthetic import turntable_cameras

    if n < 2:
        raise ReferenceInputError(f"turntable: {n} view(s); need at least 2")
    cams = turntable_cameras(n, elevation_deg=elevation_deg, radius=1.0, image_size=tuple(image_size),
                             fov_y_deg=fov_y_deg, start_azimuth_deg=start_azimuth_deg)
    if clockwise:
        order = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(n - 1, 0, -1)])
        cams = cams[order]
    return cams


def estimate_reference_cameras(images: Tensor, *, fov_y_deg: float = 40.0, num_threads: int = 1,
                               min_num_inliers: int = 30) -> CameraSet:
    """Estimate the photos' poses by structure-from-motion (pycolmap SIFT + incremental mapping, CPU).

    Intrinsics are assumed (square pixels, centred principal point, vertical field of view ``fov_y_deg``)
    and kept fixed, as in :func:`mvcustom_core.eval.sfm.register_frames`.

    Raises:
        ReferenceInputError: some photos could not be registered (the message lists them).
    """
    from mvcustom_core.eval.sfm import SfmOptions, register_frames

    h, w = images.shape[-2:]
    f = 0.5 * h / math.tan(math.radians(fov_y_deg) / 2)
    K = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=torch.float64).repeat(images.shape[0], 1, 1)
    result = register_frames(images.float(), K, SfmOptions(num_threads=num_threads,
                                                            min_num_inliers=min_num_inliers))
    if not bool(result.registered.all()):
        failed = [i for i, ok in enumerate(result.registered.tolist()) if not ok]
        raise ReferenceInputError(f"images: structure-from-motion registered {int(result.registered.sum())} of "
                                  f"{images.shape[0]} photos (failed: {failed[:10]}); give cameras from a file "
                                  f"or use the turntable assumption")
    return CameraSet(K=K.float(), c2w=result.c2w.float(), image_size=(h, w))


def prepare_reference_set(images: Tensor | Sequence[Tensor], masks: Tensor | Sequence[Tensor],
                          cameras: CameraSet, *, normalize: bool = True,
                          center: Tensor | None = None) -> ReferenceSet:
    """:func:`check_reference_inputs`, then normalize the cameras (method.md §4.3).

    ``center`` overrides the optical-axes centre (e.g. ``zeros(3)`` for a known turntable).
    """
    imgs, msk, cams = check_reference_inputs(images, masks, cameras)
    cams = cams.to(dtype=torch.float32)
    if normalize:
        cams, new_from_old = normalize_cameras(cams, radius=1.0, center=center)
    else:
        new_from_old = torch.eye(4)
    return ReferenceSet(imgs, msk, cams, new_from_old)
