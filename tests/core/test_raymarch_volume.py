"""Ray sampling and volume rendering against closed-form answers."""

from __future__ import annotations

import math

import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.ops.raymarch import (bin_edges, camera_rays, importance_samples, points_along_rays,
                                        stratified_samples)
from mvcustom_core.ops.volume import trunc_exp, volume_render

D = torch.float64


def test_stratified_samples_are_bin_centres_without_jitter():
    t = stratified_samples(0.0, 2.0, 24, (3,), dtype=D)
    expected = (torch.arange(24, dtype=D) + 0.5) * (2.0 / 24)
    torch.testing.assert_close(t, expected.expand(3, 24))


def test_jittered_samples_stay_in_their_bins(generator):
    t = stratified_samples(0.5, 1.5, 10, (4, 5), jitter=True, generator=generator, dtype=D)
    lo = 0.5 + 0.1 * torch.arange(10, dtype=D)
    assert bool(((t >= lo) & (t <= lo + 0.1)).all())
    assert not torch.allclose(t, lo + 0.05)


def test_importance_samples_concentrate_in_a_one_hot_bin():
    edges = bin_edges(0.0, 2.0, 8, dtype=D)
    w = torch.zeros(2, 8, dtype=D)
    w[0, 3] = 1.0
    w[1, 6] = 1.0
    t = importance_samples(edges, w, 16, floor=0.0)
    assert bool(((t[0] >= 0.75) & (t[0] <= 1.0)).all())
    assert bool(((t[1] >= 1.5) & (t[1] <= 1.75)).all())
    assert bool((t.diff(dim=-1) >= 0).all())


def test_importance_samples_of_uniform_weights_are_uniform_quantiles():
    edges = bin_edges(0.0, 1.0, 4, dtype=D)
    t = importance_samples(edges, torch.ones(1, 4, dtype=D), 10)
    torch.testing.assert_close(t[0], (torch.arange(10, dtype=D) + 0.5) / 10)


def test_random_importance_samples_follow_the_pdf(generator):
    edges = bin_edges(0.0, 1.0, 4, dtype=D)
    w = torch.tensor([[1.0, 0.0, 3.0, 0.0]], dtype=D)
    t = importance_samples(edges, w, 20000, floor=0.0, deterministic=False, generator=generator)
    hist = torch.histc(t[0].float(), bins=4, min=0.0, max=1.0) / t.shape[-1]
    torch.testing.assert_close(hist, torch.tensor([0.25, 0.0, 0.75, 0.0]), atol=0.02, rtol=0)


def test_camera_rays_on_a_coarse_grid_keep_the_field_of_view():
    c2w = look_at(torch.tensor([[0.0, 0.0, -3.0]], dtype=D), torch.zeros(3, dtype=D))
    cams = CameraSet.from_fov(c2w, 90.0, (64, 64))
    o, d = camera_rays(cams, 2, 2)
    # 90° fov, cell centres of a 2×2 grid sit at ±half of the half-width: direction (±0.5, ±0.5, 1).
    expected = torch.tensor([0.5, 0.5, 1.0], dtype=D) / math.sqrt(1.5)
    torch.testing.assert_close(d[0, 1, 1], expected)
    torch.testing.assert_close(o[0, 0, 0], torch.tensor([0.0, 0.0, -3.0], dtype=D))
    pts = points_along_rays(o, d, torch.tensor([3.0], dtype=D).expand(1, 2, 2, 1))
    torch.testing.assert_close(pts[0, 1, 1, 0], o[0, 1, 1] + 3.0 * expected)


def test_constant_density_matches_beer_lambert():
    sigma, length, s = 0.7, 2.0, 400
    t = stratified_samples(0.0, length, s, (1,), dtype=D)
    out = volume_render(torch.full((1, s), math.log(sigma), dtype=D), t, length / s,
                        features=torch.ones(1, s, 2, dtype=D))
    expected_opacity = 1 - math.exp(-sigma * length)
    assert math.isclose(out.opacity.item(), expected_opacity, rel_tol=1e-9)
    torch.testing.assert_close(out.features[0], torch.full((2,), expected_opacity, dtype=D))
    # E[t] of the exponential distribution truncated to [0, L], with bin-centre quadrature error O(δ²).
    mean_t = (1 / sigma - (length + 1 / sigma) * math.exp(-sigma * length)) / expected_opacity
    assert math.isclose(out.surface_depth().item(), mean_t, rel_tol=1e-4)


def test_an_opaque_sample_takes_all_the_weight():
    t = torch.linspace(0.1, 1.9, 10, dtype=D)[None]
    raw = torch.full((1, 10), -30.0, dtype=D)
    raw[0, 6] = 30.0
    g = torch.randn(1, 10, 4, dtype=D)
    out = volume_render(raw, t, 0.2, features=g, rgb_logits=torch.zeros(1, 10, 3, dtype=D))
    assert math.isclose(out.opacity.item(), 1.0, abs_tol=1e-9)
    assert math.isclose(out.expected_depth.item(), t[0, 6].item(), rel_tol=1e-9)
    torch.testing.assert_close(out.features[0], g[0, 6])
    torch.testing.assert_close(out.rgb[0], torch.full((3,), 0.5, dtype=D))


def test_weights_match_the_explicit_product_formula(generator):
    raw = torch.randn(3, 7, dtype=D, generator=generator)
    deltas = torch.rand(3, 7, dtype=D, generator=generator) + 0.1
    out = volume_render(raw, torch.zeros(3, 7, dtype=D), deltas)
    alpha = 1 - torch.exp(-torch.exp(raw) * deltas)
    for r in range(3):
        for k in range(7):
            trans = torch.prod(1 - alpha[r, :k])
            assert math.isclose(out.weights[r, k].item(), (alpha[r, k] * trans).item(), rel_tol=1e-10)


def test_trunc_exp_gradient_is_bounded():
    x = torch.tensor([100.0, 0.0], dtype=D, requires_grad=True)
    trunc_exp(x).sum().backward()
    assert math.isclose(x.grad[0].item(), math.exp(15.0))
    assert math.isclose(x.grad[1].item(), 1.0)
