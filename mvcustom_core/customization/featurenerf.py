"""FeatureNeRF: render a pose-aligned feature map for a target camera from reference-view features.

This is the multi-view branch of the pose-conditioned transformer block (MVCustom §3.2, which extends
CustomDiffusion360; the internals follow CustomDiffusion360, method.md §4.4–4.6):

1. one ray per cell of the target block's h×w grid (pixel-centre convention of
   :mod:`mvcustom_core.cameras.camera_set`), S samples per ray on [near, far] (stratified, or by
   inverse CDF from a previous block's weights);
2. every sample point is projected into every reference view and the reference feature map is
   sampled bilinearly;
3. per view, an MLP maps [feature ‖ γ16(p⁽ⁱ⁾) ‖ p⁽ⁱ⁾ ‖ γ8(Plücker(r⁽ⁱ⁾)) ‖ d⁽ⁱ⁾] to a feature gᵢ(p), and a
   linear head scores the view from [feature ‖ γ16(p⁽ᵗ⁾) ‖ p⁽ᵗ⁾ ‖ cᵢ⁽ᵗ⁾ ‖ γ16(cᵢ⁽ᵗ⁾)]; a softmax over views
   mixes the gᵢ;
4. a zero-initialised, bias-free head gives the density (and optional RGB logits) — before any text
   conditioning, so geometry does not depend on the prompt;
5. the point features may then pass through the block's text cross-attention (``text_fn``);
6. volume rendering returns the feature map, opacity, expected depth and RGB.

Superscripts: ⁽ⁱ⁾ = expressed in reference camera i's frame, ⁽ᵗ⁾ = in the target camera's frame.
Scene units are normalized (cameras within radius 1 of the subject, see
:func:`mvcustom_core.cameras.normalize.normalize_cameras`), which is what near/far = [0, 2] assume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvcustom_core.cameras import CameraSet
from mvcustom_core.checks import check_shape
from mvcustom_core.customization.encoding import encoding_width, plucker_of_rays, positional_encoding
from mvcustom_core.ops.raymarch import bin_edges, camera_rays, importance_samples, stratified_samples
from mvcustom_core.ops.volume import VolumeRender, volume_render

__all__ = ["FeatureNeRF", "FeatureNeRFConfig", "FeatureNeRFOutput"]

# Text cross-attention applied to point features: (g [F, P, C], frame index per row [F]) -> residual.
TextFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class FeatureNeRFConfig:
    """Constructor arguments of :class:`FeatureNeRF`; saved with a customization as JSON."""

    channels: int
    num_samples: int = 24
    near: float = 0.0
    far: float = 2.0
    point_freqs: int = 16
    ray_freqs: int = 8
    rgb_head: bool = True
    view_aggregation: Literal["softmax", "average"] = "softmax"
    grid_clip: float = 1.2  # clip projected coordinates to ±1.2 before zero-padded sampling

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FeatureNeRFOutput:
    """Rendered maps for F target frames on an h×w grid, plus per-sample quantities."""

    features: Tensor  # [F, C, h, w]
    opacity: Tensor  # [F, h, w]
    expected_depth: Tensor  # [F, h, w]  Σ w t (un-normalized; divide by opacity for surface depth)
    rgb: Tensor | None  # [F, 3, h, w]
    weights: Tensor  # [F, h, w, S]
    t: Tensor  # [F, h, w, S]
    alphas: Tensor  # [F, h, w, S]

    def surface_depth(self, eps: float = 1e-6) -> Tensor:
        """``[F, h, w]`` expected depth divided by opacity (distance along the unit ray)."""
        return self.expected_depth / self.opacity.clamp_min(eps)


class FeatureNeRF(nn.Module):
    """Feature field conditioned on reference views (see the module docstring for the formulas)."""

    def __init__(self, config: FeatureNeRFConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        pe_p = encoding_width(config.point_freqs, 3)
        pe_r = encoding_width(config.ray_freqs, 6)
        feat_in = c + pe_p + 3 + pe_r + 3
        view_in = c + pe_p + 3 + 3 + pe_p
        self.point_mlp = nn.Sequential(nn.Linear(feat_in, c), nn.SiLU(), nn.Linear(c, c))
        self.view_score = nn.Linear(view_in, 1)
        self.decoder = nn.Linear(c, 1 + (3 if config.rgb_head else 0), bias=False)
        nn.init.zeros_(self.decoder.weight)  # zero density at start: the fused branch starts silent

    # ------------------------------------------------------------------ sampling
    def sample_distances(
        self,
        batch_shape: tuple[int, ...],
        *,
        prev_weights: Tensor | None = None,
        jitter: bool = False,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> Tensor:
        """``[*batch_shape, S]`` distances: stratified, or inverse-CDF from ``prev_weights [*, S]``
        (weights evaluated at the uniform bins of a previous pose block, method.md §4.4)."""
        cfg = self.config
        if prev_weights is None:
            return stratified_samples(cfg.near, cfg.far, cfg.num_samples, batch_shape, jitter=jitter,
                                      generator=generator, dtype=dtype, device=device)
        edges = bin_edges(cfg.near, cfg.far, prev_weights.shape[-1], dtype=dtype, device=device)
        return importance_samples(edges, prev_weights, cfg.num_samples, deterministic=not jitter,
                                  generator=generator)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        ref_features: Tensor,
        ref_cams: CameraSet,
        target_cams: CameraSet,
        grid_size: tuple[int, int],
        *,
        text_fn: TextFn | None = None,
        prev_weights: Tensor | None = None,
        jitter: bool = False,
        generator: torch.Generator | None = None,
        ray_chunk: int | None = None,
    ) -> FeatureNeRFOutput:
        """Render F target frames.

        Args:
            ref_features: ``[N, C, hr, wr]`` reference feature maps; their grid covers each reference
                camera's full image (any resolution).
            ref_cams: N reference cameras.
            target_cams: F target cameras.
            grid_size: ``(h, w)`` of the rendered map (the block's token grid).
            text_fn: residual text conditioning of point features, ``[F, h·w·S, C] -> [F, h·w·S, C]``.
            prev_weights: ``[F, h, w, S']`` weights of a previous block for importance sampling.
            ray_chunk: process at most this many rays at once (memory bound; outputs are identical).
        """
        dims = check_shape(ref_features, "N C hr wr", "ref_features")
        if dims["N"] != ref_cams.num_frames:
            raise ValueError(f"ref_features has {dims['N']} views but ref_cams has {ref_cams.num_frames}")
        if dims["C"] != self.config.channels:
            raise ValueError(f"ref_features has {dims['C']} channels, FeatureNeRF expects {self.config.channels}")
        h, w = grid_size
        dtype, device = ref_features.dtype, ref_features.device
        ref_cams = ref_cams.to(device, dtype)
        target_cams = target_cams.to(device, dtype)

        origins, dirs = camera_rays(target_cams, h, w)  # [F, h, w, 3]
        n_frames = target_cams.num_frames
        t = self.sample_distances((n_frames, h, w), prev_weights=prev_weights, jitter=jitter,
                                  generator=generator, dtype=dtype, device=device)
        frame_of_ray = torch.arange(n_frames, device=device).repeat_interleave(h * w)
        o, d, tt = origins.reshape(-1, 3), dirs.reshape(-1, 3), t.reshape(-1, t.shape[-1])

        # Density first (per sample), then text conditioning of the features (per frame), then compositing.
        chunk = ray_chunk or o.shape[0]
        g_parts, raw_parts = [], []
        for s in range(0, o.shape[0], chunk):
            g, raw = self._point_features(ref_features, ref_cams, target_cams, o[s:s + chunk], d[s:s + chunk],
                                          tt[s:s + chunk], frame_of_ray[s:s + chunk])
            g_parts.append(g)
            raw_parts.append(raw)
        g = torch.cat(g_parts).reshape(n_frames, h * w * tt.shape[-1], -1)
        raw = torch.cat(raw_parts).reshape(n_frames, h, w, tt.shape[-1], -1)
        if text_fn is not None:
            g = g + text_fn(g)
        g = g.reshape(n_frames, h, w, tt.shape[-1], -1)

        deltas = self._deltas(t)
        vr: VolumeRender = volume_render(raw[..., 0], t, deltas, features=g,
                                         rgb_logits=raw[..., 1:4] if self.config.rgb_head else None)
        return FeatureNeRFOutput(
            features=vr.features.permute(0, 3, 1, 2),
            opacity=vr.opacity,
            expected_depth=vr.expected_depth,
            rgb=vr.rgb.permute(0, 3, 1, 2) if vr.rgb is not None else None,
            weights=vr.weights,
            t=t,
            alphas=vr.alphas,
        )

    def _deltas(self, t: Tensor) -> Tensor:
        """``[..., S]`` interval lengths: gaps to the next sample, the last one a nominal bin width."""
        cfg = self.config
        nominal = (cfg.far - cfg.near) / cfg.num_samples
        return torch.cat([t.diff(dim=-1), torch.full_like(t[..., :1], nominal)], dim=-1)

    def _point_features(
        self, ref_features: Tensor, ref_cams: CameraSet, target_cams: CameraSet,
        o: Tensor, d: Tensor, t: Tensor, frame_of_ray: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Features and raw density/RGB of the samples of R rays.

        Args:
            o, d: ``[R, 3]`` ray origins and unit directions (world).
            t: ``[R, S]`` distances.
            frame_of_ray: ``[R]`` target frame index of each ray.

        Returns:
            g: ``[R, S, C]`` view-aggregated point features; raw: ``[R, S, 1 (+3)]`` density (+RGB) logits.
        """
        cfg = self.config
        n_views = ref_cams.num_frames
        points = o.unsqueeze(1) + t.unsqueeze(-1) * d.unsqueeze(1)  # [R, S, 3]

        w2c = ref_cams.w2c  # [N, 4, 4]
        rot, trans = w2c[:, :3, :3], w2c[:, :3, 3]
        p_ref = torch.einsum("nij,rsj->nrsi", rot, points) + trans[:, None, None]  # [N, R, S, 3]
        feats = self._sample_reference(ref_features, ref_cams, p_ref)  # [N, R, S, C]

        o_ref = torch.einsum("nij,rj->nri", rot, o) + trans[:, None]  # [N, R, 3]
        d_ref = torch.einsum("nij,rj->nri", rot, d)
        ray_code = torch.cat([positional_encoding(plucker_of_rays(o_ref, d_ref), cfg.ray_freqs), d_ref], dim=-1)
        s = points.shape[1]
        x = torch.cat([feats, positional_encoding(p_ref, cfg.point_freqs), p_ref,
                       ray_code[:, :, None, :].expand(-1, -1, s, -1)], dim=-1)
        g_views = self.point_mlp(x)  # [N, R, S, C]

        if cfg.view_aggregation == "average" or n_views == 1:
            g = g_views.mean(dim=0)
        elif cfg.view_aggregation == "softmax":
            w2c_t = target_cams.w2c[frame_of_ray]  # [R, 4, 4]
            p_tgt = torch.einsum("rij,rsj->rsi", w2c_t[:, :3, :3], points) + w2c_t[:, None, :3, 3]
            c_tgt = torch.einsum("rij,nj->nri", w2c_t[:, :3, :3], ref_cams.centers) + w2c_t[None, :, :3, 3]
            c_code = torch.cat([c_tgt, positional_encoding(c_tgt, cfg.point_freqs)], dim=-1)  # [N, R, 3+pe]
            y = torch.cat([feats, positional_encoding(p_tgt, cfg.point_freqs).expand(n_views, -1, -1, -1),
                           p_tgt.expand(n_views, -1, -1, -1), c_code[:, :, None, :].expand(-1, -1, s, -1)], dim=-1)
            attn = torch.softmax(self.view_score(y), dim=0)  # [N, R, S, 1]
            g = (attn * g_views).sum(dim=0)
        else:
            raise ValueError(f"view_aggregation must be 'softmax' or 'average', got {cfg.view_aggregation!r}")
        return g, self.decoder(g)

    def _sample_reference(self, ref_features: Tensor, ref_cams: CameraSet, p_ref: Tensor) -> Tensor:
        """Bilinear samples ``[N, R, S, C]`` of each reference map at the projections of ``p_ref [N, R, S, 3]``.

        With pixel centres at +0.5, ``align_corners=False`` maps the normalized coordinate
        ``2·u/W − 1`` to the same image position at any feature resolution. Projections are clipped
        to ±``grid_clip`` (CustomDiffusion360) and read zero padding there; points behind a camera read
        zero.
        """
        cfg = self.config
        n, r, s, _ = p_ref.shape
        z = p_ref[..., 2:3]
        uvw = torch.einsum("nij,nrsj->nrsi", ref_cams.K, p_ref)
        uv = uvw[..., :2] / z.clamp_min(1e-6)
        size = torch.tensor([ref_cams.width, ref_cams.height], dtype=p_ref.dtype, device=p_ref.device)
        grid = (2.0 * uv / size - 1.0).clamp(-cfg.grid_clip, cfg.grid_clip)
        sampled = F.grid_sample(ref_features, grid.reshape(n, r * s, 1, 2), mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # [N, C, R·S, 1]
        in_front = (z > 1e-6).to(sampled.dtype)  # [N, R, S, 1]
        return sampled[..., 0].permute(0, 2, 1).reshape(n, r, s, -1) * in_front
