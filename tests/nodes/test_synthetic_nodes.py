"""Synthetic subject views node against SyntheticScene.render, plus its progress and interrupt handling."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.synthetic import SUBJECTS, SyntheticScene, turntable_cameras
from mvcustom_core.trajectories import make_trajectory

SMALL = dict(views=2, width=20, height=16, supersample=1, seed=5, subject="default", elevation_deg=25.0,
             radius=2.5, fov_y_deg=40.0, max_frequency=8.0)


def test_turntable_views_equal_the_core_render(node, run):
    images, masks, cams = run(node("MVC_SyntheticSubjectViews"), **SMALL).args
    expected_cams = turntable_cameras(2, elevation_deg=25.0, radius=2.5, image_size=(16, 20), fov_y_deg=40.0,
                                      target=SUBJECTS["default"].center)
    torch.testing.assert_close(cams.c2w, expected_cams.c2w)
    ref = SyntheticScene(seed=5, subject="default", max_frequency=8.0).render(expected_cams)
    assert images.shape == (2, 16, 20, 3) and masks.shape == (2, 16, 20)
    assert images.dtype == masks.dtype == torch.float32
    torch.testing.assert_close(images, ref.rgb.permute(0, 2, 3, 1).float())
    torch.testing.assert_close(masks, ref.mask.reshape(2, 16, 20).float())
    assert 0.02 < masks.mean() < 0.9  # the subject is in view, not filling it


def test_custom_trajectory_is_rendered_and_passed_through(node, run):
    cams = make_trajectory("orbit", 2, image_size=(12, 12), fov_y_deg=45.0, radius=2.0, elevation_deg=10.0)
    images, masks, out_cams = run(node("MVC_SyntheticSubjectViews"), **SMALL, custom_trajectory=cams).args
    assert out_cams is cams
    assert images.shape == (2, 12, 12, 3)
    ref = SyntheticScene(seed=5, max_frequency=8.0).render(cams)
    torch.testing.assert_close(images, ref.rgb.permute(0, 2, 3, 1).float())


def test_seed_changes_the_texture_not_the_mask(node, run):
    cls = node("MVC_SyntheticSubjectViews")
    a = run(cls, **{**SMALL, "seed": 1, "views": 1}).args
    b = run(cls, **{**SMALL, "seed": 2, "views": 1}).args
    torch.testing.assert_close(a[1], b[1])
    assert (a[0] - b[0]).abs().mean() > 0.01


def test_progress_counts_views_and_cancel_stops(node, run, host, mm):
    bar_cls = host["comfy.utils"].ProgressBar
    before = len(bar_cls.instances)
    run(node("MVC_SyntheticSubjectViews"), **SMALL)
    bar = bar_cls.instances[before]
    assert (bar.total, bar.current) == (2, 2)
    mm.interrupt_requested = True
    with pytest.raises(mm.InterruptProcessingException):
        run(node("MVC_SyntheticSubjectViews"), **SMALL)


def test_bad_inputs_name_node_and_input(node, run):
    cls = node("MVC_SyntheticSubjectViews")
    with pytest.raises(ValueError, match=r"^MVCustom Synthetic Subject Views: input 'subject' must be one of"):
        run(cls, **{**SMALL, "subject": "teapot"})
    with pytest.raises(ValueError, match=r"^MVCustom Synthetic Subject Views: input 'views' must be ≥ 1, got 0"):
        run(cls, **{**SMALL, "views": 0})
    with pytest.raises(ValueError, match=r"^MVCustom Synthetic Subject Views: input 'custom_trajectory' must be"):
        run(cls, **SMALL, custom_trajectory="orbit")
