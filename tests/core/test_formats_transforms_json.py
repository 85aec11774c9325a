"""NeRF / nerfstudio transforms.json: OpenGL axes by hand, intrinsics variants, round trips, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.cameras.formats import (DistortionIgnoredWarning, PoseFileError, load_camera_file_with_meta,
                                           save_camera_file)
from mvcustom_core.cameras.formats.transforms_json import transforms_from_dict, transforms_to_dict

F64 = torch.float64
# Camera at (0, 0, 5) looking at the origin with image up = world +y. OpenCV c2w columns: right (1,0,0),
# down (0,-1,0), forward (0,0,-1). OpenGL columns: right, up = -down = (0,1,0), back = -forward = (0,0,1):
# the identity rotation, the classic NeRF camera on the +z axis.
GL_MATRIX = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 5], [0, 0, 0, 1]]
CV_C2W = torch.tensor([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 5], [0, 0, 0, 1]], dtype=F64)


def test_hand_derived_opengl_to_opencv():
    data = {"fl_x": 100, "fl_y": 110, "cx": 30, "cy": 20, "w": 64, "h": 48,
            "frames": [{"file_path": "a.png", "transform_matrix": GL_MATRIX}]}
    cams, meta = transforms_from_dict(data)
    torch.testing.assert_close(cams.c2w[0], CV_C2W)
    torch.testing.assert_close(cams.K[0], torch.tensor([[100, 0, 30], [0, 110, 20], [0, 0, 1]], dtype=F64))
    assert cams.image_size == (48, 64) and meta.file_paths == ("a.png",)
    out = transforms_to_dict(cams, file_paths=meta.file_paths)
    assert out["frames"][0]["transform_matrix"] == [[float(v) for v in r] for r in GL_MATRIX]


def test_camera_angle_x_and_per_frame_override():
    angle = 2 * math.atan(0.5 * 64 / 80)  # fl_x = 80 for w = 64
    data = {"camera_angle_x": angle, "w": 64, "h": 48,
            "frames": [{"transform_matrix": GL_MATRIX},
                       {"transform_matrix": GL_MATRIX, "fl_x": 90.0, "cy": 25.0}]}
    cams, _ = transforms_from_dict(data)
    torch.testing.assert_close(cams.K[:, 0, 0], torch.tensor([80.0, 90.0], dtype=F64))
    torch.testing.assert_close(cams.K[:, 1, 1], torch.tensor([80.0, 90.0], dtype=F64))  # fl_y defaults to fl_x
    torch.testing.assert_close(cams.K[:, :2, 2], torch.tensor([[32.0, 24.0], [32.0, 25.0]], dtype=F64))


def test_frames_of_other_size_rescale_to_image_size():
    data = {"fl_x": 100, "cx": 32, "cy": 24, "frames": [
        {"transform_matrix": GL_MATRIX, "w": 64, "h": 48},
        {"transform_matrix": GL_MATRIX, "w": 128, "h": 96, "fl_x": 200, "cx": 64, "cy": 48}]}
    with pytest.raises(PoseFileError, match="different image sizes"):
        transforms_from_dict(data)
    cams, _ = transforms_from_dict(data, image_size=(48, 64))
    torch.testing.assert_close(cams.K[1], cams.K[0])


def test_file_round_trip(tmp_path, generator):
    eye = torch.randn(4, 3, generator=generator, dtype=F64) * 2 + torch.tensor([0, 0, 4.0], dtype=F64)
    c2w = look_at(eye, torch.zeros(3, dtype=F64))
    K = CameraSet.from_fov(c2w, 40.0, (30, 40)).K.clone()
    K[2, 0, 0] += 3  # one frame differs: per-frame intrinsics are written
    cams = CameraSet(K=K, c2w=c2w, image_size=(30, 40))
    path = save_camera_file(cams, tmp_path / "transforms.json")
    cf = load_camera_file_with_meta(path)
    assert cf.format == "transforms_json"
    torch.testing.assert_close(cf.cameras.c2w, cams.c2w, rtol=0, atol=1e-12)
    torch.testing.assert_close(cf.cameras.K, cams.K, rtol=0, atol=1e-12)
    again = json.loads(save_camera_file(cf.cameras, tmp_path / "again.json", meta=cf.meta).read_text())
    first = json.loads(path.read_text())
    assert [f["file_path"] for f in again["frames"]] == [f["file_path"] for f in first["frames"]]
    assert [f.get("fl_x") for f in again["frames"]] == [f.get("fl_x") for f in first["frames"]]
    torch.testing.assert_close(torch.tensor([f["transform_matrix"] for f in again["frames"]], dtype=F64),
                               torch.tensor([f["transform_matrix"] for f in first["frames"]], dtype=F64),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("data, msg", [
    ({"fl_x": 1, "w": 4, "h": 4}, "expected a JSON object with a 'frames' list"),
    ({"fl_x": 1, "w": 4, "h": 4, "frames": []}, "'frames' is empty"),
    ({"fl_x": 1, "w": 4, "h": 4, "frames": [{"transform_matrix": [[1, 0, 0]]}]}, r"frames\[0\].transform_matrix"),
    ({"w": 4, "h": 4, "frames": [{"transform_matrix": GL_MATRIX}]}, r"frames\[0\]: no focal length"),
    ({"fl_x": 0, "w": 4, "h": 4, "frames": [{"transform_matrix": GL_MATRIX}]},
     r"frames\[0\] has a non-positive focal length"),
    ({"fl_x": 1, "w": 4, "h": 4, "frames": [{"transform_matrix": GL_MATRIX},
                                            {"transform_matrix": [[2, 0, 0, 0]] + GL_MATRIX[1:]}]},
     r"frames\[1\] rotation is not orthonormal"),
    ({"fl_x": "x", "w": 4, "h": 4, "frames": [{"transform_matrix": GL_MATRIX}]}, r"fl_x: value 0 is 'x'"),
    ({"fl_x": 1, "camera_model": "OPENCV_FISHEYE", "w": 4, "h": 4, "frames": [{"transform_matrix": GL_MATRIX}]},
     "not a pinhole model"),
])
def test_errors_name_file_and_key(tmp_path, data, msg):
    p = tmp_path / "transforms.json"
    p.write_text(json.dumps(data))
    with pytest.raises(PoseFileError, match=msg) as e:
        load_camera_file_with_meta(p, format="transforms_json")
    assert str(p) in str(e.value)


def test_distortion_warns():
    data = {"fl_x": 10, "w": 8, "h": 8, "k1": 0.1, "frames": [{"transform_matrix": GL_MATRIX}]}
    with pytest.warns(DistortionIgnoredWarning, match="k1"):
        transforms_from_dict(data)


def test_nerf_synthetic_style_needs_image_size():
    angle = 0.6911112070083618  # nerf_synthetic lego's camera_angle_x
    data = {"camera_angle_x": angle, "frames": [{"file_path": "./train/r_0", "transform_matrix": GL_MATRIX}]}
    with pytest.raises(PoseFileError, match=r"frames\[0\]: no image size .*pass image_size"):
        transforms_from_dict(data)
    cams, _ = transforms_from_dict(data, image_size=(800, 800))
    assert float(cams.K[0, 0, 0]) == pytest.approx(400 / math.tan(angle / 2), rel=1e-12)
    assert float(cams.K[0, 0, 2]) == 400.0
