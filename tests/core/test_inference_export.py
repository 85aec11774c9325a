"""Export: transforms.json round-trips the cameras, PNGs decode to the frames, PLY points equal the unprojected
anchor depth (binary and ASCII)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.cameras.formats import load_camera_file
from mvcustom_core.inference.export import anchor_point_cloud, export_views, read_ply


def _cams(n: int = 3) -> CameraSet:
    az = torch.linspace(-0.4, 0.4, n, dtype=torch.float64)
    eye = torch.stack([2 * torch.sin(az), torch.full_like(az, -0.5), -2 * torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3, dtype=torch.float64)), 50.0, (24, 32))


@pytest.mark.parametrize("binary", [True, False])
def test_export_round_trips_cameras_frames_and_points(tmp_path, binary):
    cams = _cams()
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(3, 3, 24, 32, generator=g)
    depth = 1.0 + torch.rand(12, 16, generator=g, dtype=torch.float64)
    depth[0, :4] = 0  # invalid pixels give no points
    result = export_views(tmp_path, frames, cams, anchor=1, anchor_depth=depth, binary_ply=binary)

    back = load_camera_file(result.transforms)
    torch.testing.assert_close(back.c2w, cams.c2w, rtol=0, atol=1e-6)
    torch.testing.assert_close(back.K, cams.K, rtol=0, atol=1e-6)
    png = torch.from_numpy(np.array(Image.open(result.images[2]))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(png, frames[2], rtol=0, atol=0.5 / 255 + 1e-6)

    points, colours = read_ply(result.ply)
    assert points.shape == (12 * 16 - 4, 3) and colours.dtype == torch.uint8
    # Ground truth: each valid pixel centre unprojected by hand, P = c2w · (z · K⁻¹ [u, v, 1]).
    cam = cams[1].with_image_size((12, 16))
    v, u = torch.meshgrid(torch.arange(12.0) + 0.5, torch.arange(16.0) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1).double()[depth > 0]
    cam_pts = (pix @ torch.linalg.inv(cam.K[0]).T) * depth[depth > 0][:, None]
    world = cam_pts @ cam.c2w[0, :3, :3].T + cam.c2w[0, :3, 3]
    torch.testing.assert_close(points, world.float(), rtol=0, atol=1e-6)
    assert not list(tmp_path.glob("**/.*"))  # no temporary files left


def test_point_colours_come_from_the_anchor_image():
    cam = _cams(1)
    image = torch.zeros(3, 24, 32)
    image[0] = 1.0
    _, colours = anchor_point_cloud(torch.ones(24, 32), cam, image)
    assert colours.shape == (24 * 32, 3) and (colours[:, 0] == 255).all() and (colours[:, 1:] == 0).all()


def test_frame_count_mismatch_raises(tmp_path):
    with pytest.raises(ValueError, match="3 cameras"):
        export_views(tmp_path, torch.zeros(2, 3, 24, 32), _cams())


def test_transforms_json_uses_the_nerf_opengl_camera_axes(tmp_path):
    """Ground truth by hand: in the file's OpenGL/NeRF convention the camera looks down -z with y up, so
    ``u = cx + fx·x / (-z)``, ``v = cy - fy·y / (-z)``; that must land where the OpenCV cameras project."""
    import json

    cams = _cams()
    result = export_views(tmp_path, torch.rand(3, 3, 24, 32), cams)
    data = json.loads(result.transforms.read_text())
    assert (data["w"], data["h"]) == (32, 24)
    fx, fy, cx, cy = data["fl_x"], data["fl_y"], data["cx"], data["cy"]
    assert abs(data["camera_angle_x"] - 2 * np.arctan(0.5 * 32 / fx)) < 1e-9
    points = torch.tensor([[0.2, 0.3, -0.1], [-0.4, 0.1, 0.25]], dtype=torch.float64)
    uv_cv, z_cv = cams.project(points)
    for i, frame in enumerate(data["frames"]):
        assert frame["file_path"] == f"images/frame_{i:05d}.png"
        w2c = torch.linalg.inv(torch.tensor(frame["transform_matrix"], dtype=torch.float64))
        p = points @ w2c[:3, :3].T + w2c[:3, 3]
        assert (p[:, 2] < 0).all()  # in front of an OpenGL camera
        uv_gl = torch.stack([cx + fx * p[:, 0] / -p[:, 2], cy - fy * p[:, 1] / -p[:, 2]], -1)
        torch.testing.assert_close(uv_gl, uv_cv[i], rtol=0, atol=1e-9)
        torch.testing.assert_close(-p[:, 2], z_cv[i], rtol=0, atol=1e-9)


@pytest.mark.parametrize("binary", [True, False])
def test_ply_header_and_records_follow_the_standard_layout(tmp_path, binary):
    """Parsed independently of read_ply: exact header lines, then x y z float32 and red green blue uchar."""
    import struct

    from mvcustom_core.inference.export import write_ply

    points = torch.tensor([[0.5, -1.25, 3.0], [1e-3, 2.0, -7.5]])
    colours = torch.tensor([[255, 0, 7], [1, 128, 254]], dtype=torch.uint8)
    raw = write_ply(tmp_path / "p.ply", points, colours, binary=binary).read_bytes()
    header, body = raw.split(b"end_header\n", 1)
    assert header.decode("ascii").splitlines() == [
        "ply", "format binary_little_endian 1.0" if binary else "format ascii 1.0",
        "comment MVCustom anchor point cloud", "element vertex 2",
        "property float x", "property float y", "property float z",
        "property uchar red", "property uchar green", "property uchar blue"]
    if binary:
        assert len(body) == 2 * 15
        rows = [struct.unpack("<fffBBB", body[15 * i:15 * (i + 1)]) for i in range(2)]
    else:
        rows = [tuple(float(t) for t in line.split()) for line in body.decode("ascii").splitlines()]
    assert [r[:3] for r in rows] == [tuple(np.float32(x).item() for x in p) for p in points.tolist()]
    assert [tuple(int(c) for c in r[3:]) for r in rows] == [tuple(c) for c in colours.tolist()]


def test_anchor_index_counts_from_the_end_and_rejects_out_of_range(tmp_path):
    cams = _cams()
    frames = torch.zeros(3, 3, 24, 32)
    frames[2, 1] = 1.0  # only the last frame is green
    depth = torch.ones(12, 16)
    _, colours = read_ply(export_views(tmp_path / "a", frames, cams, anchor=-1, anchor_depth=depth).ply)
    assert (colours == torch.tensor([0, 255, 0], dtype=torch.uint8)).all()
    for bad in (3, -4):
        with pytest.raises(ValueError, match="anchor"):
            export_views(tmp_path / "b", frames, cams, anchor=bad, anchor_depth=depth)
    assert not (tmp_path / "b").exists()  # refused before writing anything
