"""Reprojection consistency against exact synthetic views, known perturbations and closed-form scores."""

from __future__ import annotations

import math

import pytest
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from kornia.metrics import ssim as kornia_ssim

from mvcustom_core.cameras import CameraSet
from mvcustom_core.eval.reprojection import (MAX_PSNR_DB, masked_psnr, masked_ssim, neighbour_pairs,
                                             reprojection_consistency, warp_into)
from mvcustom_core.synthetic import SyntheticScene, turntable_cameras

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def smooth_views():
    """4 views 10 degrees apart of a smooth-textured scene at 96 px (bilinear resampling is accurate)."""
    cams = turntable_cameras(36, elevation_deg=25.0, radius=2.5, image_size=(96, 96), fov_y_deg=45.0, dtype=DT)[[0, 1, 2, 3]]
    return cams, SyntheticScene(seed=0, max_frequency=4.0).render(cams)


def test_neighbour_pairs():
    src, tgt = neighbour_pairs(4, 1)
    assert sorted(zip(src.tolist(), tgt.tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)]
    src, tgt = neighbour_pairs(4, 1, cyclic=True)
    assert {(0, 3), (3, 0)} <= set(zip(src.tolist(), tgt.tolist())) and len(src) == 8
    assert len(neighbour_pairs(5, 2)[0]) == 2 * (4 + 3)


def test_warp_into_the_same_camera_is_the_identity(smooth_views):
    cams, out = smooth_views
    warped, covisible = warp_into(out.rgb, out.depth, out.depth, cams, cams)
    assert torch.equal(covisible, torch.isfinite(out.depth))
    torch.testing.assert_close(warped, out.rgb * covisible, rtol=0, atol=1e-9)
    assert masked_psnr(warped, out.rgb, covisible).tolist() == [MAX_PSNR_DB] * 4
    torch.testing.assert_close(masked_ssim(warped, out.rgb, covisible), torch.ones(4, dtype=DT), rtol=0, atol=1e-6)


def test_masked_psnr_closed_form(generator):
    a = torch.rand(2, 3, 16, 16, generator=generator, dtype=DT)
    mask = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    mask[:, :, 4:12, 2:9] = True
    b = torch.where(mask, a + 0.1, torch.rand(2, 3, 16, 16, generator=generator, dtype=DT))  # MSE 0.01 inside
    torch.testing.assert_close(masked_psnr(a, b, mask), torch.full((2,), 20.0, dtype=DT), rtol=0, atol=1e-9)
    assert math.isnan(float(masked_psnr(a, b, torch.zeros_like(mask))[0]))


def test_masked_ssim_ignores_pixels_outside_the_mask(generator):
    a = torch.rand(1, 3, 40, 40, generator=generator, dtype=DT)
    mask = torch.zeros(1, 1, 40, 40, dtype=torch.bool)
    mask[..., 5:35, 8:30] = True
    garbage = torch.where(mask, a, torch.rand(1, 3, 40, 40, generator=generator, dtype=DT))
    torch.testing.assert_close(masked_ssim(a, garbage, mask), torch.ones(1, dtype=DT), rtol=0, atol=1e-9)
    # Full mask: the mean of kornia's SSIM map over the pixels 5 or more from the border ('valid' windows).
    b = (a + 0.2 * torch.rand(1, 3, 40, 40, generator=generator, dtype=DT)).clamp(0, 1)
    ref = kornia_ssim(a, b, 11)[..., 5:35, 5:35].mean()
    torch.testing.assert_close(masked_ssim(a, b, torch.ones_like(mask))[0], ref, rtol=1e-9, atol=1e-9)
    assert math.isnan(float(masked_ssim(a, b, torch.zeros_like(mask))[0]))


def test_true_views_are_consistent_and_perturbed_cameras_are_not(smooth_views):
    cams, out = smooth_views
    true = reprojection_consistency(out.rgb, out.depth, cams)
    assert true.mean_psnr > 30.0 and true.mean_ssim > 0.97
    assert true.overlap.min() > 0.5
    # Turn camera 3 by 2 degrees about its own y axis: only the pairs with frame 3 are affected.
    c2w = cams.c2w.clone()
    c2w[3, :3, :3] = c2w[3, :3, :3] @ axis_angle_to_rotation_matrix(torch.tensor([[0.0, math.radians(2.0), 0.0]], dtype=DT))[0]
    bent = reprojection_consistency(out.rgb, out.depth, CameraSet(cams.K, c2w, cams.image_size))
    touches = (bent.src == 3) | (bent.tgt == 3)
    torch.testing.assert_close(bent.psnr[~touches], true.psnr[~touches])
    assert float((true.psnr[touches] - bent.psnr[touches]).min()) > 5.0
    assert float((true.ssim[touches] - bent.ssim[touches]).min()) > 0.03


def test_shuffled_frames_score_low(smooth_views):
    cams, out = smooth_views
    order = torch.tensor([2, 0, 3, 1])
    true = reprojection_consistency(out.rgb, out.depth, cams)
    shuffled = reprojection_consistency(out.rgb[order], out.depth[order], cams)
    assert shuffled.mean_psnr < true.mean_psnr - 5.0


def test_depth_test_drops_occluded_pixels():
    # 40 degrees apart around the default subject: parts hide each other and the ground behind them.
    cams = turntable_cameras(9, elevation_deg=15.0, radius=2.5, image_size=(64, 64), fov_y_deg=50.0, dtype=DT)[[0, 1]]
    out = SyntheticScene(seed=1).render(cams)
    points = torch.where(torch.isfinite(out.depth), out.points, torch.zeros_like(out.points))
    warped, covisible = warp_into(points[[0]], out.depth[[0]], out.depth[[1]], cams[[0]], cams[[1]])
    err = (warped - points[[1]]).norm(dim=1, keepdim=True) / out.depth[[1]]
    # Co-visible pixels fetch the same world point (up to bilinear interpolation inside one pixel).
    assert float(err[covisible].quantile(0.99)) < 0.03
    # Pixels that project inside the source image but fail the depth test land on another surface.
    uv, z = cams[[0]].project(points[[1]].permute(0, 2, 3, 1).reshape(1, -1, 3))
    inside = ((uv >= 0) & (uv <= 64)).all(-1).reshape(1, 1, 64, 64) & (z > 0).reshape(1, 1, 64, 64)
    occluded = inside & torch.isfinite(out.depth[[1]]) & ~covisible
    assert int(occluded.sum()) > 20
    raw = torch.nn.functional.grid_sample(points[[0]], _grid(uv, 64), align_corners=False)
    fetched_err = (raw - points[[1]]).norm(dim=1, keepdim=True) / out.depth[[1]]
    assert float(fetched_err[occluded].median()) > 0.05


def _grid(uv: torch.Tensor, size: int) -> torch.Tensor:
    return (2 * uv / size - 1).reshape(1, size, size, 2)


def test_bad_inputs_name_the_argument(smooth_views):
    cams, out = smooth_views
    with pytest.raises(ValueError, match="depth"):
        reprojection_consistency(out.rgb, out.depth[:, :, :10], cams)
    with pytest.raises(ValueError, match="cams"):
        reprojection_consistency(out.rgb, out.depth, cams[[0, 1]])
