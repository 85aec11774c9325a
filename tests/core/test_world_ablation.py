"""The ablation's scores on known answers: the true renders, a frozen camera, shuffled views."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.eval.world_ablation import (_world_cams, color_subject_mask, make_case, recover_azimuths,
                                               score_views)
from mvcustom_core.eval.reprojection import MAX_PSNR_DB
from mvcustom_core.synthetic.world import HELD_OUT_SEEDS


@pytest.fixture(scope="module")
def case():
    return make_case(3, size=32, frames=6, span_deg=80.0, elevation_deg=20.0)


def test_case_targets_are_the_true_cameras_in_the_normalized_frame(case):
    from mvcustom_core.trajectories import make_trajectory

    world = make_trajectory("orbit", 6, radius=2.6, target=case.scene.subject_center, span_deg=80.0,
                            start_azimuth_deg=case.start_azimuth_deg, elevation_deg=20.0, loop=False,
                            image_size=(32, 32), fov_y_deg=40.0, dtype=torch.float32)
    back = _world_cams(case, case.targets)
    torch.testing.assert_close(back.c2w, world.c2w, rtol=0, atol=1e-5)
    # The references lie on the same sphere (radius 1 after normalization) as the targets.
    torch.testing.assert_close(case.reference.cameras.centers.norm(dim=-1), torch.ones(8), rtol=0, atol=1e-5)
    torch.testing.assert_close(case.targets.centers.norm(dim=-1), torch.ones(6), rtol=0, atol=1e-5)
    subject_depth = case.truth.depth[case.truth.mask > 0].median()  # normalized units: the subject is ~1 away
    assert 0.6 < float(subject_depth) < 1.1
    with pytest.raises(ValueError, match="held-out"):
        make_case(HELD_OUT_SEEDS)


def test_true_views_recover_their_azimuths_and_a_frozen_camera_the_anchors(case):
    truth = case.truth.rgb
    assert (recover_azimuths(truth, case) - case.target_azimuths).abs().max() <= 1.0
    frozen = truth[case.anchor:case.anchor + 1].expand_as(truth).contiguous()
    torch.testing.assert_close(recover_azimuths(frozen, case), case.target_azimuths[case.anchor].expand(6),
                               rtol=0, atol=1.0)


def test_scores_rank_truth_above_frozen_and_shuffled_views(case):
    truth = case.truth.rgb
    good = score_views(truth, case)
    assert good["pose_accuracy"] == 1.0 and good["azimuth_error_deg"] < 1.0
    assert good["ground_reproj_psnr"] > 25 and good["neighbour_reproj_psnr"] > 25
    assert good["subject_iou"] > 0.8
    assert good["background_psnr"] == MAX_PSNR_DB and good["background_ssim"] > 0.999  # the truth against itself
    frozen = score_views(truth[case.anchor:case.anchor + 1].expand_as(truth).contiguous(), case)
    shuffled = score_views(truth[torch.tensor([5, 0, 3, 1, 4, 2])], case)
    for bad in (frozen, shuffled):
        assert bad["pose_accuracy"] < 0.5 and bad["azimuth_error_deg"] > 10
        assert bad["ground_reproj_psnr"] < good["ground_reproj_psnr"] - 5
        assert bad["neighbour_reproj_psnr"] < good["neighbour_reproj_psnr"] - 5
    # Every view one camera off: the background no longer matches the true views.
    rolled = score_views(truth.roll(1, 0), case)
    assert rolled["background_psnr"] < 20 and rolled["background_ssim"] < 0.5
    # The frozen camera's views are the anchor's: the azimuth error is the path's angular distance to it.
    step = 80.0 / 5
    expected = sum(abs(i - case.anchor) * step for i in range(6) if i != case.anchor) / 5
    assert abs(frozen["azimuth_error_deg"] - expected) < 1.0


def test_colour_segmentation_finds_the_subject(case):
    ref = case.reference
    mask = color_subject_mask(case.truth.rgb, ref.images, ref.masks)
    inter = ((mask > 0.5) & (case.truth.mask > 0.5)).sum()
    union = ((mask > 0.5) | (case.truth.mask > 0.5)).sum()
    assert inter / union > 0.8
    assert float(color_subject_mask(torch.zeros(1, 3, 8, 8) + ref.images[:, :, :2, :2].mean(), ref.images,
                                    ref.masks).mean()) in (0.0, 1.0)
