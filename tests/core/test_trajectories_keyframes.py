"""Keyframed paths (SLERP + Catmull-Rom) and combining trajectories, against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.trajectories import (
    TrajectoryError,
    catmull_rom,
    compose,
    concatenate,
    keyframe_trajectory,
    make_trajectory,
    resample,
    reverse,
    slerp_rotations,
)
from mvcustom_core.trajectories.presets import orbit_position

F64 = torch.float64


def _rot(axis, angle_deg) -> torch.Tensor:
    axis = torch.tensor(axis, dtype=F64)
    return axis_angle_to_rotation_matrix((axis / axis.norm() * math.radians(angle_deg))[None])[0]


def _keyframes(generator) -> CameraSet:
    eye = torch.randn(4, 3, generator=generator, dtype=F64) * 2
    c2w = look_at(eye, torch.zeros(3, dtype=F64))
    cams = CameraSet.from_fov(c2w, 50.0, (32, 48))
    K = cams.K.clone()
    K[:, 0, 0] *= torch.tensor([1.0, 1.5, 2.0, 0.8], dtype=F64)
    return CameraSet(K=K, c2w=c2w, image_size=(32, 48))


def test_keyframes_are_hit_exactly_with_uneven_times(generator):
    keys = _keyframes(generator)
    times = torch.tensor([0.0, 1.0, 3.0, 4.0], dtype=F64)
    out = keyframe_trajectory(keys, 9, times=times)  # samples 0, 0.5, ..., 4 hit every key time
    for k, i in enumerate([0, 2, 6, 8]):
        assert torch.equal(out.c2w[i], keys.c2w[k]) and torch.equal(out.K[i], keys.K[k])
    out.validate()


def test_slerp_midpoint_is_the_half_rotation_and_takes_the_short_arc():
    r0 = torch.eye(3, dtype=F64).expand(2, 3, 3)
    r1 = torch.stack([_rot((1, 2, 3), 120.0), _rot((0, 1, 0), 270.0)])  # 270° about y is -90°
    mid = slerp_rotations(r0, r1, torch.tensor([0.5, 0.5], dtype=F64))
    torch.testing.assert_close(mid[0], _rot((1, 2, 3), 60.0))
    torch.testing.assert_close(mid[1], _rot((0, 1, 0), -45.0))
    # from a non-identity start: R0 · exp(u log(R0ᵀ R1))
    a = _rot((1, 0, 0), 30.0)
    torch.testing.assert_close(slerp_rotations(a[None], (a @ _rot((0, 0, 1), 80.0))[None],
                                               torch.tensor([0.25], dtype=F64))[0], a @ _rot((0, 0, 1), 20.0))


def test_keyframe_rotations_between_orbit_keys_are_the_orbit_rotations():
    # Neighbouring look-at cameras on a horizontal circle differ by a turn about world up, so SLERP
    # lands exactly on the look-at camera at the middle azimuth.
    keys = make_trajectory("orbit", 6, span_deg=150.0, elevation_deg=25.0)
    out = keyframe_trajectory(keys, 11)
    az = torch.linspace(0.0, 150.0, 11, dtype=F64)
    eye = orbit_position(torch.zeros(3, dtype=F64), torch.ones(11, dtype=F64), az, torch.full_like(az, 25.0))
    torch.testing.assert_close(out.rotations, look_at(eye, torch.zeros(3, dtype=F64))[:, :3, :3])


def test_catmull_rom_is_c1_with_central_difference_tangents(generator):
    points = torch.randn(5, 3, generator=generator, dtype=F64)
    times = torch.tensor([0.0, 0.7, 1.5, 3.0, 3.4], dtype=F64)
    eps = 1e-7  # one-sided error ~ eps·|p''|/2, far under atol
    for k in range(1, 4):
        t = times[k]
        left = (catmull_rom(points, times, (t - torch.tensor([0.0, eps], dtype=F64)))).diff(dim=0)[0] / -eps
        right = (catmull_rom(points, times, (t + torch.tensor([0.0, eps], dtype=F64)))).diff(dim=0)[0] / eps
        expected = (points[k + 1] - points[k - 1]) / (times[k + 1] - times[k - 1])
        torch.testing.assert_close(left, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(right, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(catmull_rom(points, times, times), points)


def test_catmull_rom_of_uniform_collinear_knots_is_linear_motion():
    points = torch.tensor([[0.0, 0, 0], [1, 2, 0], [2, 4, 0], [3, 6, 0]], dtype=F64)
    s = torch.linspace(0, 3, 13, dtype=F64)
    torch.testing.assert_close(catmull_rom(points, torch.arange(4, dtype=F64), s), s[:, None] * points[1])


def test_intrinsics_interpolate_linearly_and_linear_positions_option(generator):
    keys = _keyframes(generator)
    out = keyframe_trajectory(keys, 7, position_spline="linear")  # samples 0, 0.5, 1, ...
    torch.testing.assert_close(out.K[1], (keys.K[0] + keys.K[1]) / 2)
    torch.testing.assert_close(out.centers[3], (keys.centers[1] + keys.centers[2]) / 2)


def test_keyframe_errors_name_the_input(generator):
    keys = _keyframes(generator)
    with pytest.raises(TrajectoryError, match="strictly increasing"):
        keyframe_trajectory(keys, 5, times=torch.tensor([0.0, 2.0, 1.0, 3.0]))
    with pytest.raises(TrajectoryError, match="times has 3 entries"):
        keyframe_trajectory(keys, 5, times=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(TrajectoryError, match="frames"):
        keyframe_trajectory(keys, 0)
    with pytest.raises(TrajectoryError, match="position_spline"):
        keyframe_trajectory(keys, 3, position_spline="bezier")
    single = keyframe_trajectory(keys[1], 4)
    torch.testing.assert_close(single.c2w, keys.c2w[1:2].expand(4, 4, 4))


# ---------------------------------------------------------------------------------------------- combine
def test_compose_orbit_with_roll_keeps_centres_and_rolls_about_the_view_axis():
    base = make_trajectory("orbit", 6, elevation_deg=20.0)
    motion = make_trajectory("roll", 6, angle_deg=50.0)
    out = compose(base, motion)
    torch.testing.assert_close(out.centers, base.centers)
    torch.testing.assert_close(out.forward, base.forward)
    roll = torch.rad2deg(torch.acos((out.rotations[:, :, 0] * base.rotations[:, :, 0]).sum(-1).clamp(-1, 1)))
    torch.testing.assert_close(roll, torch.linspace(0, 50.0, 6, dtype=F64))
    assert bool(((out.rotations[1:, :, 0] * base.rotations[1:, :, 1]).sum(-1) > 0).all())  # clockwise


def test_compose_truck_and_zoom_act_in_each_base_camera_frame():
    base = make_trajectory("orbit", 4, span_deg=90.0, elevation_deg=0.0)
    out = compose(base, make_trajectory("truck", 4, distance=0.3))
    torch.testing.assert_close(out.centers - base.centers, 0.3 * torch.linspace(0, 1, 4, dtype=F64)[:, None]
                               * base.rotations[:, :, 0])
    zoomed = compose(base, make_trajectory("zoom_in", 4, factor=2.0))
    torch.testing.assert_close(zoomed.K[-1, 0, 0] / base.K[-1, 0, 0], torch.tensor(2.0, dtype=F64))
    with pytest.raises(TrajectoryError, match="motion has 3 frames"):
        compose(base, make_trajectory("roll", 3))


def test_concatenate_drops_the_repeated_joint_and_checks_image_sizes():
    a = make_trajectory("orbit", 5, span_deg=90.0)
    b = make_trajectory("orbit", 5, span_deg=90.0, start_azimuth_deg=90.0)
    joined = concatenate([a, b])
    assert joined.num_frames == 9
    torch.testing.assert_close(joined.c2w, torch.cat([a.c2w, b.c2w[1:]]))
    assert concatenate([a, b], drop_repeated=False).num_frames == 10
    with pytest.raises(TrajectoryError, match=r"trajectories\[1\] has image size"):
        concatenate([a, make_trajectory("static", 2, image_size=(64, 64))])


def test_resample_and_reverse():
    traj = make_trajectory("spiral", 7)
    same = resample(traj, 7)
    torch.testing.assert_close(same.c2w, traj.c2w)
    dense = resample(traj, 13)
    torch.testing.assert_close(dense.c2w[::2], traj.c2w)
    torch.testing.assert_close(reverse(traj).c2w, traj.c2w.flip(0))
