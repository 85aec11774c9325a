"""The nine CameraCtrl presets reproduce the packs' magnitudes, signs and intrinsics.

Source facts (AnimateDiff-Evolved ``animatediff/nodes_cameractrl.py`` and ComfyUI
``comfy_extras/nodes_camera_trajectory.py``): base angle π/3, base translation 1.5, frame i of n at
progress i/n, R = Rz·Ry·Rx with the right-handed elementary rotations written out below.
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
    make_trajectory,
)

N = 16


def _rx(a):
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)


def _ry(a):
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)


def _rz(a):
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)


# What each preset does to the camera centre (in the first camera's frame, OpenCV: -y up, +z forward)
# per unit of progress i/n, and the roll angle of the camera (> 0 clockwise seen from behind).
EXPECTED = {
    "Static": ((0, 0, 0), 0.0),
    "Pan Up": ((0, -1.5, 0), 0.0),
    "Pan Down": ((0, 1.5, 0), 0.0),
    "Pan Left": ((-1.5, 0, 0), 0.0),
    "Pan Right": ((1.5, 0, 0), 0.0),
    "Zoom In": ((0, 0, 3.0), 0.0),
    "Zoom Out": ((0, 0, -3.0), 0.0),
    "ACW": ((0, 0, 0), -math.pi / 3),
    "CW": ((0, 0, 0), math.pi / 3),
}


@pytest.mark.parametrize("convention", ["animatediff_evolved", "comfy_core"])
@pytest.mark.parametrize("name", CAMERACTRL_PRESET_NAMES)
def test_presets_reproduce_the_source_magnitudes_and_directions(name, convention):
    speed = 0.8
    cams = cameractrl_trajectory(name, N, speed=speed, convention=convention)
    cams.validate()
    progress = torch.arange(N, dtype=torch.float64) / N * speed
    move, roll = EXPECTED[name]
    torch.testing.assert_close(cams.centers, progress[:, None] * torch.tensor(move, dtype=torch.float64))
    # roll by θ about the viewing axis: right axis = (cos θ, sin θ, 0) (θ > 0 swings right towards down)
    theta = progress * roll
    right = torch.stack([torch.cos(theta), torch.sin(theta), torch.zeros_like(theta)], dim=-1)
    torch.testing.assert_close(cams.rotations[:, :, 0], right)
    torch.testing.assert_close(cams.forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(N, 3))


def test_motion_rows_match_the_pack_formula_for_a_combo():
    names, speed, n = ["Pan Left", "CW", "Zoom In", "Pan Up"], 0.7, 9
    angle = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)  # AnimateDiff-Evolved vectors, summed
    T = torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64)
    rows = cameractrl_motion_rows(names, n, speed=speed)
    for i in range(n):
        a = (i / n) * speed * (math.pi / 3) * angle
        R = _rz(float(a[2])) @ _ry(float(a[1])) @ _rx(float(a[0]))
        torch.testing.assert_close(rows[i, :, :3], R)
        torch.testing.assert_close(rows[i, :, 3], (i / n) * speed * 1.5 * T)


def test_euler_order_is_z_y_x_on_a_general_angle():
    from mvcustom_core.trajectories.cameractrl_presets import euler_zyx_to_rotation_matrix

    a = (0.3, -0.7, 1.1)
    expected = _rz(a[2]) @ _ry(a[1]) @ _rx(a[0])
    torch.testing.assert_close(euler_zyx_to_rotation_matrix(torch.tensor(a, dtype=torch.float64)), expected)


def test_animatediff_rows_are_world_to_camera_and_core_rows_camera_to_world():
    rows_ad = cameractrl_motion_rows("Pan Left", N)
    cams_ad = cameractrl_trajectory("Pan Left", N)
    torch.testing.assert_close(cams_ad.w2c[:, :3], rows_ad)
    rows_core = cameractrl_motion_rows("Pan Left", N, convention="comfy_core")
    cams_core = cameractrl_trajectory("Pan Left", N, convention="comfy_core")
    torch.testing.assert_close(cams_core.c2w[:, :3], rows_core)


@pytest.mark.parametrize("image_size", [(512, 512), (256, 384), (720, 1280), (480, 320)])
def test_default_intrinsics_after_the_aspect_fit_are_square_pixels(image_size):
    # The defaults are square pixels on the 1280x720 source video; CameraCtrl's aspect fit keeps them square.
    h, w = image_size
    cams = cameractrl_trajectory("Static", 2, image_size=image_size)
    K = cams.K[0]
    torch.testing.assert_close(K[0, 0], K[1, 1], rtol=1e-6, atol=0)
    torch.testing.assert_close(K[:2, 2], torch.tensor([w / 2, h / 2], dtype=torch.float64))
    if w / h < 1280 / 720:  # fx is refit; fy keeps 0.844111024 · H
        torch.testing.assert_close(K[1, 1], torch.tensor(0.844111024 * h, dtype=torch.float64))
    raw = cameractrl_trajectory("Static", 2, image_size=image_size, original_pose_size=None)
    torch.testing.assert_close(raw.K[0, 0, 0], torch.tensor(0.474812461 * w, dtype=torch.float64))


def test_make_trajectory_exposes_the_nine_presets():
    assert len(CAMERACTRL_PRESET_KEYS) == 9
    for name, key in CAMERACTRL_PRESET_KEYS.items():
        torch.testing.assert_close(make_trajectory(key, N).c2w, cameractrl_trajectory(name, N).c2w)
    cams = make_trajectory("cameractrl_zoom_in", 4, fov_y_deg=60.0, image_size=(64, 64))
    torch.testing.assert_close(cams.fov_y_deg(), torch.full((4,), 60.0, dtype=torch.float64))
    # core's long rotation names are accepted as aliases
    torch.testing.assert_close(cameractrl_trajectory("ClockWise (CW)", 4).c2w, cameractrl_trajectory("CW", 4).c2w)


def test_bad_inputs_are_named():
    with pytest.raises(TrajectoryError, match="frames"):
        cameractrl_trajectory("CW", 0)
    with pytest.raises(TrajectoryError, match="unknown CameraCtrl preset 'Orbit'"):
        cameractrl_trajectory("Orbit", 4)
    with pytest.raises(TrajectoryError, match="convention"):
        cameractrl_trajectory("CW", 4, convention="opengl")
    with pytest.raises(TrajectoryError, match="speed"):
        make_trajectory("cameractrl_cw", 4, speed=50.0)


def test_combos_of_roll_and_move_differ_between_packs_as_documented():
    names = ["Pan Left", "CW"]
    ad = cameractrl_trajectory(names, 8)
    core = cameractrl_trajectory(names, 8, convention="comfy_core")
    torch.testing.assert_close(ad.rotations, core.rotations)  # z-only turns: Rz(-θ) = Rz(θ)ᵀ
    rows = cameractrl_motion_rows(names, 8)
    torch.testing.assert_close(ad.centers, -(rows[:, :, :3].transpose(-1, -2) @ rows[:, :, 3:])[..., 0])
    torch.testing.assert_close(core.centers, cameractrl_motion_rows(names, 8, convention="comfy_core")[:, :, 3])
    assert float((ad.centers - core.centers).norm(dim=-1)[-1]) > 0.1
