"""CameraSet: the convention pinned on hand-derivable cameras."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mvcustom_core.cameras import CameraError, CameraSet, intrinsics_matrix, look_at

D = torch.float64


def _identity_cams(n=1, size=(4, 6), f=2.0):
    K = intrinsics_matrix(torch.full((n,), f, dtype=D), torch.full((n,), f, dtype=D), size[1] / 2, size[0] / 2)
    return CameraSet(K=K, c2w=torch.eye(4, dtype=D).repeat(n, 1, 1), image_size=size)


def test_convention_point_on_axis_projects_to_principal_point():
    cams = _identity_cams()
    uv, z = cams.project(torch.tensor([[0.0, 0.0, 3.0]], dtype=D))
    assert uv[0, 0].tolist() == [3.0, 2.0]  # (W/2, H/2)
    assert z[0, 0].item() == 3.0


def test_convention_opencv_axes_x_right_y_down():
    cams = _identity_cams()
    uv, _ = cams.project(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 2.0]], dtype=D))
    # f=2, z=2: +x moves right by one focal unit, +y moves down.
    assert uv[0].tolist() == [[4.0, 2.0], [3.0, 3.0]]


def test_convention_pixel_centres_are_half_integers():
    cams = _identity_cams(size=(2, 3))
    centres = cams.pixel_centers()
    assert centres[0, 0].tolist() == [0.5, 0.5]
    assert centres[1, 2].tolist() == [2.5, 1.5]


def test_project_unproject_round_trip(generator):
    c2w = look_at(torch.randn(5, 3, dtype=D, generator=generator) * 3, torch.zeros(3, dtype=D))
    cams = CameraSet.from_fov(c2w, 50.0, (32, 48)).validate()
    uv = torch.rand(5, 7, 2, dtype=D, generator=generator) * 32
    depth = torch.rand(5, 7, dtype=D, generator=generator) + 0.5
    X = cams.unproject(uv, depth)
    uv2, depth2 = cams.project(X)
    torch.testing.assert_close(uv2, uv)
    torch.testing.assert_close(depth2, depth)


def test_w2c_is_inverse_of_c2w(generator):
    c2w = look_at(torch.randn(4, 3, dtype=D, generator=generator) + 3, torch.zeros(3, dtype=D))
    cams = CameraSet.from_fov(c2w, 40.0, (8, 8))
    torch.testing.assert_close(cams.w2c @ cams.c2w, torch.eye(4, dtype=D).expand(4, 4, 4))


def test_look_at_points_forward_at_target_and_keeps_up_up():
    eye = torch.tensor([[3.0, -1.0, 0.5]], dtype=D)
    c2w = look_at(eye, torch.zeros(3, dtype=D))
    fwd = c2w[0, :3, 2]
    torch.testing.assert_close(fwd, -eye[0] / eye[0].norm())
    # A point above the target (world -y is up by default) projects above the image centre.
    cams = CameraSet.from_fov(c2w, 60.0, (64, 64))
    uv, _ = cams.project(torch.tensor([[0.0, -0.1, 0.0]], dtype=D))
    assert uv[0, 0, 1] < 32


def test_fov_matches_focal():
    cams = CameraSet.from_fov(torch.eye(4, dtype=D)[None], 90.0, (100, 200))
    assert math.isclose(cams.K[0, 1, 1].item(), 50.0)
    assert math.isclose(cams.fov_y_deg()[0].item(), 90.0)


def test_with_image_size_keeps_projection_of_a_point_in_relative_coords():
    cams = _identity_cams(size=(4, 6))
    half = cams.with_image_size((2, 3))
    X = torch.tensor([[0.3, -0.2, 2.0]], dtype=D)
    uv, _ = cams.project(X)
    uvh, _ = half.project(X)
    torch.testing.assert_close(uvh, uv / 2)


def test_ray_directions_are_unit_and_centre_ray_is_forward():
    c2w = look_at(torch.tensor([[0.0, 0.0, -2.0]], dtype=D), torch.zeros(3, dtype=D))
    cams = CameraSet.from_fov(c2w, 60.0, (3, 3))
    d = cams.ray_directions()
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(1, 3, 3, dtype=D))
    torch.testing.assert_close(d[0, 1, 1], torch.tensor([0.0, 0.0, 1.0], dtype=D))


def test_getitem_and_concat():
    cams = _identity_cams(n=4)
    assert len(cams[1]) == 1 and len(cams[1:3]) == 2 and len(cams[-1]) == 1
    assert len(CameraSet.concat([cams, cams[:2]])) == 6
    with pytest.raises(CameraError, match="different image sizes"):
        CameraSet.concat([cams, _identity_cams(size=(8, 8))])



@pytest.mark.parametrize("index, frame", [(1, 1), (-1, 3), (-2, 2), (np.int64(2), 2), (torch.tensor(1), 1),
                                          (torch.tensor(-1), 3)])
def test_getitem_integer_like_keeps_the_frame_axis_and_picks_that_frame(index, frame):
    # Four distinct cameras (centres x = 0..3, focal 10..13), so the test sees which frame was picked.
    c2w = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    c2w[:, 0, 3] = torch.arange(4, dtype=torch.float64)
    K = intrinsics_matrix(10.0 + torch.arange(4, dtype=torch.float64), torch.full((4,), 10.0, dtype=torch.float64),
                          8.0, 8.0)
    cams = CameraSet(K=K, c2w=c2w, image_size=(16, 16))
    sub = cams[index]
    assert sub.num_frames == 1
    torch.testing.assert_close(sub.c2w[0], c2w[frame], rtol=0, atol=0)
    torch.testing.assert_close(sub.K[0], K[frame], rtol=0, atol=0)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda K, c2w: K.__setitem__((1, 0, 0), 0.0), "frame 1 has a non-positive focal"),
        (lambda K, c2w: c2w.__setitem__((2, 0, 0), 1.5), "frame 2 rotation is not orthonormal"),
        (lambda K, c2w: c2w.__setitem__((0, 0, 0), -1.0), "frame 0 rotation"),  # reflection, det = -1
        (lambda K, c2w: c2w.__setitem__((3, 1, 3), float("nan")), "non-finite"),
        (lambda K, c2w: c2w.__setitem__((1, 3, 0), 0.2), "bottom row"),
    ],
)
def test_validate_names_the_problem(mutate, message):
    cams = _identity_cams(n=4)
    K, c2w = cams.K.clone(), cams.c2w.clone()
    mutate(K, c2w)
    with pytest.raises((CameraError, ValueError), match=message):
        CameraSet(K=K, c2w=c2w, image_size=(4, 6)).validate(where="test")


def test_construction_rejects_bad_shapes_and_sizes():
    with pytest.raises(ValueError, match="K must have shape"):
        CameraSet(K=torch.eye(3), c2w=torch.eye(4)[None], image_size=(4, 4))
    with pytest.raises(CameraError, match="frames"):
        CameraSet(K=torch.eye(3).repeat(2, 1, 1), c2w=torch.eye(4)[None], image_size=(4, 4))
    with pytest.raises(CameraError, match="positive"):
        CameraSet(K=torch.eye(3)[None], c2w=torch.eye(4)[None], image_size=(0, 4))
