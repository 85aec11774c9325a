"""Turntable camera paths around the synthetic subject."""

from __future__ import annotations

import math

import torch

from mvcustom_core.cameras import CameraSet, look_at

__all__ = ["turntable_cameras"]


def turntable_cameras(n: int, *, elevation_deg: float = 20.0, radius: float = 2.5,
                      image_size: tuple[int, int] = (64, 64), fov_y_deg: float = 40.0,
                      start_azimuth_deg: float = 0.0, target: tuple[float, float, float] = (0.0, 0.0, 0.0),
                      dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> CameraSet:
    """``n`` cameras evenly spaced in azimuth on a circle around ``target``, all looking at it.

    Convention: world up is ``-y``. Camera ``i`` sits at azimuth ``a = start + 360 i / n`` degrees and
    elevation ``e`` (``e > 0``: above the target, i.e. at smaller world y):

        eye = target + radius * (cos e sin a, -sin e, -cos e cos a)

    so azimuth 0 is on the ``-z`` side looking along ``+z`` and azimuth 90 on the ``+x`` side. Images
    are upright (image up = world up as far as the view allows), square-pixel, centred principal point.

    Args:
        n: number of cameras (``>= 1``).
        elevation_deg: in (-90, 90).
        radius: distance from ``target`` (> 0).
        image_size: ``(H, W)``.
        fov_y_deg: vertical field of view.

    Returns:
        A :class:`CameraSet` of ``n`` frames in ``dtype`` on ``device``.

    Example:
        >>> cams = turntable_cameras(4, elevation_deg=0.0, radius=2.0)
        >>> [round(float(x), 6) + 0.0 for x in cams.centers[1]]  # azimuth 90 degrees: on the +x axis
        [2.0, 0.0, 0.0]
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not -90.0 < elevation_deg < 90.0:
        raise ValueError(f"elevation_deg must lie in (-90, 90), got {elevation_deg}")
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    az = torch.deg2rad(torch.tensor(start_azimuth_deg, dtype=torch.float64)
                       + 360.0 * torch.arange(n, dtype=torch.float64) / n)
    el = math.radians(elevation_deg)
    offset = torch.stack([math.cos(el) * torch.sin(az), torch.full_like(az, -math.sin(el)),
                          -math.cos(el) * torch.cos(az)], dim=-1)
    centre = torch.tensor(target, dtype=torch.float64)
    c2w = look_at(centre + radius * offset, centre)
    return CameraSet.from_fov(c2w, fov_y_deg, image_size).to(device=device, dtype=dtype)
