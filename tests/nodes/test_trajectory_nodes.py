"""Trajectory nodes against direct calls of mvcustom_core.trajectories / cameras.formats."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.cameras.formats import cameras_from_cameractrl_poses, cameras_to_cameractrl_poses
from mvcustom_core.trajectories import make_trajectory, render_trajectory_preview


def _same_cameras(a, b, atol=0.0):
    assert a.image_size == b.image_size
    torch.testing.assert_close(a.K, b.K, atol=atol, rtol=0)
    torch.testing.assert_close(a.c2w, b.c2w, atol=atol, rtol=0)


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


def test_cameractrl_poses_errors_name_the_input(node, run):
    from_poses = node("MVC_TrajectoryFromCameraCtrlPoses")
    with pytest.raises(ValueError, match=r"^MVCustom Trajectory from CameraCtrl Poses: input 'poses' must be"):
        run(from_poses, poses=[])
    row = cameras_to_cameractrl_poses(make_trajectory("static", 1))[0]
    with pytest.raises(ValueError, match=r"^MVCustom Trajectory from CameraCtrl Poses: input 'poses' is invalid"):
        run(from_poses, poses=[row[:18]])


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


def test_combine_chains_from_the_first_trajectorys_last_camera(node, run):
    from mvcustom_core.trajectories import chain

    a = make_trajectory("orbit", 4, image_size=(32, 32), loop=False, span_deg=90.0)
    b = make_trajectory("dolly_in", 3, image_size=(32, 32))
    out = run(node("MVC_CombineTrajectories"), first=a, second=b, mode="chain", drop_repeated=False).args[0]
    _same_cameras(out, chain(a, b))
    # the dolly continues from the orbit's last camera: first moved camera = that camera, then along its axis
    torch.testing.assert_close(out.c2w[4], a.c2w[-1])
    step = out.centers[5] - out.centers[4]
    torch.testing.assert_close(step / step.norm(), a.forward[-1])
    assert len(run(node("MVC_CombineTrajectories"), first=a, second=b, mode="chain").args[0]) == 6


def _ade_pixel_focals(row, width, height):
    """(fx, fy) in pixels that AnimateDiff-Evolved derives from one CAMERACTRL_POSES row at a sample size.

    Its documented reading (CameraCtrl's aspect fix with the source size W0 x H0 of columns 5-6): if
    W0/H0 > W/H then fx_px = fx·H·W0/H0 and fy_px = fy·H, else fx_px = fx·W and fy_px = fy·W·H0/W0.
    """
    fx, fy, w0, h0 = row[1], row[2], row[5], row[6]
    if w0 / h0 > width / height:
        return fx * height * w0 / h0, fy * height
    return fx * width, fy * width * h0 / w0


def test_poses_of_a_cameractrl_trajectory_are_animatediff_evolveds_own_rows(node, run):
    cams = run(node("MVC_CameraCtrlTrajectory"), motion_1="Pan Left", width=512, height=512).args[0]
    poses = run(node("MVC_TrajectoryToCameraCtrlPoses"), trajectory=cams).args[0]
    # ADE's Create CameraCtrl Poses writes fx 0.474812461, fy 0.844111024, cx = cy = 0.5 and 1280, 720
    for row in poses:
        assert row[1:7] == pytest.approx([0.474812461, 0.844111024, 0.5, 0.5, 1280.0, 720.0], abs=1e-12)
    # so ADE derives the same focal length from them at any sample size as from its own preset
    for w, h in [(384, 256), (256, 384), (512, 512), (1024, 576)]:
        ade_own = _ade_pixel_focals([0, 0.474812461, 0.844111024, 0.5, 0.5, 1280, 720], w, h)
        assert _ade_pixel_focals(poses[0], w, h) == pytest.approx(ade_own, rel=1e-12)


@pytest.mark.parametrize("size", [(384, 256), (256, 384), (448, 256), (320, 320)])
def test_poses_keep_the_vertical_field_of_view_when_sampled_at_another_aspect(node, run, size):
    import math

    cams = make_trajectory("orbit", 4, image_size=(512, 512), fov_y_deg=50.0)
    row = run(node("MVC_TrajectoryToCameraCtrlPoses"), trajectory=cams).args[0][0]
    w, h = size
    fx, fy = _ade_pixel_focals(row, w, h)
    assert fx == pytest.approx(fy, rel=1e-12)  # square pixels
    assert math.degrees(2 * math.atan(0.5 * h / fy)) == pytest.approx(50.0, abs=1e-9)
    # and at the trajectory's own size the rows give back its exact intrinsics
    assert _ade_pixel_focals(row, 512, 512) == pytest.approx((float(cams.K[0, 0, 0]), float(cams.K[0, 1, 1])))


@pytest.mark.parametrize("source_size, cols", [("1280x720 (AnimateDiff-Evolved, WanVideoWrapper)", (1280.0, 720.0)),
                                               ("trajectory size", (96.0, 64.0)),
                                               ("trajectory size (AnimateDiff-Evolved)", (96.0, 64.0)),  # saved
                                               ("1280x720 (WanVideoWrapper)", (1280.0, 720.0))])             # labels
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
