"""Load/Save trajectory nodes against mvcustom_core.cameras.formats, with ComfyUI's folders in tmp."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from mvcustom_core.cameras.formats import FORMATS, load_camera_file
from mvcustom_core.trajectories import make_trajectory


def _same_cameras(a, b, atol=1e-6):
    assert a.image_size == b.image_size
    torch.testing.assert_close(a.K.double(), b.K.double(), atol=atol, rtol=0)
    torch.testing.assert_close(a.c2w.double(), b.c2w.double(), atol=atol, rtol=0)


def test_file_combo_lists_camera_files_and_colmap_folders(node, comfy_dirs):
    inp = comfy_dirs["input"]
    (inp / "poses").mkdir()
    (inp / "poses" / "a.txt").write_text("x")
    (inp / "b.json").write_text("[]")
    (inp / "picture.png").write_bytes(b"")
    (inp / ".hidden.txt").write_text("x")
    (inp / "scene" / "sparse").mkdir(parents=True)
    for name in ("cameras.txt", "images.txt", "points3D.txt"):
        (inp / "scene" / "sparse" / name).write_text("")
    combo = node("MVC_LoadTrajectory").GET_SCHEMA().inputs[0]
    assert combo.id == "file"
    assert combo.options == ["b.json", "poses/a.txt", "scene/sparse"]


def test_load_matches_the_core_reader(node, run, comfy_dirs, realestate_pose_files):
    src = realestate_pose_files[0]
    shutil.copy(src, comfy_dirs["input"] / src.name)
    load = node("MVC_LoadTrajectory")
    own = run(load, file=src.name, format="auto", width=0, height=0).args[0]
    _same_cameras(own, load_camera_file(src), atol=0)
    resized = run(load, file=src.name, format="realestate10k", width=320, height=192).args[0]
    _same_cameras(resized, load_camera_file(src, image_size=(192, 320)), atol=0)
    assert resized.image_size == (192, 320)


def test_load_errors_name_node_and_input(node, run, comfy_dirs):
    load = node("MVC_LoadTrajectory")
    with pytest.raises(ValueError, match=r"^MVCustom Load Trajectory: input 'file' must name a camera file or COLMAP "
                                         r"folder in ComfyUI's input folder; 'nope.txt' is not one"):
        run(load, file="nope.txt")
    assert load.validate_inputs(file="nope.txt").startswith("MVCustom Load Trajectory: input 'file'")
    (comfy_dirs["input"] / "bad.txt").write_text("https://example.com\n0 0.5 0.9 0.5 0.5 0 0 1 0 0\n")
    assert load.validate_inputs(file="bad.txt") is True
    with pytest.raises(ValueError, match=r"^MVCustom Load Trajectory: input 'file' 'bad\.txt' could not be read as a "
                                         r"camera file: bad\.txt.*line 2") as raised:
        run(load, file="bad.txt")
    assert str(comfy_dirs["input"]) not in str(raised.value)  # the server's folders are not shown
    with pytest.raises(ValueError, match=r"^MVCustom Load Trajectory: input 'width' and 'height' must both be 0"):
        run(load, file="bad.txt", width=64, height=0)


def test_fingerprint_changes_when_the_file_changes(node, comfy_dirs):
    load = node("MVC_LoadTrajectory")
    path = comfy_dirs["input"] / "c.txt"
    path.write_text("one")
    first = load.fingerprint_inputs(file="c.txt")
    path.write_text("two, longer")
    assert load.fingerprint_inputs(file="c.txt") != first


@pytest.mark.parametrize("fmt", FORMATS)
def test_save_round_trips_through_the_output_folder(node, run, comfy_dirs, fmt):
    cams = make_trajectory("orbit", 4, image_size=(48, 64), fov_y_deg=50.0, elevation_deg=20.0)
    save = node("MVC_SaveTrajectory")
    first = run(save, trajectory=cams, filename_prefix="runs/traj", format=fmt)
    second = run(save, trajectory=cams, filename_prefix="runs/traj", format=fmt)
    assert first.args[0].startswith("runs/traj_00001_") and second.args[0].startswith("runs/traj_00002_")
    assert "saved runs/traj_00001_" in first.ui.value
    written = comfy_dirs["output"] / first.args[0]
    assert written.exists()
    _same_cameras(load_camera_file(written, format=fmt, image_size=cams.image_size), cams)
    leftovers = [n for _, _, files in os.walk(comfy_dirs["output"]) for n in files if n.startswith(".")]
    assert leftovers == []  # the atomic write left no temporary file behind


def test_save_refuses_a_prefix_outside_the_output_folder(node, run, comfy_dirs):
    cams = make_trajectory("static", 1)
    with pytest.raises(ValueError, match=r"^MVCustom Save Trajectory: input 'filename_prefix' must be a path inside "
                                         r"ComfyUI's output folder"):
        run(node("MVC_SaveTrajectory"), trajectory=cams, filename_prefix="../../escape", format="realestate10k")
    assert list(comfy_dirs["output"].iterdir()) == []
