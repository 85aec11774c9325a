"""Evaluate Views node: the protocol's numbers on exact synthetic views, input errors naming node and input."""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.synthetic import SyntheticScene, turntable_cameras

pytest.importorskip("pycolmap")


@pytest.fixture(scope="module")
def orbit():
    """10 views 8° apart of the texture-rich default subject at 192 px, in ComfyUI IMAGE layout."""
    cams = turntable_cameras(45, elevation_deg=25.0, radius=2.5, image_size=(192, 192), fov_y_deg=45.0)[list(range(10))]
    return cams, SyntheticScene(seed=0).render(cams).rgb.permute(0, 2, 3, 1).contiguous()


@pytest.mark.slow
def test_true_views_score_full_pose_accuracy(node, run, orbit):
    cams, images = orbit
    out = run(node("MVC_EvaluateViews"), images=images, trajectory=cams)
    report, cpa, rot = out.args
    assert cpa == 1.0 and rot < 1.5
    assert report.startswith("| Method") and "this graph" in report
    assert "text_clip_s" in report or "clip" in report.lower()  # the skipped learned metrics say why


@pytest.mark.slow
def test_a_shuffled_trajectory_scores_low(node, run, orbit):
    cams, images = orbit
    order = torch.tensor([7, 2, 9, 0, 5, 3, 8, 1, 6, 4])
    _, cpa, _ = run(node("MVC_EvaluateViews"), images=images, trajectory=cams[order]).args
    assert cpa <= 0.3


def test_bad_inputs_name_node_and_input(node, run, orbit):
    cams, images = orbit
    cls = node("MVC_EvaluateViews")
    with pytest.raises(ValueError, match=r"^MVCustom Evaluate Views: input 'trajectory' has 9 cameras for 10 images"):
        run(cls, images=images, trajectory=cams[list(range(9))])
    with pytest.raises(ValueError, match=r"^MVCustom Evaluate Views: input 'images' must be an IMAGE batch"):
        run(cls, images=images[0], trajectory=cams)


def test_without_pose_accuracy_nothing_is_scored(node, run, orbit):
    cams, images = orbit
    report, cpa, rot = run(node("MVC_EvaluateViews"), images=images[:2], trajectory=cams[[0, 1]],
                           pose_accuracy=False).args
    assert math.isnan(cpa) and math.isnan(rot)
