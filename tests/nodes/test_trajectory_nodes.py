"""Trajectory nodes against direct calls of mvcustom_core.trajectories / cameras.formats."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.cameras.formats import cameras_from_cameractrl_poses, cameras_to_cameractrl_poses
from mvcustom_core.trajectories import PRESETS, make_trajectory, preset_parameters, render_trajectory_preview


def _widgets_for(preset: str) -> dict:
    """Widget values that state the preset's own parameter defaults (3-vectors split into _x/_y/_z)."""
    out = {}
    for name, spec in preset_parameters(preset).items():
        if isinstance(spec.default, (tuple, list)) and len(spec.default) == 3:
            out.update({f"{name}_{a}": float(v) for a, v in zip("xyz", spec.default)})
        else:
            out[name] = spec.default
    return out


def _same_cameras(a, b, atol=0.0):
    assert a.image_size == b.image_size
    torch.testing.assert_close(a.K, b.K, atol=atol, rtol=0)
    torch.testing.assert_close(a.c2w, b.c2w, atol=atol, rtol=0)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_matches_the_core_call(node, run, preset):
    out = run(node("MVC_CameraTrajectory"), preset=preset, frames=5, width=96, height=64, fov_y_deg=40.0,
              **_widgets_for(preset))
    _same_cameras(out.args[0], make_trajectory(preset, 5, image_size=(64, 96), fov_y_deg=40.0))


def test_preset_widgets_reach_the_core(node, run):
    out = run(node("MVC_CameraTrajectory"), preset="orbit", frames=6, radius=2.5, elevation_deg=30.0,
              target_x=0.5, target_y=-0.25, target_z=1.0, direction="cw", loop=False)
    expected = make_trajectory("orbit", 6, image_size=(512, 512), fov_y_deg=50.0, radius=2.5, elevation_deg=30.0,
                               target=(0.5, -0.25, 1.0), direction="cw", loop=False)
    _same_cameras(out.args[0], expected)
    # and the widgets did change something: every centre is 2.5 from the target
    dist = (out.args[0].centers - torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64)).norm(dim=-1)
    torch.testing.assert_close(dist, torch.full((6,), 2.5, dtype=torch.float64))


def test_every_preset_parameter_has_a_pinned_widget(pack, node):
    import importlib

    mod = importlib.import_module(f"{pack.__name__}.nodes.trajectories")
    schema = node("MVC_CameraTrajectory").GET_SCHEMA()
    ids = [i.id for i in schema.inputs]
    for preset in PRESETS:
        for name, spec in preset_parameters(preset).items():
            assert name in mod.PRESET_WIDGET_ORDER, f"pin {name!r} at the end of PRESET_WIDGET_ORDER"
            wanted = [f"{name}_{a}" for a in "xyz"] if isinstance(spec.default, tuple) else [name]
            assert set(wanted) <= set(ids), (preset, name)
    # saved workflows are positional: the fixed widgets come first, in this order
    assert ids[:5] == ["preset", "frames", "width", "height", "fov_y_deg"]


def test_zero_frames_names_node_and_input(node, run):
    with pytest.raises(ValueError) as e:
        run(node("MVC_CameraTrajectory"), frames=0)
    assert str(e.value) == "MVCustom Camera Trajectory: input 'frames' must be ≥ 1, got 0"


def test_core_rejection_names_the_offending_widget(node, run):
    with pytest.raises(ValueError, match=r"^MVCustom Camera Trajectory: input 'radius' is invalid: .*radius"):
        run(node("MVC_CameraTrajectory"), preset="orbit", radius=-1.0)
    with pytest.raises(ValueError, match=r"^MVCustom Camera Trajectory: input 'elevation_deg' is invalid"):
        run(node("MVC_CameraTrajectory"), preset="orbit", elevation_deg=95.0)


def test_preview_is_the_core_picture_as_an_image_batch(node, run):
    cams = make_trajectory("orbit", 6)
    out = run(node("MVC_TrajectoryPreview"), trajectory=cams, width=160, height=128, title="")
    image = out.args[0]
    assert image.shape == (1, 128, 160, 3) and image.dtype == torch.float32
    torch.testing.assert_close(image[0], render_trajectory_preview(cams, size=(128, 160)))
    assert out.ui is not None and out.ui.image is image
    assert image.std() > 0.01  # not blank


def test_preview_rejects_a_non_trajectory(node, run):
    with pytest.raises(ValueError, match=r"^MVCustom Trajectory Preview: input 'trajectory' must be"):
        run(node("MVC_TrajectoryPreview"), trajectory=[[0.0] * 19])


@pytest.mark.parametrize("source_size, cols", [("trajectory size (AnimateDiff-Evolved)", (96.0, 64.0)),
                                               ("1280x720 (WanVideoWrapper)", (1280.0, 720.0))])
def test_cameractrl_poses_round_trip(node, run, source_size, cols):
    cams = make_trajectory("spiral", 7, image_size=(64, 96), fov_y_deg=45.0)
    poses = run(node("MVC_TrajectoryToCameraCtrlPoses"), trajectory=cams, source_size=source_size).args[0]
    size = None if source_size.startswith("trajectory") else (720, 1280)
    assert poses == cameras_to_cameractrl_poses(cams, source_size=size)
    assert len(poses) == 7 and all(len(r) == 19 for r in poses)
    assert tuple(poses[0][5:7]) == cols  # AnimateDiff-Evolved reads (W0, H0) from columns 5-6
    back = run(node("MVC_TrajectoryFromCameraCtrlPoses"), poses=poses, width=96, height=64).args[0]
    _same_cameras(back, cams, atol=1e-9)
    _same_cameras(back, cameras_from_cameractrl_poses(poses, (64, 96)))


def test_cameractrl_poses_errors_name_the_input(node, run):
    from_poses = node("MVC_TrajectoryFromCameraCtrlPoses")
    with pytest.raises(ValueError, match=r"^MVCustom Trajectory from CameraCtrl Poses: input 'poses' must be"):
        run(from_poses, poses=[])
    row = cameras_to_cameractrl_poses(make_trajectory("static", 1))[0]
    with pytest.raises(ValueError, match=r"^MVCustom Trajectory from CameraCtrl Poses: input 'poses' is invalid"):
        run(from_poses, poses=[row[:18]])


@pytest.mark.parametrize("preset", ["tilt", "spiral", "cameractrl_pan_left"])
def test_omitted_preset_widgets_take_the_presets_own_defaults(node, preset):
    """API prompts may leave the optional preset widgets out (tilt's angle default differs from pan's)."""
    out = node("MVC_CameraTrajectory").execute(preset=preset, frames=4, width=64, height=64, fov_y_deg=50.0)
    _same_cameras(out.args[0], make_trajectory(preset, 4, image_size=(64, 64), fov_y_deg=50.0))


def test_preset_widgets_are_optional_and_the_fixed_ones_required(node):
    inputs = node("MVC_CameraTrajectory").GET_SCHEMA().inputs
    assert [i.id for i in inputs if not i.optional] == ["preset", "frames", "width", "height", "fov_y_deg"]


def test_combine_concatenates_and_composes_like_the_core(node, run):
    from mvcustom_core.trajectories import compose, concatenate

    a = make_trajectory("orbit", 4, image_size=(32, 32), loop=False, span_deg=90.0)
    b = make_trajectory("dolly_in", 3, image_size=(32, 32))
    cat = run(node("MVC_CombineTrajectories"), first=a, second=b, mode="concatenate", drop_repeated=False).args[0]
    assert len(cat) == 7
    _same_cameras(cat, concatenate([a, b], drop_repeated=False))
    roll = make_trajectory("roll", 4, image_size=(32, 32), angle_deg=45.0)
    composed = run(node("MVC_CombineTrajectories"), first=a, second=roll, mode="compose").args[0]
    _same_cameras(composed, compose(a, roll))
    torch.testing.assert_close(composed.centers, a.centers)  # a roll turns the camera, it does not move it
    with pytest.raises(ValueError, match=r"^MVCustom Combine Trajectories: input 'second' is invalid: .*frames"):
        run(node("MVC_CombineTrajectories"), first=a, second=b, mode="compose")


def test_resample_keeps_the_ends_and_reverses(node, run):
    from mvcustom_core.trajectories import resample

    src = make_trajectory("spiral", 5, image_size=(32, 32))
    out = run(node("MVC_ResampleTrajectory"), trajectory=src, frames=9, position_spline="linear").args[0]
    _same_cameras(out, resample(src, 9, position_spline="linear"))
    _same_cameras(out[0], src[0], atol=1e-12)
    _same_cameras(out[-1], src[-1], atol=1e-12)
    backwards = run(node("MVC_ResampleTrajectory"), trajectory=src, frames=9, position_spline="linear",
                    reverse=True).args[0]
    torch.testing.assert_close(backwards.c2w, out.c2w.flip(0))
    with pytest.raises(ValueError, match=r"^MVCustom Resample Trajectory: input 'frames' must be ≥ 1, got 0"):
        run(node("MVC_ResampleTrajectory"), trajectory=src, frames=0)


def test_info_reports_frames_size_path_and_fov(node, run):
    cams = make_trajectory("dolly", 5, image_size=(48, 80), fov_y_deg=40.0, distance=0.8)
    frames, width, height, summary = run(node("MVC_TrajectoryInfo"), trajectory=cams).args
    assert (frames, width, height) == (5, 80, 48)
    # a straight dolly of 0.8 units: the path length is the distance; the FOV is the one asked for
    assert "path length 0.8," in summary and "mean vertical FOV 40.0 deg" in summary


def test_non_integer_frames_are_named_as_such(node, run):
    with pytest.raises(ValueError, match=r"^MVCustom Camera Trajectory: input 'frames' must be an integer, got 2.5$"):
        run(node("MVC_CameraTrajectory"), frames=2.5)
