"""COLMAP text/binary models: hand-derived quaternion numbers, pycolmap cross-check, round trips, errors."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.cameras.formats import (DistortionIgnoredWarning, PoseFileError, load_camera_file_with_meta,
                                           save_camera_file)

F64 = torch.float64
CV_C2W = torch.tensor([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 5], [0, 0, 0, 1]], dtype=F64)


def _model(folder, cameras, images):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cameras.txt").write_text("# CAMERA_ID MODEL WIDTH HEIGHT PARAMS\n" + cameras)
    (folder / "images.txt").write_text("# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME\n" + images)
    return folder


def test_hand_derived_camera(tmp_path):
    # Camera at (0,0,5) looking at the origin, image up = +y: w2c R = diag(1,-1,-1) (180° about x), so
    # q = (cos 90°, sin 90°·(1,0,0)) = (0, 1, 0, 0) and t = -R c = (0, 0, 5).
    folder = _model(tmp_path / "m", "1 SIMPLE_PINHOLE 64 48 50 32 24\n2 PINHOLE 64 48 50 55 30 20\n",
                    "7 0 1 0 0 0 0 5 1 b.png\n\n3 0 1 0 0 0 0 5 2 a.png\n1 2 -1 3.5 4 -1\n")
    cf = load_camera_file_with_meta(folder / "images.txt")
    assert cf.format == "colmap" and cf.meta.image_names == ("a.png", "b.png") and cf.meta.image_ids == (3, 7)
    torch.testing.assert_close(cf.cameras.c2w, CV_C2W.expand(2, 4, 4))
    torch.testing.assert_close(cf.cameras.K[0], torch.tensor([[50, 0, 30], [0, 55, 20], [0, 0, 1]], dtype=F64))
    torch.testing.assert_close(cf.cameras.K[1], torch.tensor([[50, 0, 32], [0, 50, 24], [0, 0, 1]], dtype=F64))
    # Written back: the same numbers (qw >= 0 kept), PINHOLE cameras.
    out = save_camera_file(cf.cameras, tmp_path / "w", meta=cf.meta)
    lines = [ln.split() for ln in (out / "images.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert [float(v) for v in lines[0][1:8]] == [0, 1, 0, 0, 0, 0, 5] and lines[0][9] == "a.png"


def _random_cams(generator, n=5):
    eye = torch.randn(n, 3, generator=generator, dtype=F64) * 3
    c2w = look_at(eye, torch.randn(3, generator=generator, dtype=F64) * 0.1)
    K = CameraSet.from_fov(c2w, 50.0, (48, 64)).K.clone()
    K[1, 0, 0] *= 1.1  # a second camera id
    return CameraSet(K=K, c2w=c2w, image_size=(48, 64))


@pytest.mark.parametrize("binary", [False, True])
def test_round_trip_and_pycolmap_agrees(tmp_path, generator, binary):
    pycolmap = pytest.importorskip("pycolmap")
    cams = _random_cams(generator)
    folder = save_camera_file(cams, tmp_path / "sparse", binary=binary)
    back = load_camera_file_with_meta(folder)
    torch.testing.assert_close(back.cameras.c2w, cams.c2w, rtol=0, atol=1e-12)
    torch.testing.assert_close(back.cameras.K, cams.K, rtol=0, atol=1e-12)
    # An independent reader: pycolmap's cam_from_world and calibration matrix equal our w2c and K.
    rec = pycolmap.Reconstruction(str(folder))
    for image in rec.images.values():
        i = int(image.name.split("_")[1].split(".")[0])
        pose = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
        torch.testing.assert_close(torch.tensor(pose.matrix(), dtype=F64), cams.w2c[i, :3], rtol=0, atol=1e-12)
        K = rec.cameras[image.camera_id].calibration_matrix()
        torch.testing.assert_close(torch.tensor(K, dtype=F64), cams.K[i], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cameras, images, msg", [
    ("1 PINHOLE 64 48 50 50 32\n", "1 1 0 0 0 0 0 0 1 a.png\n\n", "cameras.txt: line 2: model PINHOLE takes 4"),
    ("1 FISHEYE 64 48 50 32 24\n", "1 1 0 0 0 0 0 0 1 a.png\n\n", "cameras.txt: line 2: camera model 'FISHEYE'"),
    ("1 PINHOLE 64 48 0 50 32 24\n", "1 1 0 0 0 0 0 0 1 a.png\n\n", "images.txt line 2 has a non-positive focal"),
    ("1 PINHOLE 64 48 50 50 32 24\n", "1 1 0 0 0 0 0 0 9 a.png\n\n", "images.txt: line 2: camera id 9"),
    ("1 PINHOLE 64 48 50 50 32 24\n", "1 2 0 0 0 0 0 0 1 a.png\n\n", "images.txt: line 2: quaternion .* norm 2"),
    ("1 PINHOLE 64 48 50 50 32 24\n", "1 1 0 0 x 0 0 0 1 a.png\n\n", "images.txt: line 2: value 3 is 'x'"),
    ("1 PINHOLE 64 48 50 50 32 24\n", "1 1 0 0 0 0 nan 0 1 a.png\n\n", "images.txt line 2: camera-to-world"),
    ("1 PINHOLE 64 48 50 50 32 24\n", "1 1 0 0 0 0 0 0 1\n", "images.txt: line 2: expected 'IMAGE_ID"),
    ("", "1 1 0 0 0 0 0 0 1 a.png\n\n", "cameras.txt: no cameras"),
    ("1 PINHOLE 64 48 50 50 32 24\n", "", "images.txt: no images"),
])
def test_errors_name_file_and_line(tmp_path, cameras, images, msg):
    folder = _model(tmp_path / "m", cameras, images)
    with pytest.raises(PoseFileError, match=msg):
        load_camera_file_with_meta(folder)


def test_distortion_warns(tmp_path):
    folder = _model(tmp_path / "m", "1 SIMPLE_RADIAL 64 48 50 32 24 0.1\n", "1 1 0 0 0 0 0 0 1 a.png\n\n")
    with pytest.warns(DistortionIgnoredWarning, match="SIMPLE_RADIAL"):
        load_camera_file_with_meta(folder)


def test_hand_derived_half_turn_about_tilted_axis(tmp_path):
    # Camera at (5, 0, 0) looking at the origin, image up = +y: c2w columns right (0,0,-1), down (0,-1,0),
    # forward (-1,0,0); that matrix is symmetric, so w2c R is the same: a half turn about n = (1, 0, -1)/√2,
    # q = (0, 1/√2, 0, -1/√2), t = -R c = (0, 0, 5).
    h = 0.5 ** 0.5
    folder = _model(tmp_path / "m", "1 PINHOLE 64 48 50 50 32 24\n", f"1 0 {h!r} 0 {-h!r} 0 0 5 1 x.png\n\n")
    cams = load_camera_file_with_meta(folder).cameras
    expected = torch.tensor([[0, 0, -1, 5], [0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]], dtype=F64)
    torch.testing.assert_close(cams.c2w[0], expected, rtol=0, atol=1e-12)
