"""Anchor depth: least-squares alignment recovers known scale/shift exactly, disparity handling, ray length → z."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.cameras import CameraSet
from mvcustom_core.inference.anchor_depth import (AnchorDepthError, align_depth, depth_from_image, fit_scale_shift,
                                                  ray_length_to_z)


def _scene_depth(h: int = 12, w: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 1.5 + torch.rand(h, w, generator=g, dtype=torch.float64) * 2.0  # z in [1.5, 3.5]


def test_fit_recovers_known_affine_map_exactly():
    x = torch.linspace(0, 1, 50, dtype=torch.float64)
    s, b = fit_scale_shift(x, 3.25 * x - 0.75)
    assert s == pytest.approx(3.25, abs=1e-12) and b == pytest.approx(-0.75, abs=1e-12)


def test_depth_kind_alignment_recovers_scale_and_shift():
    ref = _scene_depth()
    raw = (ref - 0.4) / 2.5  # a depth map off by scale 2.5 and shift 0.4
    out = align_depth(raw, ref, kind="depth")
    assert out.scale == pytest.approx(2.5, abs=1e-9) and out.shift == pytest.approx(0.4, abs=1e-9)
    torch.testing.assert_close(out.depth.double(), ref, rtol=0, atol=1e-5)


def test_disparity_alignment_is_done_in_inverse_depth():
    ref = _scene_depth()
    disparity = (1.0 / ref - 0.05) / 0.3  # relative inverse depth: 1/z = 0.3·d + 0.05
    out = align_depth(disparity.float(), ref.float(), kind="disparity")
    assert out.scale == pytest.approx(0.3, rel=1e-5) and out.shift == pytest.approx(0.05, abs=1e-5)
    torch.testing.assert_close(out.depth.double(), ref, rtol=1e-5, atol=0)


def test_mask_limits_the_fit_to_trusted_pixels():
    ref = _scene_depth()
    raw = ref / 2.0
    corrupted = ref.clone()
    mask = torch.zeros_like(ref, dtype=torch.bool)
    mask[:6] = True
    corrupted[6:] = 100.0  # the reference is wrong outside the mask
    out = align_depth(raw, corrupted, mask, kind="depth")
    assert out.scale == pytest.approx(2.0, abs=1e-9) and out.shift == pytest.approx(0.0, abs=1e-9)


def test_manual_override_and_median_fallback():
    raw = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    manual = align_depth(raw, _scene_depth(2, 2), kind="depth", scale=2.0, shift=1.0)
    torch.testing.assert_close(manual.depth, raw * 2 + 1)
    # No reference: the median depth lands at the anchor's distance to the origin.
    median = align_depth(raw, kind="depth", center_distance=5.0)
    assert float(median.depth.flatten().median()) == pytest.approx(5.0)
    disp = align_depth(raw, kind="disparity", center_distance=5.0)
    assert float((1 / disp.depth).flatten().median()) == pytest.approx(1 / 5.0)
    with pytest.raises(AnchorDepthError, match="reference depth, a center_distance or a manual scale"):
        align_depth(raw)
    with pytest.raises(AnchorDepthError, match="distinct depths"):
        align_depth(raw, torch.zeros(2, 2), kind="depth")


def test_ray_length_to_z_on_a_fronto_parallel_plane():
    cam = CameraSet.from_fov(torch.eye(4, dtype=torch.float64)[None], 70.0, (10, 14))
    z = 2.0
    length = z * cam.with_image_size((5, 7)).ray_directions()[0] @ torch.tensor([0, 0, 1.0], dtype=torch.float64)
    length = z / length * z  # t = z / cos(angle)
    torch.testing.assert_close(ray_length_to_z(length, cam), torch.full((5, 7), z, dtype=torch.float64))


def test_depth_from_image_averages_channels():
    img = torch.stack([torch.full((3, 4), 0.2), torch.full((3, 4), 0.4), torch.full((3, 4), 0.6)])[None]
    torch.testing.assert_close(depth_from_image(img), torch.full((3, 4), 0.4))
