"""FeatureNeRF: projection convention, initial state, chunking and sampling."""

from __future__ import annotations

import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.customization.encoding import positional_encoding
from mvcustom_core.customization.featurenerf import FeatureNeRF, FeatureNeRFConfig

D = torch.float64


def _ring(n, radius=1.0, size=(16, 16)):
    az = torch.arange(n, dtype=D) * (2 * torch.pi / n)
    eye = torch.stack([radius * torch.sin(az), torch.full_like(az, -0.3), -radius * torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3, dtype=D)), 45.0, size)


def test_positional_encoding_layout_and_frequencies():
    x = torch.tensor([[0.25, -0.5]], dtype=D)
    enc = positional_encoding(x, 4)  # k = -2..1 -> frequencies π/4, π/2, π, 2π
    assert enc.shape == (1, 16)
    freqs = torch.pi * torch.tensor([0.25, 0.5, 1.0, 2.0], dtype=D)
    expected_sin = torch.sin(freqs[:, None] * x[0][None, :]).flatten()
    torch.testing.assert_close(enc[0, :8], expected_sin)
    torch.testing.assert_close(enc[0, 8:], torch.cos(freqs[:, None] * x[0][None, :]).flatten())


def test_reference_sampling_reads_the_pixel_a_point_projects_to():
    cams = _ring(2, size=(8, 12))
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=2)).double()
    # Feature map at half resolution whose channels hold the image-space u and v of each cell centre.
    h, w = 4, 6
    v, u = torch.meshgrid((torch.arange(h, dtype=D) + 0.5) * 2, (torch.arange(w, dtype=D) + 0.5) * 2, indexing="ij")
    ref = torch.stack([u, v])[None].repeat(2, 1, 1, 1)
    points = torch.tensor([[0.05, 0.02, 0.1], [-0.1, 0.05, 0.0]], dtype=D)
    p_ref = cams.world_to_camera(points.expand(2, -1, -1)).unsqueeze(2)  # [N, R, 1, 3]
    sampled = nerf._sample_reference(ref, cams, p_ref)[:, :, 0]  # [N, R, C]
    uv, _ = cams.project(points)
    # Bilinear interpolation of a linear ramp is exact away from the border.
    torch.testing.assert_close(sampled, uv, atol=1e-9, rtol=0)


def test_points_behind_a_reference_camera_read_zero():
    cams = _ring(1)
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=3)).double()
    behind = cams.centers - 0.5 * cams.forward  # behind the camera, on its axis
    p_ref = cams.world_to_camera(behind[None]).unsqueeze(2)
    out = nerf._sample_reference(torch.ones(1, 3, 4, 4, dtype=D), cams, p_ref)
    assert out.abs().max().item() == 0.0


def test_fresh_field_is_empty_and_chunking_changes_nothing():
    torch.manual_seed(0)
    refs, tgt = _ring(3), _ring(2, radius=1.1)[0:2]
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=8, num_samples=6)).double()
    feats = torch.randn(3, 8, 8, 8, dtype=D)
    out = nerf(feats, refs, tgt, (5, 4))
    assert out.features.shape == (2, 8, 5, 4) and out.rgb.shape == (2, 3, 5, 4)
    # Zero-initialised density head: sigma = exp(0) = 1 everywhere, so opacity is 1 - exp(-(far-near)).
    torch.testing.assert_close(out.opacity, torch.full((2, 5, 4), 1 - torch.exp(torch.tensor(-2.0)).item(),
                                                         dtype=D))
    with torch.no_grad():
        nerf.decoder.weight.normal_()
    full = nerf(feats, refs, tgt, (5, 4))
    chunked = nerf(feats, refs, tgt, (5, 4), ray_chunk=7)
    torch.testing.assert_close(chunked.features, full.features, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked.expected_depth, full.expected_depth, rtol=1e-12, atol=1e-12)


def test_text_fn_changes_features_but_not_geometry():
    torch.manual_seed(1)
    refs, tgt = _ring(2), _ring(1, radius=1.2)
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=4, num_samples=5)).double()
    with torch.no_grad():
        nerf.decoder.weight.normal_()
    feats = torch.randn(2, 4, 6, 6, dtype=D)
    plain = nerf(feats, refs, tgt, (3, 3))
    shifted = nerf(feats, refs, tgt, (3, 3), text_fn=lambda g: torch.ones_like(g))
    torch.testing.assert_close(shifted.opacity, plain.opacity)
    # Adding 1 to every point feature adds the opacity to every rendered channel.
    torch.testing.assert_close(shifted.features - plain.features, plain.opacity[:, None].expand_as(plain.features))


def test_importance_sampling_follows_previous_weights():
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=4, num_samples=8, near=0.0, far=2.0))
    prev = torch.zeros(1, 2, 2, 8)
    prev[..., 5] = 100.0  # all mass in bin [1.25, 1.5]
    t = nerf.sample_distances((1, 2, 2), prev_weights=prev)
    assert bool(((t > 1.2) & (t < 1.55)).float().mean() > 0.8)
