"""FeatureNeRF training losses against the formulas of method.md §6.2, written out with plain loops."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.customization.featurenerf import FeatureNeRFOutput
from mvcustom_core.customization.losses import (
    FeatureNeRFLossWeights, bg_alpha_loss, featurenerf_losses, fg_loss, masked_denoising_loss,
    resize_mask, rgb_loss)
from mvcustom_core.ops import morphology

D = torch.float64


def _output(f: int, h: int, w: int, s: int, seed: int = 0) -> FeatureNeRFOutput:
    g = torch.Generator().manual_seed(seed)
    alphas = torch.rand(f, h, w, s, generator=g, dtype=D)
    opacity = torch.rand(f, h, w, generator=g, dtype=D) * 1.4  # some above 1: the fg loss clamps them
    rgb = torch.rand(f, 3, h, w, generator=g, dtype=D)
    return FeatureNeRFOutput(features=torch.zeros(f, 2, h, w, dtype=D), opacity=opacity,
                             expected_depth=torch.zeros(f, h, w, dtype=D), rgb=rgb, weights=alphas,
                             t=torch.zeros(f, h, w, s, dtype=D), alphas=alphas)


def test_fg_bg_rgb_losses_follow_the_formulas_on_a_non_square_grid():
    f, h, w, s = 2, 3, 5, 4
    out = _output(f, h, w, s)
    g = torch.Generator().manual_seed(1)
    m = torch.rand(f, h, w, generator=g, dtype=D)
    m[0, 0, :3] = torch.tensor([0.0, 0.05, 0.0999], dtype=D)  # clear background (m < 0.1), some soft
    m[1, 2, 4] = 1.0
    image = torch.rand(f, 3, h, w, generator=g, dtype=D)  # already at the grid: area resize is the identity

    fg = bg = 0.0
    rgb_num = rgb_den = 0.0
    for i in range(f):
        for y in range(h):
            for x in range(w):
                mm = float(m[i, y, x])
                fg += (min(max(float(out.opacity[i, y, x]), 0.0), 1.0) - mm) ** 2
                if mm < 0.1:
                    bg += sum(abs(float(a) - mm) * (1 - mm) for a in out.alphas[i, y, x])
                rgb_num += mm * sum((float(out.rgb[i, c, y, x]) - float(image[i, c, y, x])) ** 2 for c in range(3))
                rgb_den += 3 * mm
    fg /= f * h * w
    bg /= f * h * w * s  # mean over every ray and sample, background indicator inside
    assert fg_loss(out, m).item() == pytest.approx(fg, rel=1e-12)
    assert bg_alpha_loss(out, m).item() == pytest.approx(bg, rel=1e-12)
    # The photo is read as float32 (area resize of a float32 image).
    assert rgb_loss(out, image, m).item() == pytest.approx(rgb_num / rgb_den, rel=1e-6)

    weights = FeatureNeRFLossWeights(fg=2.0, bg=3.0, rgb=0.5)
    full = featurenerf_losses(out, m[:, None], image, weights)  # mask [F, 1, h, w], read as float32
    assert full["fg"].item() == pytest.approx(2.0 * fg, rel=1e-6)
    assert full["bg"].item() == pytest.approx(3.0 * bg, rel=1e-6)
    assert full["rgb"].item() == pytest.approx(0.5 * rgb_num / rgb_den, rel=1e-6)
    assert full["total"].item() == pytest.approx(2.0 * fg + 3.0 * bg + 0.5 * rgb_num / rgb_den, rel=1e-6)


def test_mask_is_area_averaged_to_the_block_grid():
    mask = torch.zeros(1, 1, 8, 12, dtype=D)
    mask[0, 0, 0:4, 0:3] = 1.0  # a full cell of the 2x4 grid
    mask[0, 0, 4:8, 3:5] = 1.0  # half of another cell
    m = resize_mask(mask, (2, 4))
    expected = torch.zeros(1, 2, 4, dtype=D)
    expected[0, 0, 0], expected[0, 1, 1] = 1.0, 2.0 / 3.0
    torch.testing.assert_close(m, expected.float())


def _reference_dilation(m: torch.Tensor, size: int) -> torch.Tensor:
    """Max over rows i - size//2 … i + (size-1)//2 and columns alike, inside the image."""
    out = torch.zeros_like(m)
    lo, hi = size // 2, (size - 1) // 2
    h, w = m.shape[-2:]
    for i in range(h):
        for j in range(w):
            out[..., i, j] = m[..., max(0, i - lo):min(h, i + hi + 1), max(0, j - lo):min(w, j + hi + 1)].amax((-1, -2))
    return out


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 7])
def test_dilation_keeps_the_shape_for_odd_and_even_sizes(size):
    g = torch.Generator().manual_seed(size)
    m = (torch.rand(2, 1, 5, 9, generator=g) > 0.85).float() * torch.rand(2, 1, 5, 9, generator=g)
    dilated = morphology.dilate(m, size, outside=float("-inf"))
    torch.testing.assert_close(dilated, _reference_dilation(m, max(size, 1)), rtol=0, atol=0)


@pytest.mark.parametrize("dilate", [1, 4, 7])
def test_denoising_loss_is_the_mean_squared_error_inside_the_dilated_mask(dilate):
    g = torch.Generator().manual_seed(dilate)
    pred, target = torch.randn(2, 4, 6, 10, generator=g), torch.randn(2, 4, 6, 10, generator=g)
    mask = torch.zeros(2, 1, 48, 80)
    mask[0, :, 8:16, 40:48] = 1.0  # latent cell (1, 5) of image 0
    mask[1, :, 44:48, 0:4] = 1.0  # a quarter of latent cell (5, 0) of image 1: still inside
    inside = torch.zeros(2, 1, 6, 10)
    inside[0, :, 1, 5] = inside[1, :, 5, 0] = 1.0
    inside = _reference_dilation(inside, dilate)
    err = (pred - target).square()
    expected = (err * inside).sum() / (inside.sum() * 4)
    torch.testing.assert_close(masked_denoising_loss(pred, target, mask, dilate=dilate), expected)
    torch.testing.assert_close(masked_denoising_loss(pred, target, None), err.mean())
