"""CustomDiffusion360 normalization: optical-axis intersection recovers known points; radius; degenerate sets."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.cameras.normalize import DegenerateCamerasError, normalize_cameras, optical_axes_intersection

F64 = torch.float64


def _cams_looking_at(eye, target):
    return CameraSet.from_fov(look_at(eye, target), 50.0, (16, 16))


def test_cameras_looking_at_a_point_recover_it(generator):
    target = torch.tensor([1.5, -2.0, 0.25], dtype=F64)
    eye = torch.randn(6, 3, generator=generator, dtype=F64) * 4 + target
    p = optical_axes_intersection(_cams_looking_at(eye, target))
    torch.testing.assert_close(p, target, rtol=0, atol=1e-12)


def test_two_skew_axes_give_the_midpoint_of_their_common_perpendicular():
    # Axis 1: through (0,0,0) along x (camera at (-5,0,0)); axis 2: through (0,0,1) along y (camera at (0,-5,1)).
    # The common perpendicular joins (0,0,0) and (0,0,1); the least-squares point is its midpoint (0,0,0.5).
    eye = torch.tensor([[-5.0, 0, 0], [0, -5.0, 1]], dtype=F64)
    target = torch.tensor([[0.0, 0, 0], [0, 0, 1]], dtype=F64)
    cams = CameraSet.from_fov(look_at(eye, target, up=torch.tensor([0, 0, 1.0], dtype=F64)), 50.0, (8, 8))
    torch.testing.assert_close(optical_axes_intersection(cams), torch.tensor([0, 0, 0.5], dtype=F64))


@pytest.mark.parametrize("radius", [1.0, 2.5])
def test_normalize_moves_centre_to_origin_and_scales_to_radius(generator, radius):
    target = torch.tensor([3.0, 1.0, -2.0], dtype=F64)
    eye = torch.randn(5, 3, generator=generator, dtype=F64) * 2 + target
    cams = _cams_looking_at(eye, target)
    out, new_from_old = normalize_cameras(cams, radius=radius)
    dist_old = (eye - target).norm(dim=-1)
    s = radius / dist_old.max()
    torch.testing.assert_close(out.centers, (eye - target) * s, rtol=0, atol=1e-12)
    assert float(out.centers.norm(dim=-1).max()) == pytest.approx(radius, rel=1e-12)
    torch.testing.assert_close(out.rotations, cams.rotations)
    torch.testing.assert_close(out.K, cams.K)
    torch.testing.assert_close(optical_axes_intersection(out), torch.zeros(3, dtype=F64), rtol=0, atol=1e-12)
    # The returned similarity maps old scene points the same way: the old target lands on the origin and
    # projections of transformed points are unchanged.
    pts = torch.randn(7, 3, generator=generator, dtype=F64) + target
    pts_new = pts @ new_from_old[:3, :3].T + new_from_old[:3, 3]
    torch.testing.assert_close(new_from_old[:3, :3] @ target + new_from_old[:3, 3], torch.zeros(3, dtype=F64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(out.project(pts_new)[0], cams.project(pts)[0])


def test_parallel_axes_raise():
    eye = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=F64)
    c2w = look_at(eye, eye + torch.tensor([0, 0, 1.0], dtype=F64))
    with pytest.raises(DegenerateCamerasError, match="optical axes are parallel"):
        optical_axes_intersection(CameraSet.from_fov(c2w, 50.0, (8, 8)))


def test_single_camera_and_cameras_at_centre_raise():
    one = _cams_looking_at(torch.tensor([[0.0, 0, 5]], dtype=F64), torch.zeros(3, dtype=F64))
    with pytest.raises(DegenerateCamerasError, match="at least two cameras"):
        normalize_cameras(one)
    with pytest.raises(DegenerateCamerasError, match="every camera sits at the scene centre"):
        normalize_cameras(one, center=torch.tensor([0.0, 0, 5]))
    with pytest.raises(ValueError, match="radius must be positive"):
        normalize_cameras(one, radius=0.0)


def test_align_up_turns_a_z_up_orbit_into_the_packs_minus_y_up():
    # Eight cameras on a circle of radius 3 at height 2 in a z-up world, looking at (1, 1, 0). By symmetry their
    # mean up is world +z; after alignment it must be -y, and the cameras share one height (same y).
    a = torch.arange(8, dtype=F64) * (2 * torch.pi / 8)
    target = torch.tensor([1.0, 1.0, 0.0], dtype=F64)
    eye = torch.stack([3 * torch.cos(a), 3 * torch.sin(a), torch.full_like(a, 2.0)], dim=-1) + target
    cams = CameraSet.from_fov(look_at(eye, target, up=torch.tensor([0, 0, 1.0], dtype=F64)), 40.0, (8, 8))
    out, new_from_old = normalize_cameras(cams, align_up=True)
    mean_up = -out.c2w[:, :3, 1].mean(dim=0)
    torch.testing.assert_close(mean_up / mean_up.norm(), torch.tensor([0, -1.0, 0], dtype=F64), rtol=0, atol=1e-12)
    # Cameras above the target (z = 2) end up above it in the new world: y = -2/sqrt(13), all equal.
    torch.testing.assert_close(out.centers[:, 1], torch.full((8,), -2 / 13 ** 0.5, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.centers.norm(dim=-1), torch.ones(8, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(optical_axes_intersection(out), torch.zeros(3, dtype=F64), rtol=0, atol=1e-12)
    pts = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64) + target
    pts_new = pts @ new_from_old[:3, :3].T + new_from_old[:3, 3]
    torch.testing.assert_close(out.project(pts_new)[0], cams.project(pts)[0])


def test_align_up_of_plus_y_up_is_a_half_turn_about_x():
    eye = torch.tensor([[0.0, 0, 5], [5, 0, 0], [0, 0, -5]], dtype=F64)
    cams = _cams_looking_at(eye, torch.zeros(3, dtype=F64))  # default up = -y already
    torch.testing.assert_close(normalize_cameras(cams, align_up=True)[0].c2w, normalize_cameras(cams)[0].c2w)
    flipped = CameraSet.from_fov(look_at(eye, torch.zeros(3, dtype=F64), up=torch.tensor([0, 1.0, 0], dtype=F64)),
                                 50.0, (16, 16))
    out, new_from_old = normalize_cameras(flipped, align_up=True)
    torch.testing.assert_close(new_from_old[:3, :3], torch.diag(torch.tensor([1, -1.0, -1], dtype=F64)) / 5)
