"""nodes/_common.py: error wording, ComfyUI layouts, atomic writes, progress/interrupt."""

from __future__ import annotations

import importlib

import pytest
import torch


@pytest.fixture
def common(pack):
    return importlib.import_module(f"{pack.__name__}.nodes._common")


def test_error_wording_uses_the_display_name(common, node):
    err = common.NodeInputError(node("MVC_OrbitTrajectory"), "frames", "must be ≥ 1, got 0")
    assert str(err) == "MVCustom Orbit Trajectory: input 'frames' must be ≥ 1, got 0"
    assert isinstance(err, ValueError) and err.input_name == "frames"


def test_blame_rewords_core_value_errors_only(common):
    with pytest.raises(common.NodeInputError, match=r"^N: input 'file' is invalid: poses.txt line 3: bad$"):
        with common.blame("N", "file"):
            raise ValueError("poses.txt line 3: bad")
    with pytest.raises(KeyError):  # not a user-input problem: left alone
        with common.blame("N", "file"):
            raise KeyError("x")
    pick = common.input_named_in(["radius", "elevation_deg"], "preset")
    assert pick("preset 'orbit': elevation_deg = 95 is outside [-89.9, 89.9]") == "elevation_deg"
    assert pick("radius_start must be positive") == "preset"  # whole words only


def test_layout_conversions(common):
    chw = torch.rand(2, 3, 4, 5, dtype=torch.float64) * 1.2 - 0.1
    img = common.image_from_chw(chw)
    assert img.shape == (2, 4, 5, 3) and img.dtype == torch.float32
    assert img[1, 2, 3, 0] == pytest.approx(float(chw[1, 0, 2, 3].clamp(0, 1)))
    back = common.image_to_chw("N", "image", img)
    torch.testing.assert_close(back, chw.clamp(0, 1).float())
    rgba = torch.rand(1, 4, 5, 4)
    assert common.image_to_chw("N", "image", rgba).shape == (1, 3, 4, 5)
    with pytest.raises(ValueError, match=r"^N: input 'image' must be an IMAGE batch"):
        common.image_to_chw("N", "image", torch.rand(4, 5, 3))
    assert common.image_from_hwc(torch.rand(4, 5, 3)).shape == (1, 4, 5, 3)
    mask = torch.rand(2, 1, 4, 5)
    torch.testing.assert_close(common.mask_from_core(mask), mask[:, 0])
    assert common.mask_from_core(mask[:, 0]).shape == (2, 4, 5)


def test_write_atomically_replaces_and_cleans_up(common, tmp_path):
    target = tmp_path / "sub" / "poses.txt"
    common.write_atomically(target, lambda p: p.write_text("first"))
    seen_suffix = []

    def failing(p):
        seen_suffix.append(p.suffix)
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        common.write_atomically(target, failing)
    assert target.read_text() == "first"  # the old file survives a failed write
    assert seen_suffix == [".txt"]  # writers that pick the format by suffix see the right one
    assert sorted(p.name for p in target.parent.iterdir()) == ["poses.txt"]


def test_progress_reports_and_honours_cancel(common, host, mm):
    progress = common.Progress(4)
    bar = host["comfy.utils"].ProgressBar.instances[-1]
    progress.step()
    progress.callback(3)
    assert (bar.current, bar.total) == (3, 4)
    mm.interrupt_requested = True
    with pytest.raises(mm.InterruptProcessingException):
        progress.step()
    assert bar.current == 3


def test_queue_check_answers_true_or_the_node_input_errors_message(common):
    assert common.queue_check(lambda: None) is True

    def bad():
        raise common.NodeInputError("N", "model", "must name a model file")

    assert common.queue_check(bad) == "N: input 'model' must name a model file"
    with pytest.raises(KeyError):  # anything else is a bug, not a queue-time answer
        common.queue_check(lambda: {}["x"])
