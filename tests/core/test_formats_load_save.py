"""The load/save entry point: format detection, cross-format conversion, atomic writes, argument errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.cameras.formats import (FORMATS, PoseFileError, detect_format, load_camera_file,
                                           load_camera_file_with_meta, save_camera_file)
from mvcustom_core.cameras.formats._common import atomic_write_text

F64 = torch.float64


@pytest.fixture
def cams(generator):
    eye = torch.randn(4, 3, generator=generator, dtype=F64) * 3
    return CameraSet.from_fov(look_at(eye, torch.zeros(3, dtype=F64)), 45.0, (36, 64))


@pytest.mark.parametrize("name, fmt", [("poses.txt", "realestate10k"), ("transforms.json", "transforms_json"),
                                       ("frame_annotations.jgz", "co3d"), ("sparse/0", "colmap")])
def test_every_format_round_trips_through_the_entry_point(tmp_path, cams, name, fmt):
    path = save_camera_file(cams, tmp_path / name, fmt)
    assert detect_format(path) == fmt
    back = load_camera_file(path, image_size=cams.image_size)
    torch.testing.assert_close(back.c2w, cams.c2w, rtol=0, atol=1e-9)
    torch.testing.assert_close(back.K, cams.K, rtol=0, atol=1e-6)


def test_detect_by_name_and_content(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"viewpoint": {}}]))
    assert detect_format(p) == "co3d"
    p.write_text(json.dumps([[0] * 19]))
    assert detect_format(p) == "cameractrl_json"
    p.write_text(json.dumps({"other": 1}))
    with pytest.raises(PoseFileError, match="neither a transforms.json"):
        detect_format(p)
    with pytest.raises(PoseFileError, match="cannot tell the camera format"):
        detect_format(tmp_path / "cams.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoseFileError, match="neither a COLMAP model"):
        detect_format(tmp_path / "empty")
    assert set(FORMATS) == {"realestate10k", "cameractrl_json", "transforms_json", "colmap", "co3d"}


def test_convert_realestate10k_to_colmap_keeps_cameras(realestate_pose_files, tmp_path):
    src = load_camera_file(realestate_pose_files[0])
    out = save_camera_file(src, tmp_path / "colmap", "colmap")
    back = load_camera_file(out)
    # Both sides hold exact rotations (the importer snaps RealEstate10K's rounded ones), so only float rounding
    # of the quaternion conversion remains.
    torch.testing.assert_close(back.c2w, src.c2w, rtol=0, atol=1e-12)
    torch.testing.assert_close(back.K, src.K)


def test_errors(tmp_path, cams):
    with pytest.raises(ValueError, match="unknown camera format 'ply'"):
        save_camera_file(cams, tmp_path / "x.txt", "ply")
    with pytest.raises(FileNotFoundError):
        load_camera_file(tmp_path / "missing.txt")
    cf = load_camera_file_with_meta(save_camera_file(cams, tmp_path / "t.json"))
    with pytest.raises(ValueError, match="does not belong to format 'realestate10k'"):
        save_camera_file(cams, tmp_path / "x.txt", meta=cf.meta)


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "poses.txt"
    atomic_write_text(p, "old\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(p, "new\n")
    assert p.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["poses.txt"]
