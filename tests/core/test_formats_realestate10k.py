"""RealEstate10K / CameraCtrl pose text files and CAMERACTRL_POSES lists: round trips, hand-derived numbers, errors."""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.cameras import CameraSet
from mvcustom_core.cameras.formats import (PoseFileError, cameractrl_resize, cameras_from_cameractrl_poses,
                                           cameras_to_cameractrl_poses, load_camera_file_with_meta, save_camera_file)
from mvcustom_core.cameras.formats.realestate10k import parse_realestate10k

# Camera at (0, 0, 5) looking at the origin, image up = world +y: OpenCV c2w columns right (1,0,0),
# down (0,-1,0), forward (0,0,-1). Its world-to-camera is diag(1,-1,-1) with t = -R c = (0, 0, 5).
W2C_ROW = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 5]
GOOD_ROW = [1000, 0.5, 0.8, 0.5, 0.5, 0, 0] + W2C_ROW


def _text(rows, url="https://www.youtube.com/watch?v=test"):
    return "\n".join([url] + [" ".join(str(v) for v in r) for r in rows]) + "\n"


def _numbers(text):
    lines = text.splitlines()
    return lines[0], [[float(t) for t in line.split()] for line in lines[1:] if line.strip()]


def test_hand_derived_camera():
    cams, meta = parse_realestate10k(_text([GOOD_ROW]), image_size=(720, 1280))
    assert meta.timestamps == (1000.0,)
    torch.testing.assert_close(cams.K[0], torch.tensor([[640.0, 0, 640], [0, 576, 360], [0, 0, 1]],
                                                       dtype=torch.float64))
    torch.testing.assert_close(cams.centers[0], torch.tensor([0, 0, 5.0], dtype=torch.float64))
    torch.testing.assert_close(cams.forward[0], torch.tensor([0, 0, -1.0], dtype=torch.float64))
    # The origin projects to the principal point at depth 5.
    uv, z = cams.project(torch.zeros(1, 3, dtype=torch.float64))
    torch.testing.assert_close(uv[0, 0], torch.tensor([640.0, 360.0], dtype=torch.float64))
    assert float(z[0, 0]) == pytest.approx(5.0)


def test_real_files_round_trip_numbers(realestate_pose_files, tmp_path):
    for path in realestate_pose_files:
        cf = load_camera_file_with_meta(path)
        assert cf.format == "realestate10k"
        out = save_camera_file(cf.cameras, tmp_path / path.name, meta=cf.meta)
        url_a, rows_a = _numbers(path.read_text())
        url_b, rows_b = _numbers(out.read_text())
        assert url_a == url_b
        assert len(rows_a) == len(rows_b) == len(cf.cameras)
        a, b = torch.tensor(rows_a, dtype=torch.float64), torch.tensor(rows_b, dtype=torch.float64)
        assert torch.equal(a[:, 0], b[:, 0]), f"{path.name}: timestamps changed"
        err = float((a - b).abs().max())
        assert err <= 1e-6, f"{path.name}: max deviation {err:g}"
        # Rotations are snapped to exact rotations on the world-to-camera side, so translations come back exactly.
        torch.testing.assert_close(b[:, [10, 14, 18]], a[:, [10, 14, 18]], rtol=0, atol=1e-12)
        R = cf.cameras.rotations
        torch.testing.assert_close(R.transpose(-1, -2) @ R, torch.eye(3, dtype=torch.float64).expand_as(R),
                                   rtol=0, atol=1e-14)


def test_round_trip_at_other_image_size_keeps_normalized_intrinsics(realestate_pose_files, tmp_path):
    path = realestate_pose_files[0]
    cf = load_camera_file_with_meta(path, image_size=(256, 384))
    assert cf.cameras.image_size == (256, 384)
    _, rows = _numbers(path.read_text())
    torch.testing.assert_close(cf.cameras.normalized_intrinsics(),
                               torch.tensor(rows, dtype=torch.float64)[:, 1:5], rtol=0, atol=1e-12)


def test_18_value_variant_round_trips(tmp_path):
    p = tmp_path / "chaojie.txt"
    p.write_text(_text([GOOD_ROW[1:], GOOD_ROW[1:]]))
    cf = load_camera_file_with_meta(p)
    assert cf.meta.timestamps is None
    out = save_camera_file(cf.cameras, tmp_path / "back.txt", meta=cf.meta)
    _, rows = _numbers(out.read_text())
    assert all(len(r) == 18 for r in rows)
    torch.testing.assert_close(torch.tensor(rows), torch.tensor([GOOD_ROW[1:]] * 2, dtype=torch.float32),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("row, line_text", [
    (GOOD_ROW[:-1], "line 3 has 18 values, expected 19"),
    (GOOD_ROW[:7] + ["abc"] + GOOD_ROW[8:], "line 3: value 7 is 'abc', expected a number"),
    (GOOD_ROW[:7] + [2, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 5], "line 3 rotation is not orthonormal"),
    (GOOD_ROW[:1] + [0.0] + GOOD_ROW[2:], "line 3 has a non-positive focal length"),
    (GOOD_ROW[:2] + ["nan"] + GOOD_ROW[3:], "line 3: intrinsics contains a non-finite value"),
    (GOOD_ROW[:-1] + ["inf"], "line 3: camera-to-world contains a non-finite value"),
])
def test_malformed_line_names_file_and_line(tmp_path, row, line_text):
    p = tmp_path / "bad.txt"
    p.write_text(_text([GOOD_ROW, row, GOOD_ROW]))
    with pytest.raises(PoseFileError) as e:
        load_camera_file_with_meta(p)
    assert str(p) in str(e.value)
    assert line_text in str(e.value)


@pytest.mark.parametrize("text", ["", "https://www.youtube.com/watch?v=x\n", "https://x\n\n   \n"])
def test_empty_file(tmp_path, text):
    p = tmp_path / "empty.txt"
    p.write_text(text)
    with pytest.raises(PoseFileError, match=f"{p}: no pose lines"):
        load_camera_file_with_meta(p)


# ---------------------------------------------------------------- CAMERACTRL_POSES


def test_cameractrl_poses_aspect_fix_matches_cameractrl_formula():
    # hehao13/CameraCtrl inference.py: pose 1280x720 rendered at 384x256 (W x H). W0/H0 = 16/9 > 3/2, so
    # fx_px = fx * H * W0/H0 (resized_ori_w = H * ratio; fx *= resized_ori_w / W, then K = fx * W).
    row = [0, 0.474812461, 0.844111024, 0.5, 0.5, 0, 0] + W2C_ROW
    cams = cameras_from_cameractrl_poses([row], image_size=(256, 384))
    fx = 0.474812461 * 256 * 1280 / 720
    torch.testing.assert_close(cams.K[0], torch.tensor([[fx, 0, 192], [0, 0.844111024 * 256, 128], [0, 0, 1]],
                                                       dtype=torch.float64))
    # A target wider than 16:9 (256 x 512, H x W) keeps fx and grows fy: fy_px = fy * W * H0/W0.
    cams = cameras_from_cameractrl_poses([row], image_size=(256, 512))
    assert float(cams.K[0, 0, 0]) == pytest.approx(0.474812461 * 512, rel=1e-12)
    assert float(cams.K[0, 1, 1]) == pytest.approx(0.844111024 * 512 * 720 / 1280, rel=1e-12)
    # cameractrl_resize from the 720x1280 source applies the same fix.
    src = cameras_from_cameractrl_poses([row])
    assert src.image_size == (720, 1280)
    torch.testing.assert_close(cameractrl_resize(src, (256, 384)).K,
                               cameras_from_cameractrl_poses([row], image_size=(256, 384)).K)


def test_cameractrl_poses_round_trip(generator):
    from mvcustom_core.cameras import look_at
    eye = torch.randn(5, 3, generator=generator, dtype=torch.float64) * 3
    cams = CameraSet.from_fov(look_at(eye, torch.zeros(3, dtype=torch.float64)), 45.0, (256, 384))
    rows = cameras_to_cameractrl_poses(cams, timestamps=[10, 20, 30, 40, 50])
    assert all(len(r) == 19 for r in rows) and rows[2][0] == 30.0 and rows[0][5:7] == [384.0, 256.0]
    back = cameras_from_cameractrl_poses(rows)
    torch.testing.assert_close(back.c2w, cams.c2w, rtol=0, atol=1e-12)
    torch.testing.assert_close(back.K, cams.K, rtol=0, atol=1e-12)
    # WanVideoWrapper assumes a 1280x720 source: pre-divided intrinsics give the cameras back through the fix.
    rows = cameras_to_cameractrl_poses(cams, source_size=(720, 1280))
    torch.testing.assert_close(cameras_from_cameractrl_poses(rows, image_size=(256, 384)).K, cams.K,
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("poses, msg", [
    ([], "CAMERACTRL_POSES is empty"),
    ([GOOD_ROW[:-1]], "row 0 has 18 values, expected 19"),
    ([GOOD_ROW, GOOD_ROW[:7] + [None] + GOOD_ROW[8:]], "row 1: value 7 is None"),
    ([GOOD_ROW[:5] + [-1, 720] + W2C_ROW], "row 0 has source width/height"),
])
def test_cameractrl_poses_errors(poses, msg):
    with pytest.raises(PoseFileError, match=msg):
        cameras_from_cameractrl_poses(poses)


def test_cameractrl_json_file_round_trip(tmp_path):
    rows = [GOOD_ROW[:5] + [1280, 720] + W2C_ROW, [2000] + GOOD_ROW[1:5] + [1280, 720] + W2C_ROW]
    p = tmp_path / "poses.json"
    import json
    p.write_text(json.dumps(rows))
    cf = load_camera_file_with_meta(p)
    assert cf.format == "cameractrl_json" and cf.meta.timestamps == (1000.0, 2000.0)
    out = save_camera_file(cf.cameras, tmp_path / "back.json", format="cameractrl_json", meta=cf.meta)
    back = json.loads(out.read_text())
    assert max(abs(a - b) for ra, rb in zip(rows, back) for a, b in zip(ra, rb)) <= 1e-12
    assert not math.isnan(back[0][0])
