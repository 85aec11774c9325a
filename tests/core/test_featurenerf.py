"""FeatureNeRF: projection convention, initial state, chunking and sampling."""

from __future__ import annotations

import math

import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.customization.encoding import positional_encoding
from mvcustom_core.customization.featurenerf import FeatureNeRF, FeatureNeRFConfig
from mvcustom_core.memory import measure_peak
from mvcustom_core.ops.raymarch import camera_rays
from mvcustom_core.ops.volume import volume_render

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
    shifted = nerf(feats, refs, tgt, (3, 3), text_fn=lambda g, frame: torch.ones_like(g))
    torch.testing.assert_close(shifted.opacity, plain.opacity)
    # Adding 1 to every point feature adds the opacity to every rendered channel.
    torch.testing.assert_close(shifted.features - plain.features, plain.opacity[:, None].expand_as(plain.features))


def test_importance_sampling_follows_previous_weights():
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=4, num_samples=8, near=0.0, far=2.0))
    prev = torch.zeros(1, 2, 2, 8)
    prev[..., 5] = 100.0  # all mass in bin [1.25, 1.5]
    t = nerf.sample_distances((1, 2, 2), prev_weights=prev)
    assert bool(((t > 1.2) & (t < 1.55)).float().mean() > 0.8)


class _SphereField(FeatureNeRF):
    """Density 1e4 inside a sphere of radius 0.4 at the origin, 0 outside; point features = world position."""

    def _point_features(self, maps, map_size, ref_cams, target_cams, o, d, t, frame_of_ray):
        p = o[:, None] + t[..., None] * d[:, None]
        sigma = torch.where(p.norm(dim=-1) < 0.4, 1e4, 0.0).to(p.dtype)
        return p[None], torch.cat([torch.log(sigma + 1e-30)[..., None], torch.zeros_like(p)], dim=-1)[None]


def test_rendering_an_opaque_sphere_gives_the_analytic_first_hit():
    """Rays of a non-square grid from off-centre cameras: O = 1 on hits and 0 on misses, D / O and the
    composited features = the analytic ray-sphere entry point (to within one bin δ = 2/400)."""
    eye = torch.tensor([[0.3, -0.2, -1.0], [0.9, 0.1, -0.5]], dtype=D)
    cams = CameraSet.from_fov(look_at(eye, torch.tensor([0.05, 0.0, 0.0], dtype=D)), 50.0, (24, 40))
    nerf = _SphereField(FeatureNeRFConfig(channels=3, num_samples=400)).double()
    out = nerf(torch.zeros(1, 3, 4, 4, dtype=D), cams[0], cams, (6, 10), ray_chunk=7)
    # Analytic rays through the cell centres of the 6x10 grid (pixel centres at +0.5 of the rescaled camera).
    small = cams.with_image_size((6, 10))
    v, u = torch.meshgrid(torch.arange(6, dtype=D) + 0.5, torch.arange(10, dtype=D) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # [6, 10, 3]
    d = torch.einsum("fij,fjk,hwk->fhwi", small.c2w[:, :3, :3], torch.linalg.inv(small.K), pix)
    d = d / d.norm(dim=-1, keepdim=True)
    o = small.centers[:, None, None, :].expand_as(d)
    b, c = (o * d).sum(-1), (o * o).sum(-1) - 0.4**2
    hit = b * b - c > 0
    assert 0 < int(hit.sum()) < hit.numel()
    entry = -b - (b * b - c).clamp_min(0).sqrt()
    torch.testing.assert_close(out.opacity, hit.to(D), rtol=0, atol=1e-9)
    depth = out.surface_depth()[hit]
    assert bool((depth >= entry[hit] - 1e-9).all()) and bool((depth <= entry[hit] + 2.0 / 400).all())
    points = o + entry[..., None] * d
    assert (out.features.permute(0, 2, 3, 1)[hit] - points[hit]).norm(dim=-1).max() <= 2.0 / 400


def _pe(values, n):
    """γ_n by hand: [sin(2^k π v) for k, v] then [cos …], v fastest."""
    ks = range(-n // 2, n // 2)
    return ([math.sin(2**k * math.pi * v) for k in ks for v in values]
            + [math.cos(2**k * math.pi * v) for k in ks for v in values])


def _bilinear_pixel_centres(fmap, u, v, width, height, clip):
    """Sample ``fmap [C, h, w]`` at image position (u, v) of a width×height image; cell centres at +0.5,
    normalized coordinates clipped to ±clip, zero outside."""
    c, h, w = fmap.shape
    gx = min(max(2 * u / width - 1, -clip), clip)
    gy = min(max(2 * v / height - 1, -clip), clip)
    x, y = (gx + 1) * w / 2 - 0.5, (gy + 1) * h / 2 - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(c, dtype=fmap.dtype)
    for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            if 0 <= xx < w and 0 <= yy < h:
                out += wx * wy * fmap[:, yy, xx]
    return out


def test_forward_equals_a_per_sample_reference_of_method_section_4_5_and_4_6():
    """Per sample and view: projection + bilinear sample, the MLP input f ‖ γ(p⁽ⁱ⁾) ‖ p⁽ⁱ⁾ ‖ γ(Plücker(r⁽ⁱ⁾)) ‖
    d⁽ⁱ⁾, the view score input f ‖ γ(p⁽ᵗ⁾) ‖ p⁽ᵗ⁾ ‖ cᵢ⁽ᵗ⁾ ‖ γ(cᵢ⁽ᵗ⁾), softmax over views, then NeRF compositing."""
    torch.manual_seed(0)
    eye = torch.tensor([[0.3, -0.2, -1.0], [0.9, 0.1, -0.5], [-0.8, 0.2, 0.4]], dtype=D)
    refs = CameraSet.from_fov(look_at(eye, torch.zeros(3, dtype=D)), 50.0, (16, 24))
    tgt = CameraSet.from_fov(look_at(torch.tensor([[0.1, -0.5, 1.0]], dtype=D), torch.zeros(3, dtype=D)), 40.0,
                             (16, 16))
    c, s = 4, 5
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=c, num_samples=s, point_freqs=4, ray_freqs=2)).double()
    with torch.no_grad():
        nerf.decoder.weight.normal_()
    feats = torch.randn(3, c, 4, 6, dtype=D)
    out = nerf(feats, refs, tgt, (3, 2))
    rays = tgt.with_image_size((3, 2)).ray_directions()[0]
    w2c, tw = refs.w2c, tgt.w2c[0]
    for row in range(3):
        for col in range(2):
            o, d, t = tgt.centers[0], rays[row, col], out.t[0, row, col]
            g, raw = [], []
            for k in range(s):
                p = o + t[k] * d
                g_views, scores = [], []
                for i in range(3):
                    p_i = w2c[i, :3, :3] @ p + w2c[i, :3, 3]
                    uvw = refs.K[i] @ p_i
                    f = (_bilinear_pixel_centres(feats[i], float(uvw[0] / uvw[2]), float(uvw[1] / uvw[2]), 24, 16, 1.2)
                         if p_i[2] > 1e-6 else torch.zeros(c, dtype=D))
                    o_i, d_i = w2c[i, :3, :3] @ o + w2c[i, :3, 3], w2c[i, :3, :3] @ d
                    plucker = torch.cat([d_i, torch.linalg.cross(o_i, d_i)])
                    x = torch.cat([f, torch.tensor(_pe(p_i.tolist(), 4), dtype=D), p_i,
                                   torch.tensor(_pe(plucker.tolist(), 2), dtype=D), d_i])
                    g_views.append(nerf.point_mlp(x))
                    p_t, c_t = tw[:3, :3] @ p + tw[:3, 3], tw[:3, :3] @ refs.centers[i] + tw[:3, 3]
                    y = torch.cat([f, torch.tensor(_pe(p_t.tolist(), 4), dtype=D), p_t, c_t,
                                   torch.tensor(_pe(c_t.tolist(), 4), dtype=D)])
                    scores.append(nerf.view_score(y))
                a = torch.softmax(torch.cat(scores), dim=0)
                g.append(sum(a[i] * g_views[i] for i in range(3)))
                raw.append(nerf.decoder(g[-1])[0])
            sigma = torch.exp(torch.stack(raw))
            delta = torch.cat([t.diff(), torch.tensor([2.0 / s], dtype=D)])
            alpha = 1 - torch.exp(-sigma * delta)
            trans = torch.cumprod(torch.cat([torch.ones(1, dtype=D), 1 - alpha[:-1]]), dim=0)
            w = alpha * trans
            with torch.no_grad():
                torch.testing.assert_close(out.features[0, :, row, col], sum(w[k] * g[k] for k in range(s)))
                torch.testing.assert_close(out.opacity[0, row, col], w.sum())
                torch.testing.assert_close(out.expected_depth[0, row, col], (w * t).sum())


def _text_module(c: int, seed: int = 3):
    """A nonlinear per-frame text residual: tanh of a frame-dependent linear map."""
    g = torch.Generator().manual_seed(seed)
    mats = torch.randn(4, c, c, generator=g, dtype=D) / c**0.5
    return lambda points, frame: torch.tanh(points @ mats[frame])


def test_chunked_render_with_text_equals_text_before_compositing():
    """Rays of two frames split across chunks at any boundary: the text residual is applied per sample with
    its own frame's text and composited with the sample weights, Fy = Σ_k w_k (g_k + A_f(g_k)) (method.md §4.6)."""
    torch.manual_seed(2)
    refs, tgt = _ring(3), _ring(2, radius=1.2)
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=6, num_samples=7)).double()
    with torch.no_grad():
        nerf.decoder.weight.normal_()
    feats = torch.randn(3, 6, 8, 8, dtype=D)
    text = _text_module(6)
    whole = nerf(feats, refs, tgt, (4, 5), text_fn=text)
    # The spec, composed by hand from the per-sample features of all 40 rays at once.
    o, d = (x.reshape(-1, 3) for x in camera_rays(tgt, 4, 5))
    t = whole.t.reshape(-1, 7)
    frame = torch.arange(2).repeat_interleave(20)
    maps = nerf.project_references(feats)[None].flatten(3)
    maps = (maps[:, :, :-1].transpose(2, 3).contiguous(), maps[:, :, -1].contiguous())
    g, raw = (x[0] for x in nerf._point_features(maps, (8, 8), refs, tgt, o, d, t, frame))
    g = g + torch.stack([text(g[i], int(frame[i])) for i in range(40)])
    spec = volume_render(raw[..., 0], t, nerf._deltas(t), features=g)
    torch.testing.assert_close(whole.features.permute(0, 2, 3, 1).reshape(-1, 6), spec.features)
    for chunk in (1, 7, 19, 20, 33):
        part = nerf(feats, refs, tgt, (4, 5), text_fn=text, ray_chunk=chunk)
        torch.testing.assert_close(part.features, whole.features, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(part.weights, whole.weights, rtol=1e-12, atol=1e-12)


def test_text_min_weight_skips_samples_within_its_bound():
    """Samples with weight <= the floor lose their text residual: the error is at most S · floor · max |A| per
    ray, and floor 0 (skip only zero weights) is exact."""
    torch.manual_seed(4)
    refs, tgt = _ring(3), _ring(1, radius=1.2)
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=5, num_samples=12)).double()
    with torch.no_grad():
        nerf.decoder.weight.normal_(std=6.0)  # sharp densities: many near-zero weights behind surfaces
    feats = torch.randn(3, 5, 8, 8, dtype=D)
    text = _text_module(5)
    exact = nerf(feats, refs, tgt, (6, 6), text_fn=text)
    floor = 1e-3
    approx = nerf(feats, refs, tgt, (6, 6), text_fn=text, text_min_weight=floor)
    skipped = (exact.weights <= floor).sum(-1)  # [1, 6, 6]
    assert int(skipped.sum()) > 0
    err = (approx.features - exact.features).abs().amax(1)  # tanh: |A| <= 1
    assert bool((err <= skipped * floor + 1e-12).all())
    assert bool((err[skipped == 0] == 0).all())


def test_chunk_scratch_stays_within_the_workspace():
    """The measured peak of a chunked render is bounded by the fixed part plus the workspace (and the
    unchunked render needs far more, so the bound is not vacuous)."""
    torch.manual_seed(5)
    refs, tgt = _ring(4).to(dtype=torch.float32), _ring(2, radius=1.2).to(dtype=torch.float32)
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=64))
    feats = torch.randn(4, 64, 16, 16)
    text = lambda g, frame: torch.tanh(g)  # noqa: E731
    workspace = 2 << 20
    fixed = nerf.fixed_bytes(4, (16, 16), 2 * 16 * 16, 24)
    with torch.no_grad():
        _, chunked = measure_peak(lambda: nerf(feats, refs, tgt, (16, 16), text_fn=text, workspace=workspace))
        _, whole = measure_peak(lambda: nerf(feats, refs, tgt, (16, 16), text_fn=text, ray_chunk=512))
    assert chunked <= fixed + workspace
    assert whole > 4 * (fixed + workspace)


def test_branches_rendered_together_equal_each_rendered_alone():
    """Two reference banks (CFG branches) share rays, taps and the positional terms: each output equals the
    bank's own render, with its own text residual."""
    torch.manual_seed(6)
    refs, tgt = _ring(3), _ring(2, radius=1.2)
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=6, num_samples=5)).double()
    with torch.no_grad():
        nerf.decoder.weight.normal_()
    banks = torch.randn(2, 3, 6, 8, 8, dtype=D)
    texts = [_text_module(6, seed=1), _text_module(6, seed=2)]
    together = nerf.render_branches(banks, refs, tgt, (3, 4), text_fns=texts, ray_chunk=5)
    for bank, text, out in zip(banks, texts, together):
        alone = nerf(bank, refs, tgt, (3, 4), text_fn=text)
        torch.testing.assert_close(out.features, alone.features, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.rgb, alone.rgb, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.expected_depth, alone.expected_depth, rtol=1e-12, atol=1e-12)
    assert (together[0].features - together[1].features).abs().max() > 1e-3
