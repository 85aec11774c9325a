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
