"""The CameraCtrl presets hold to the packs' documented behaviour (docs/trajectories.md, "The CameraCtrl presets").

Written from the formulas, not from either pack's code: base angle π/3, base translation 1.5, frame i at
progress i/b with b = 16 for AnimateDiff-Evolved (whatever the frame count) and b = n for ComfyUI core,
R = Rz·Ry·Rx with the right-handed elementary rotations written out below; AnimateDiff-Evolved's row is
world-to-camera, core's camera-to-world; several motions are summed (times their strengths) first; a chained
segment continues from the previous last camera as w2c'_i = [R_i | T_i] · w2c_last, keeping every frame.
"""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.trajectories import (
    CAMERACTRL_PRESET_KEYS,
    CAMERACTRL_PRESET_NAMES,
    TrajectoryError,
    cameractrl_motion_rows,
    cameractrl_trajectory,
    chain,
    concatenate,
    make_trajectory,
    preset_parameters,
)

N = 16
F64 = torch.float64


def _rx(a):
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=F64)


def _ry(a):
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=F64)


def _rz(a):
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=F64)


def _row(angle, T, progress):
    """``[R | T]`` (3 x 4) of the documented formula at ``progress = (i / b) * speed``."""
    a = [progress * math.pi / 3 * v for v in angle]
    R = _rz(a[2]) @ _ry(a[1]) @ _rx(a[0])
    return torch.cat([R, torch.tensor([[progress * 1.5 * t] for t in T], dtype=F64)], dim=1)


def _h(m):
    """3 x 4 -> 4 x 4."""
    return torch.cat([m, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=F64)])


# AnimateDiff-Evolved's table as documented (angle vector, T vector); core's nine are the negatives.
ADE_TABLE = {
    "Static": ((0, 0, 0), (0, 0, 0)),
    "Pan Up": ((0, 0, 0), (0, 1, 0)),
    "Pan Down": ((0, 0, 0), (0, -1, 0)),
    "Pan Left": ((0, 0, 0), (1, 0, 0)),
    "Pan Right": ((0, 0, 0), (-1, 0, 0)),
    "Zoom In": ((0, 0, 0), (0, 0, -2)),
    "Zoom Out": ((0, 0, 0), (0, 0, 2)),
    "Roll Clockwise": ((0, 0, -1), (0, 0, 0)),
    "Roll Anticlockwise": ((0, 0, 1), (0, 0, 0)),
    "Tilt Down": ((1, 0, 0), (0, 0, 0)),
    "Tilt Up": ((-1, 0, 0), (0, 0, 0)),
    "Tilt Left": ((0, 1, 0), (0, 0, 0)),
    "Tilt Right": ((0, -1, 0), (0, 0, 0)),
}
CORE_TABLE = {  # ComfyUI core's CAMERA_DICT (its own spelling of the rolls)
    "Static": ((0, 0, 0), (0, 0, 0)),
    "Pan Up": ((0, 0, 0), (0, -1, 0)),
    "Pan Down": ((0, 0, 0), (0, 1, 0)),
    "Pan Left": ((0, 0, 0), (-1, 0, 0)),
    "Pan Right": ((0, 0, 0), (1, 0, 0)),
    "Zoom In": ((0, 0, 0), (0, 0, 2)),
    "Zoom Out": ((0, 0, 0), (0, 0, -2)),
    "Anti Clockwise (ACW)": ((0, 0, -1), (0, 0, 0)),
    "ClockWise (CW)": ((0, 0, 1), (0, 0, 0)),
}

# What each preset does to the camera (first camera's frame, OpenCV: -y up, +z forward) per unit of progress:
# centre displacement, and the turn as an axis-angle vector of the camera's c2w rotation.
MOTION = {
    "Static": ((0, 0, 0), (0, 0, 0)),
    "Pan Up": ((0, -1.5, 0), (0, 0, 0)),
    "Pan Down": ((0, 1.5, 0), (0, 0, 0)),
    "Pan Left": ((-1.5, 0, 0), (0, 0, 0)),
    "Pan Right": ((1.5, 0, 0), (0, 0, 0)),
    "Zoom In": ((0, 0, 3.0), (0, 0, 0)),
    "Zoom Out": ((0, 0, -3.0), (0, 0, 0)),
    "Roll Clockwise": ((0, 0, 0), (0, 0, math.pi / 3)),  # x swings towards +y (down): clockwise from behind
    "Roll Anticlockwise": ((0, 0, 0), (0, 0, -math.pi / 3)),
    "Tilt Down": ((0, 0, 0), (-math.pi / 3, 0, 0)),  # forward (0, sin, cos): towards +y, down
    "Tilt Up": ((0, 0, 0), (math.pi / 3, 0, 0)),
    "Tilt Left": ((0, 0, 0), (0, -math.pi / 3, 0)),  # forward towards -x, left
    "Tilt Right": ((0, 0, 0), (0, math.pi / 3, 0)),
}


def _axis_angle_rotation(v, k):
    """Rotation by ``k * v`` (axis-angle, one non-zero component) written as an elementary rotation."""
    return _rx(k * v[0]) @ _ry(k * v[1]) @ _rz(k * v[2])


def test_the_thirteen_names_are_animatediff_evolveds():
    assert CAMERACTRL_PRESET_NAMES == ("Static", "Pan Up", "Pan Down", "Pan Left", "Pan Right", "Zoom In",
                                       "Zoom Out", "Roll Clockwise", "Roll Anticlockwise", "Tilt Down", "Tilt Up",
                                       "Tilt Left", "Tilt Right")
    assert CAMERACTRL_PRESET_KEYS["Roll Clockwise"] == "cameractrl_roll_clockwise"
    assert CAMERACTRL_PRESET_KEYS["Tilt Left"] == "cameractrl_tilt_left"


@pytest.mark.parametrize("frames", [8, 16, 32])
@pytest.mark.parametrize("name", CAMERACTRL_PRESET_NAMES)
def test_animatediff_rows_follow_its_formula_with_progress_i_over_16(name, frames):
    speed = 0.8
    rows = cameractrl_motion_rows(name, frames, speed=speed)
    angle, T = ADE_TABLE[name]
    for i in range(frames):
        torch.testing.assert_close(rows[i], _row(angle, T, i / 16 * speed), rtol=0, atol=1e-15)
    # the rows are world-to-camera
    torch.testing.assert_close(cameractrl_trajectory(name, frames, speed=speed).w2c[:, :3], rows)


@pytest.mark.parametrize("frames", [8, 32])
@pytest.mark.parametrize("name", list(CORE_TABLE))
def test_core_rows_follow_its_formula_with_progress_i_over_n(name, frames):
    rows = cameractrl_motion_rows(name, frames, speed=1.3, convention="comfy_core")
    angle, T = CORE_TABLE[name]
    for i in range(frames):
        torch.testing.assert_close(rows[i], _row(angle, T, i / frames * 1.3), rtol=0, atol=1e-15)
    # the rows are camera-to-world
    torch.testing.assert_close(cameractrl_trajectory(name, frames, speed=1.3, convention="comfy_core").c2w[:, :3],
                               rows)


@pytest.mark.parametrize("convention", ["animatediff_evolved", "comfy_core"])
@pytest.mark.parametrize("name", CAMERACTRL_PRESET_NAMES)
def test_single_presets_move_the_camera_the_same_way_in_both_conventions(name, convention):
    frames, speed = 8, 0.8
    cams = cameractrl_trajectory(name, frames, speed=speed, convention=convention)
    cams.validate()
    base = 16 if convention == "animatediff_evolved" else frames
    progress = torch.arange(frames, dtype=F64) / base * speed
    move, turn = MOTION[name]
    torch.testing.assert_close(cams.centers, progress[:, None] * torch.tensor(move, dtype=F64))
    for i in range(frames):
        torch.testing.assert_close(cams.rotations[i], _axis_angle_rotation(turn, float(progress[i])))


def test_at_8_and_32_frames_the_animatediff_move_per_frame_is_the_16_frame_one():
    # "Pan Left" at speed 1 moves 1.5/16 per frame: 32 frames end twice as far as 16, 8 frames half as far.
    ends = {n: float(cameractrl_trajectory("Pan Left", n).centers[-1, 0]) for n in (8, 16, 32)}
    assert ends == pytest.approx({8: -1.5 * 7 / 16, 16: -1.5 * 15 / 16, 32: -1.5 * 31 / 16}, abs=1e-12)
    core = {n: float(cameractrl_trajectory("Pan Left", n, convention="comfy_core").centers[-1, 0]) for n in (8, 32)}
    assert core == pytest.approx({8: -1.5 * 7 / 8, 32: -1.5 * 31 / 32}, abs=1e-12)


def test_a_sum_of_motions_follows_the_formula_on_the_summed_vectors_in_any_order():
    names, strengths, speed, n = ["Pan Left", "Roll Clockwise", "Zoom In", "Tilt Up"], [1.0, 0.5, 2.0, 1.5], 0.7, 9
    angle = (-1.5, 0.0, -0.5)  # Tilt Up · 1.5 + Roll Clockwise · 0.5
    T = (1.0, 0.0, -4.0)  # Pan Left + Zoom In · 2
    rows = cameractrl_motion_rows(names, n, speed=speed, strengths=strengths)
    for i in range(n):
        torch.testing.assert_close(rows[i], _row(angle, T, i / 16 * speed), rtol=0, atol=1e-15)
    swapped = cameractrl_motion_rows(names[::-1], n, speed=speed, strengths=strengths[::-1])
    torch.testing.assert_close(swapped, rows, rtol=0, atol=0)
    # a roll and a move commute in the sum (they do not under compose())
    a = cameractrl_trajectory(["Pan Left", "Roll Clockwise"], n)
    b = cameractrl_trajectory(["Roll Clockwise", "Pan Left"], n)
    torch.testing.assert_close(a.c2w, b.c2w, rtol=0, atol=0)


def test_animatediff_and_core_sums_of_a_roll_and_a_move_differ_as_documented():
    names = ["Pan Left", "Roll Clockwise"]
    ad = cameractrl_trajectory(names, 8)
    core = cameractrl_trajectory(names, 8, convention="comfy_core")
    rows = cameractrl_motion_rows(names, 8)
    # AnimateDiff-Evolved's centre is -Rᵀ T (the move turns with the camera), core's is T
    torch.testing.assert_close(ad.centers, -(rows[:, :, :3].transpose(-1, -2) @ rows[:, :, 3:])[..., 0])
    torch.testing.assert_close(core.centers, cameractrl_motion_rows(names, 8, convention="comfy_core")[:, :, 3])


def test_chaining_continues_from_the_last_camera_like_prev_poses():
    first = cameractrl_trajectory(["Pan Left", "Tilt Down"], 8, speed=1.2)
    second_rows = cameractrl_motion_rows(["Zoom In", "Roll Anticlockwise"], 6)
    second = cameractrl_trajectory(["Zoom In", "Roll Anticlockwise"], 6)
    out = chain(first, second)
    assert len(out) == 14  # every frame of both segments, the joint camera twice
    torch.testing.assert_close(out.w2c[:8], first.w2c)
    last = first.w2c[-1]
    for i in range(6):
        torch.testing.assert_close(out.w2c[8 + i], _h(second_rows[i]) @ last)
    torch.testing.assert_close(out.c2w[8], first.c2w[-1])
    assert len(chain(first, second, drop_repeated=True)) == 13
    # concatenate, by contrast, plays the second segment back at the origin
    torch.testing.assert_close(concatenate([first, second], drop_repeated=False).c2w[8], torch.eye(4, dtype=F64))


def test_chaining_keeps_each_segments_own_intrinsics_and_refuses_other_sizes():
    first = make_trajectory("orbit", 4, image_size=(64, 64), fov_y_deg=40.0)
    second = cameractrl_trajectory("Pan Up", 3, image_size=(64, 64))
    out = chain(first, second)
    torch.testing.assert_close(out.K[4:], second.K)
    torch.testing.assert_close(out.K[:4], first.K)
    with pytest.raises(TrajectoryError, match="image size"):
        chain(first, cameractrl_trajectory("Pan Up", 3, image_size=(32, 64)))


@pytest.mark.parametrize("image_size", [(512, 512), (256, 384), (720, 1280), (480, 320)])
def test_default_intrinsics_after_the_aspect_fit_are_square_pixels(image_size):
    # The defaults are square pixels on the 1280x720 source video; CameraCtrl's aspect fit keeps them square.
    h, w = image_size
    cams = cameractrl_trajectory("Static", 2, image_size=image_size)
    K = cams.K[0]
    torch.testing.assert_close(K[0, 0], K[1, 1], rtol=1e-6, atol=0)
    torch.testing.assert_close(K[:2, 2], torch.tensor([w / 2, h / 2], dtype=F64))
    if w / h < 1280 / 720:  # fx is refit; fy keeps 0.844111024 · H
        torch.testing.assert_close(K[1, 1], torch.tensor(0.844111024 * h, dtype=F64))
    raw = cameractrl_trajectory("Static", 2, image_size=image_size, original_pose_size=None)
    torch.testing.assert_close(raw.K[0, 0, 0], torch.tensor(0.474812461 * w, dtype=F64))


def test_make_trajectory_exposes_the_thirteen_presets_and_the_old_roll_keys():
    assert len(CAMERACTRL_PRESET_KEYS) == 13
    for name, key in CAMERACTRL_PRESET_KEYS.items():
        torch.testing.assert_close(make_trajectory(key, N).c2w, cameractrl_trajectory(name, N).c2w)
    cams = make_trajectory("cameractrl_zoom_in", 4, fov_y_deg=60.0, image_size=(64, 64))
    torch.testing.assert_close(cams.fov_y_deg(), torch.full((4,), 60.0, dtype=F64))
    # the pack's earlier roll names, and core's long ones, still work
    torch.testing.assert_close(make_trajectory("cameractrl_cw", 4).c2w, make_trajectory("cameractrl_roll_clockwise", 4).c2w)
    assert preset_parameters("cameractrl_acw") == preset_parameters("cameractrl_roll_anticlockwise")
    for alias, name in [("CW", "Roll Clockwise"), ("ClockWise (CW)", "Roll Clockwise"),
                        ("ACW", "Roll Anticlockwise"), ("Anti Clockwise (ACW)", "Roll Anticlockwise")]:
        torch.testing.assert_close(cameractrl_trajectory(alias, 4).c2w, cameractrl_trajectory(name, 4).c2w)


def test_speed_reaches_animatediff_evolveds_100():
    spec = preset_parameters("cameractrl_pan_left")["speed"]
    assert (spec.min, spec.max) == (-100.0, 100.0)
    cams = make_trajectory("cameractrl_pan_left", 3, speed=-100.0)
    torch.testing.assert_close(cams.centers[-1], torch.tensor([100 * 1.5 * 2 / 16, 0.0, 0.0], dtype=F64))
    with pytest.raises(TrajectoryError, match="speed = 150 is outside"):
        make_trajectory("cameractrl_pan_left", 3, speed=150.0)


def test_bad_inputs_are_named():
    with pytest.raises(TrajectoryError, match="frames"):
        cameractrl_trajectory("Roll Clockwise", 0)
    with pytest.raises(TrajectoryError, match="unknown CameraCtrl preset 'Orbit'"):
        cameractrl_trajectory("Orbit", 4)
    with pytest.raises(TrajectoryError, match="convention"):
        cameractrl_trajectory("CW", 4, convention="opengl")
    with pytest.raises(TrajectoryError, match="strengths has 1 values for 2 names"):
        cameractrl_trajectory(["CW", "Pan Up"], 4, strengths=[1.0])
    with pytest.raises(TrajectoryError, match=r"strengths\[1\] must be finite"):
        cameractrl_trajectory(["CW", "Pan Up"], 4, strengths=[1.0, float("nan")])


def test_euler_order_is_z_y_x_on_a_general_angle():
    from mvcustom_core.trajectories.cameractrl_presets import euler_zyx_to_rotation_matrix

    a = (0.3, -0.7, 1.1)
    expected = _rz(a[2]) @ _ry(a[1]) @ _rx(a[0])
    torch.testing.assert_close(euler_zyx_to_rotation_matrix(torch.tensor(a, dtype=F64)), expected)
