"""Camera pose accuracy through real structure-from-motion (pycolmap, CPU) on exact synthetic views.

About 20 s of CPU: 12 rendered views at 256 px, three SfM runs.
"""

from __future__ import annotations

import math

import pytest
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from mvcustom_core.cameras import CameraSet
from mvcustom_core.eval.pose_errors import (absolute_pose_errors, accuracy_under_thresholds,
                                            points_consistent_with_targets, target_reprojection_errors)
from mvcustom_core.eval.protocol import EvalOptions, LearnedModels, evaluate_set
from mvcustom_core.eval.sfm import register_frames
from mvcustom_core.synthetic import SyntheticScene, turntable_cameras

pytest.importorskip("pycolmap")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

POSE_ONLY = EvalOptions(reprojection=False)


@pytest.fixture(scope="module")
def orbit():
    """12 views 8 degrees apart (an 88 degree arc) of the texture-rich default subject at 256 px."""
    cams = turntable_cameras(45, elevation_deg=25.0, radius=2.5, image_size=(256, 256), fov_y_deg=45.0,
                             dtype=torch.float64)[list(range(12))]
    return cams, SyntheticScene(seed=0).render(cams).rgb


@pytest.fixture(scope="module")
def registration(orbit):
    cams, frames = orbit
    return register_frames(frames, cams.K)


def test_true_views_register_with_tiny_errors(orbit, registration):
    cams, frames = orbit
    assert registration.num_registered == 12
    assert registration.num_points > 100
    torch.testing.assert_close(registration.focal_px, cams.K[:, 0, 0])  # the known intrinsics were kept
    err = absolute_pose_errors(registration.c2w, cams.c2w, registration.registered)
    assert float(err.rotation_deg.max()) < 1.5
    assert float(err.translation.max()) < 0.03
    assert accuracy_under_thresholds(err.rotation_deg, err.translation) == 1.0
    px = target_reprojection_errors(registration.points, registration.obs_point, registration.obs_frame,
                                    registration.obs_uv, err.alignment, cams)
    assert len(px) >= 2 * registration.num_points and float(px.median()) < 2.0
    assert points_consistent_with_targets(px, registration.obs_point, registration.num_points) > 0.9 * registration.num_points


def test_errors_follow_perturbed_target_cameras(orbit, registration):
    cams, _ = orbit
    # Turn targets 3 and 7 by 10 degrees about their own x axis: their rotation errors become ~10 degrees
    # (Umeyama on centres ignores orientations), the other frames keep their sub-degree errors.
    c2w = cams.c2w.clone()
    turn = axis_angle_to_rotation_matrix(torch.tensor([[math.radians(10.0), 0.0, 0.0]], dtype=torch.float64))[0]
    c2w[[3, 7], :3, :3] = c2w[[3, 7], :3, :3] @ turn
    base = absolute_pose_errors(registration.c2w, cams.c2w, registration.registered)
    err = absolute_pose_errors(registration.c2w, c2w, registration.registered)
    assert torch.allclose(err.rotation_deg[[3, 7]], torch.full((2,), 10.0, dtype=torch.float64),
                          atol=float(base.rotation_deg.max()) + 1e-6)
    torch.testing.assert_close(err.translation, base.translation)
    assert accuracy_under_thresholds(err.rotation_deg, err.translation, 5.0, 0.1) == pytest.approx(10 / 12)
    # Points seen by frame 3 or 7 now miss their keypoints there by ~f * 10 degrees, far above 4 px.
    r = registration
    px = target_reprojection_errors(r.points, r.obs_point, r.obs_frame, r.obs_uv, err.alignment, CameraSet(cams.K, c2w, cams.image_size))
    turned = (r.obs_frame == 3) | (r.obs_frame == 7)
    in_turned = torch.zeros(r.num_points, dtype=torch.bool).index_fill_(0, r.obs_point[turned], True)
    assert float(px[turned].min()) > 4.0
    assert points_consistent_with_targets(px, r.obs_point, r.num_points) <= r.num_points - int(in_turned.sum())


def test_evaluate_set_scores_true_shuffled_and_blank_frames(orbit):
    cams, frames = orbit
    none = LearnedModels()
    true = evaluate_set(frames, cams, options=POSE_ONLY, models=none)
    assert true["cpa"] == 1.0 and true["num_registered"] == 12 and true["colmap_points"] > 100
    assert true["rot_err_deg"] < 1.5 and true["trans_err"] < 0.03
    assert true["colmap_points_target"] > 0.9 * true["colmap_points"] and true["target_reproj_px"] < 2.0
    perm = torch.tensor([5, 11, 0, 8, 2, 9, 3, 10, 1, 7, 4, 6])
    shuffled = evaluate_set(frames[perm], cams, options=POSE_ONLY, models=none)
    assert shuffled["cpa"] <= 0.25
    blank = evaluate_set(torch.full_like(frames[:4], 0.5), cams[[0, 1, 2, 3]], options=POSE_ONLY, models=none)
    assert blank["cpa"] == 0.0 and blank["num_registered"] == 0 and blank["colmap_points"] == 0
    assert math.isnan(blank["rot_err_deg"]) and blank["colmap_points_target"] == 0


def test_register_frames_rejects_missing_intrinsics(orbit):
    _, frames = orbit
    with pytest.raises(ValueError, match="K"):
        register_frames(frames[:2])


def test_varying_intrinsics_switch_to_estimated_per_image_cameras(orbit):
    cams, frames = orbit
    K = cams.K[:4].clone()
    K[2, 0, 0] *= 1.1  # a zoom on frame 2
    zoomed = CameraSet(K, cams.c2w[:4], cams.image_size)
    with pytest.raises(ValueError, match="intrinsics differ between frames"):
        register_frames(frames[:4], K)
    res = evaluate_set(torch.full_like(frames[:4], 0.5), zoomed, options=POSE_ONLY, models=LearnedModels())
    assert "per image" in res["unavailable"]["known_intrinsics"] and res["cpa"] == 0.0
