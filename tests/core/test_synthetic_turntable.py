"""Turntable cameras: positions, orientation and framing from the defining formula."""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.synthetic import turntable_cameras

D = torch.float64


def test_turntable_positions_follow_the_formula_and_cameras_look_at_the_target():
    n, el, r = 6, 25.0, 2.3
    target = (0.2, -0.1, 0.4)
    cams = turntable_cameras(n, elevation_deg=el, radius=r, image_size=(30, 40), fov_y_deg=35.0,
                             start_azimuth_deg=10.0, target=target, dtype=D).validate()
    t = torch.tensor(target, dtype=D)
    a = torch.deg2rad(10.0 + 360.0 * torch.arange(n, dtype=D) / n)
    e = math.radians(el)
    expected = t + r * torch.stack([math.cos(e) * a.sin(), torch.full_like(a, -math.sin(e)),
                                    -math.cos(e) * a.cos()], dim=-1)
    torch.testing.assert_close(cams.centers, expected, rtol=0, atol=1e-12)
    # The target projects to the principal point at distance r.
    uv, z = cams.project(t[None].expand(n, 1, 3))
    torch.testing.assert_close(uv[:, 0], torch.tensor([[20.0, 15.0]], dtype=D).expand(n, 2), rtol=0,
                               atol=1e-9)
    torch.testing.assert_close(z[:, 0], torch.full((n,), r, dtype=D), rtol=0, atol=1e-12)
    # Upright: the image x axis is horizontal and image "down" points to world +y (world up is -y).
    assert cams.rotations[:, 1, 0].abs().max() < 1e-12
    assert (cams.rotations[:, 1, 1] > 0).all()
    torch.testing.assert_close(cams.fov_y_deg(), torch.full((n,), 35.0, dtype=D))


def test_turntable_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n must"):
        turntable_cameras(0)
    with pytest.raises(ValueError, match="elevation"):
        turntable_cameras(2, elevation_deg=90.0)
    with pytest.raises(ValueError, match="radius"):
        turntable_cameras(2, radius=0.0)
