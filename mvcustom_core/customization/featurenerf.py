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

import warnings

from dataclasses import asdict, dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvcustom_core.cameras import CameraSet
from mvcustom_core.checks import check_shape
from mvcustom_core.customization.encoding import encoding_width, plucker_of_rays, positional_encoding
from mvcustom_core.memory import MAX_WORKSPACE, chunk_slices, dtype_bytes, rows_per_chunk
from mvcustom_core.ops.raymarch import bin_edges, camera_rays, importance_samples, stratified_samples
from mvcustom_core.ops.volume import VolumeRender, volume_render

__all__ = ["FeatureNeRF", "FeatureNeRFConfig", "FeatureNeRFOutput"]

# Text cross-attention applied to the point features of one target frame: ([P, C], frame) -> residual [P, C].
TextFn = Callable[[Tensor, int], Tensor]


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
        workspace: int | None = None,
        text_min_weight: float = 0.0,
    ) -> FeatureNeRFOutput:
        """Render F target frames.

        Args:
            ref_features: ``[N, C, hr, wr]`` reference feature maps; their grid covers each reference
                camera's full image (any resolution).
            ref_cams: N reference cameras.
            target_cams: F target cameras.
            grid_size: ``(h, w)`` of the rendered map (the block's token grid).
            text_fn: residual text conditioning of one frame's point features, ``([P, C], frame) -> [P, C]``.
            text_min_weight: the text residual of samples whose compositing weight is at most this is left
                out. ``Σ_k w_k (g_k + A(g_k)) = Σ_k w_k g_k + Σ_k w_k A(g_k)``, so the default 0 skips only
                samples that cannot contribute (exact); a positive value bounds the error by
                ``S · text_min_weight · max |A(g)|`` per ray.
            prev_weights: ``[F, h, w, S']`` weights of a previous block for importance sampling.
            ray_chunk: process at most this many rays at once; default: as many as fit ``workspace``.
            workspace: scratch bytes one chunk may use (default :data:`~mvcustom_core.memory.MAX_WORKSPACE`;
                see :meth:`bytes_per_ray`). Chunking never changes the outputs.
        """
        check_shape(ref_features, "N C hr wr", "ref_features")
        return self.render_branches(ref_features[None], ref_cams, target_cams, grid_size, text_fns=[text_fn],
                                    prev_weights=prev_weights, jitter=jitter, generator=generator,
                                    ray_chunk=ray_chunk, workspace=workspace, text_min_weight=text_min_weight)[0]

    def render_branches(
        self,
        ref_banks: Tensor,
        ref_cams: CameraSet,
        target_cams: CameraSet,
        grid_size: tuple[int, int],
        *,
        text_fns: list[TextFn | None] | None = None,
        prev_weights: Tensor | None = None,
        jitter: bool = False,
        generator: torch.Generator | None = None,
        ray_chunk: int | None = None,
        workspace: int | None = None,
        text_min_weight: float = 0.0,
    ) -> list[FeatureNeRFOutput]:
        """Render the same rays with B reference banks (the CFG branches): one :meth:`forward` per bank, sharing
        what does not depend on the reference features (rays, samples, projections, bilinear taps, and the
        positional and Plücker terms of the point MLP).

        Args:
            ref_banks: ``[B, N, C, hr, wr]``.
            text_fns: one text residual per bank (or None).
            others: as :meth:`forward`.

        Returns:
            B outputs, each what :meth:`forward` gives for its bank.
        """
        dims = check_shape(ref_banks, "B N C hr wr", "ref_banks")
        if dims["N"] != ref_cams.num_frames:
            raise ValueError(f"ref_features has {dims['N']} views but ref_cams has {ref_cams.num_frames}")
        if dims["C"] != self.config.channels:
            raise ValueError(f"ref_features has {dims['C']} channels, FeatureNeRF expects {self.config.channels}")
        branches = dims["B"]
        text_fns = list(text_fns) if text_fns is not None else [None] * branches
        if len(text_fns) != branches:
            raise ValueError(f"{len(text_fns)} text functions for {branches} reference banks")
        h, w = grid_size
        dtype, device = ref_banks.dtype, ref_banks.device
        ref_cams = ref_cams.to(device, dtype)
        target_cams = target_cams.to(device, dtype)

        # 1. Rays and samples of every target frame.
        origins, dirs = camera_rays(target_cams, h, w)  # [F, h, w, 3]
        n_frames = target_cams.num_frames
        t = self.sample_distances((n_frames, h, w), prev_weights=prev_weights, jitter=jitter,
                                  generator=generator, dtype=dtype, device=device)
        n_samples = t.shape[-1]
        frame_of_ray = torch.arange(n_frames, device=device).repeat_interleave(h * w)
        o, d, tt = origins.reshape(-1, 3), dirs.reshape(-1, 3), t.reshape(-1, n_samples)
        deltas = self._deltas(tt)

        # 2. Reference maps through the linear parts of the MLP and view score (once for all rays), pixel-major.
        maps = self.project_references(ref_banks).flatten(3)  # [B, N, C + 1, hr·wr]
        maps = (maps[:, :, :-1].transpose(2, 3).contiguous(), maps[:, :, -1].contiguous())  # [B,N,hw,C], [B,N,hw]

        # 3. Per chunk of rays: point features and density, text conditioning (per frame), compositing.
        n_rays = o.shape[0]
        rows = ray_chunk or rows_per_chunk(n_rays, branches * self.bytes_per_ray(dims["N"], n_samples, dtype),
                                           MAX_WORKSPACE if workspace is None else workspace)
        c = self.config.channels
        outs = [_Outputs.empty(n_rays, n_samples, c, self.config.rgb_head, tt) for _ in range(branches)]
        for sl in chunk_slices(n_rays, rows):
            gs, raws = self._point_features(maps, (dims["hr"], dims["wr"]), ref_cams, target_cams, o[sl], d[sl],
                                            tt[sl], frame_of_ray[sl])
            for out, g, raw, text_fn in zip(outs, gs, raws, text_fns):
                vr: VolumeRender = volume_render(raw[..., 0], tt[sl], deltas[sl], features=g,
                                                 rgb_logits=raw[..., 1:4] if self.config.rgb_head else None)
                feats = vr.features
                if text_fn is not None:
                    feats = feats + _text_term(text_fn, g, vr.weights, frame_of_ray[sl], text_min_weight)
                out.write(sl, feats, vr)
            del gs, raws
        return [out.result((n_frames, h, w), t) for out in outs]

    def bytes_per_ray(self, n_views: int, n_samples: int, dtype: torch.dtype = torch.float32) -> int:
        """Scratch of one ray inside a chunk of :meth:`forward` (inference; autograd keeps more).

        Counted from the tensors live at once: per sample and view, the point in the view's frame, its
        grid coordinates, bilinear taps (int64) and view weight with their temporaries (~50 N); the current
        view's positional code with its sine/cosine temporaries (~320); ~7 C-wide tensors (the view
        accumulator, the sparse product, pre-activation and activation; later the point features through
        the text cross-attention); per ray and view, the Plücker term and its code (N (C + 100)).
        The chunk-independent part is :meth:`fixed_bytes`.
        """
        c = self.config.channels
        per_sample = 7 * c + 50 * n_views + 320
        return dtype_bytes(dtype) * (n_samples * per_sample + n_views * (c + 100))

    def fixed_bytes(self, n_views: int, ref_size: tuple[int, int], n_rays: int, n_samples: int,
                    dtype: torch.dtype = torch.float32, branches: int = 1) -> int:
        """Bytes of :meth:`render_branches` (B = ``branches`` banks) that do not shrink with the chunk: the projected
        reference maps twice (conv output and the pixel-major copy the sparse products read), and the outputs
        (features, opacity, depth, RGB, and the per-sample weights, distances and alphas)."""
        c = self.config.channels
        maps = 2 * branches * n_views * (c + 1) * ref_size[0] * ref_size[1]
        outputs = branches * n_rays * (c + 6 + 3 * n_samples)
        return dtype_bytes(dtype) * (maps + outputs)

    def project_references(self, ref_features: Tensor) -> Tensor:
        """``[..., C + 1, hr, wr]`` from ``[..., C, hr, wr]``: the reference maps through the feature columns of the point MLP's first
        layer (C channels) and of the view score (1 channel).

        Bilinear sampling with zero padding is linear in the map and the in-front mask multiplies it, so
        ``W_f · sample(F) = sample(W_f · F)``: projecting the N reference maps once replaces a C × C product
        per sample and view (an exact rewrite of method.md §4.5 step 3–4, up to float rounding).
        """
        c = self.config.channels
        weight = torch.cat([self.point_mlp[0].weight[:, :c], self.view_score.weight[:, :c]])  # [C + 1, C]
        lead, (hr, wr) = ref_features.shape[:-3], ref_features.shape[-2:]
        out = F.conv2d(ref_features.reshape(-1, c, hr, wr), weight[:, :, None, None])
        return out.reshape(*lead, c + 1, hr, wr)

    def _deltas(self, t: Tensor) -> Tensor:
        """``[..., S]`` interval lengths: gaps to the next sample, the last one a nominal bin width."""
        cfg = self.config
        nominal = (cfg.far - cfg.near) / cfg.num_samples
        return torch.cat([t.diff(dim=-1), torch.full_like(t[..., :1], nominal)], dim=-1)

    def _point_features(
        self, maps: Tensor, map_size: tuple[int, int], ref_cams: CameraSet, target_cams: CameraSet,
        o: Tensor, d: Tensor, t: Tensor, frame_of_ray: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Features and raw density/RGB of the samples of R rays, for each of B reference banks (method.md §4.5).

        With ``h_i = W_f f_i + W_p [γ16(p⁽ⁱ⁾), p⁽ⁱ⁾] + W_r [γ8(Plücker(r⁽ⁱ⁾)), d⁽ⁱ⁾] + b₁`` the first MLP layer
        split by input columns, the MLP's second layer ``W₂ · + b₂`` is affine and the view weights sum to one,
        so ``Σ_i a_i (W₂ silu(h_i) + b₂) = W₂ Σ_i a_i silu(h_i) + b₂``: the second layer runs once per sample
        instead of once per sample and view. In the view score the target-frame point terms and the bias
        are the same for every view and cancel in the softmax over views; the Plücker and camera-centre
        terms depend on the ray only. ``W_f f_i`` is read from the projected maps (:meth:`project_references`)
        with the four bilinear taps of ``grid_sample`` as a sparse matrix, one ``addmm`` per view and bank. Only ``W_f f_i`` (and the view score's
        feature term) depends on the bank: the rest is computed once for all banks. Views are visited one at a
        time, so no ``[N, R, S, C]`` tensor exists.

        Args:
            maps: the projected reference maps, pixel-major: features ``[B, N, hr·wr, C]`` and view-score term
                ``[B, N, hr·wr]``; map_size: ``(hr, wr)``.
            o, d: ``[R, 3]`` ray origins and unit directions (world).
            t: ``[R, S]`` distances.
            frame_of_ray: ``[R]`` target frame index of each ray.

        Returns:
            g: ``[B, R, S, C]`` view-aggregated point features; raw: ``[B, R, S, 1 (+3)]`` density (+RGB) logits.
        """
        cfg = self.config
        c = cfg.channels
        n_views = ref_cams.num_frames
        feat_maps, score_maps = maps
        branches = feat_maps.shape[0]
        r, s = t.shape
        points = o.unsqueeze(1) + t.unsqueeze(-1) * d.unsqueeze(1)  # [R, S, 3]
        w2c = ref_cams.w2c  # [N, 4, 4]
        rot, trans = w2c[:, :3, :3], w2c[:, :3, 3]
        p_ref = torch.einsum("nij,rsj->nrsi", rot, points) + trans[:, None, None]  # [N, R, S, 3]
        grid, in_front = self._reference_grid(ref_cams, p_ref)  # [N, R·S, 1, 2], [N, R·S]
        # One sparse row per sample: the four bilinear taps of grid_sample (zero padding, in-front mask) and a 1
        # picking the sample's ray term, appended below each map: one product gives W_f f_i + W_r (...) + b₁.
        hw = map_size[0] * map_size[1]
        ray_col = hw + torch.arange(r, device=t.device).repeat_interleave(s)[:, None]  # [R·S, 1]
        taps = []
        for i in range(n_views):
            cols, vals = _bilinear_taps(grid[i], in_front[i], *map_size)  # [R·S, 4]
            taps.append(_csr(torch.cat([cols, ray_col], 1), torch.cat([vals, torch.ones_like(vals[:, :1])], 1),
                             hw + r))

        pe_p = encoding_width(cfg.point_freqs, 3) + 3
        w1, b1 = self.point_mlp[0].weight, self.point_mlp[0].bias
        w_point, w_ray = w1[:, c:c + pe_p], w1[:, c + pe_p:]
        o_ref = torch.einsum("nij,rj->nri", rot, o) + trans[:, None]  # [N, R, 3]
        d_ref = torch.einsum("nij,rj->nri", rot, d)
        ray_code = torch.cat([positional_encoding(plucker_of_rays(o_ref, d_ref), cfg.ray_freqs), d_ref], dim=-1)
        ray_term = F.linear(ray_code, w_ray, b1)  # [N, R, C]

        if cfg.view_aggregation == "softmax" and n_views > 1:
            w2c_t = target_cams.w2c[frame_of_ray]  # [R, 4, 4]
            c_tgt = torch.einsum("rij,nj->nri", w2c_t[:, :3, :3], ref_cams.centers) + w2c_t[None, :, :3, 3]
            c_code = torch.cat([c_tgt, positional_encoding(c_tgt, cfg.point_freqs)], dim=-1)  # [N, R, 3 + pe]
            score_cam = F.linear(c_code, self.view_score.weight[:, c + pe_p:])  # [N, R, 1]
            padded = F.pad(score_maps, (0, r))  # [B, N, hw + R]: the ray column reads 0
            score_feat = torch.stack([torch.stack([taps[i] @ padded[b, i] for i in range(n_views)])
                                      for b in range(branches)])  # [B, N, R·S]
            attn = torch.softmax(score_feat.view(branches, n_views, r, s) + score_cam, dim=1)  # [B, N, R, S]
        elif cfg.view_aggregation in ("softmax", "average"):
            attn = t.new_full((branches, n_views, r, s), 1.0 / n_views)
        else:
            raise ValueError(f"view_aggregation must be 'softmax' or 'average', got {cfg.view_aggregation!r}")

        mixed: list[Tensor | None] = [None] * branches
        for i in range(n_views):
            code = torch.cat([positional_encoding(p_ref[i], cfg.point_freqs), p_ref[i]], dim=-1)  # [R, S, pe_p]
            shared = F.linear(code.view(r * s, pe_p), w_point)  # [R·S, C]: the positional term, bank-independent
            for b in range(branches):
                pre = torch.addmm(shared, taps[i], torch.cat([feat_maps[b, i], ray_term[i]]))  # [R·S, C]
                act = F.silu(pre).view(r, s, c)
                weight = attn[b, i, :, :, None]
                mixed[b] = weight * act if mixed[b] is None else torch.addcmul(mixed[b], weight, act)
        g = self.point_mlp[2](torch.stack(mixed))  # [B, R, S, C]
        return g, self.decoder(g)

    def _reference_grid(self, ref_cams: CameraSet, p_ref: Tensor) -> tuple[Tensor, Tensor]:
        """``grid_sample`` coordinates ``[N, R·S, 1, 2]`` of the projections of ``p_ref [N, R, S, 3]`` and the
        in-front mask ``[N, R·S]`` (1 for points in front of the camera, else 0).

        With pixel centres at +0.5, ``align_corners=False`` maps the normalized coordinate
        ``2·u/W − 1`` to the same image position at any feature resolution. Projections are clipped
        to ±``grid_clip`` (CustomDiffusion360) and read zero padding there; points behind a camera read
        zero.
        """
        n, r, s, _ = p_ref.shape
        z = p_ref[..., 2:3]
        uvw = torch.einsum("nij,nrsj->nrsi", ref_cams.K, p_ref)
        uv = uvw[..., :2] / z.clamp_min(1e-6)
        size = torch.tensor([ref_cams.width, ref_cams.height], dtype=p_ref.dtype, device=p_ref.device)
        grid = (2.0 * uv / size - 1.0).clamp(-self.config.grid_clip, self.config.grid_clip)
        return grid.reshape(n, r * s, 1, 2), (z > 1e-6).to(p_ref.dtype).reshape(n, r * s)

    def _sample_reference(self, ref_features: Tensor, ref_cams: CameraSet, p_ref: Tensor) -> Tensor:
        """Bilinear samples ``[N, R, S, C]`` of each reference map at the projections of ``p_ref [N, R, S, 3]``
        (zero behind a camera and outside ±``grid_clip``; see :meth:`_reference_grid`)."""
        n, r, s, _ = p_ref.shape
        grid, in_front = self._reference_grid(ref_cams, p_ref)
        sampled = F.grid_sample(ref_features, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # [N, C, R·S, 1]
        return (sampled[..., 0] * in_front[:, None]).permute(0, 2, 1).reshape(n, r, s, -1)


@dataclass
class _Outputs:
    """Per-ray outputs of one bank, filled chunk by chunk (flat ``[F·h·w, ...]``)."""

    features: Tensor
    opacity: Tensor
    depth: Tensor
    weights: Tensor
    alphas: Tensor
    rgb: Tensor | None

    @classmethod
    def empty(cls, n_rays: int, n_samples: int, channels: int, rgb: bool, like: Tensor) -> "_Outputs":
        return cls(like.new_empty(n_rays, channels), like.new_empty(n_rays), like.new_empty(n_rays),
                   like.new_empty(n_rays, n_samples), like.new_empty(n_rays, n_samples),
                   like.new_empty(n_rays, 3) if rgb else None)

    def write(self, rows: slice, features: Tensor, vr: VolumeRender) -> None:
        self.features[rows], self.opacity[rows], self.depth[rows] = features, vr.opacity, vr.expected_depth
        self.weights[rows], self.alphas[rows] = vr.weights, vr.alphas
        if self.rgb is not None:
            self.rgb[rows] = vr.rgb

    def result(self, grid: tuple[int, int, int], t: Tensor) -> FeatureNeRFOutput:
        n_samples = t.shape[-1]
        return FeatureNeRFOutput(
            features=self.features.reshape(*grid, -1).permute(0, 3, 1, 2),
            opacity=self.opacity.reshape(grid),
            expected_depth=self.depth.reshape(grid),
            rgb=self.rgb.reshape(*grid, 3).permute(0, 3, 1, 2) if self.rgb is not None else None,
            weights=self.weights.reshape(*grid, n_samples),
            t=t,
            alphas=self.alphas.reshape(*grid, n_samples),
        )


def _bilinear_taps(grid: Tensor, in_front: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The four taps of ``grid_sample(..., mode="bilinear", padding_mode="zeros", align_corners=False)``.

    Args:
        grid: ``[..., M, 1, 2]`` normalized (x, y) coordinates; in_front: ``[..., M]`` multiplier.

    Returns:
        flat pixel ids ``[..., M, 4]`` into an ``height × width`` map (0 for taps outside it) and weights
        ``[..., M, 4]`` (0 outside, times ``in_front``).
    """
    x = (grid[..., 0, 0] + 1) * (width / 2) - 0.5  # pixel coordinates, centres at integers
    y = (grid[..., 0, 1] + 1) * (height / 2) - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    w = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)
    inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
    ids = torch.where(inside, ys * width + xs, torch.zeros_like(xs)).long()
    return ids, torch.where(inside, w, torch.zeros_like(w)) * in_front[..., None]


def _csr(cols: Tensor, values: Tensor, num_cols: int) -> Tensor:
    """A sparse CSR matrix ``[M, num_cols]`` with ``k`` entries per row from ``cols, values [M, k]``."""
    m, k = cols.shape
    crow = torch.arange(0, m * k + 1, k, device=cols.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols.reshape(-1), values.reshape(-1), size=(m, num_cols),
                                       check_invariants=False)


def _text_term(text_fn: TextFn, g: Tensor, weights: Tensor, frame_of_ray: Tensor, min_weight: float) -> Tensor:
    """``Σ_k w_k A(g_k)`` per ray ``[R, C]`` over the samples with ``w_k > min_weight``; ``A`` = ``text_fn`` applied
    to the points of each target frame (``g [R, S, C]``, ``weights [R, S]``, ``frame_of_ray [R]``)."""
    keep = weights > min_weight
    r, s, c = g.shape
    if bool(keep.all()):
        ray_of, points, w = None, g.reshape(r * s, c), weights.reshape(r * s)
        frames = frame_of_ray.repeat_interleave(s)
    else:
        ray_of = keep.nonzero()[:, 0]  # sorted by ray, hence by frame
        points, w, frames = g[keep], weights[keep], frame_of_ray[ray_of]
    out = g.new_zeros(r, c)
    if points.shape[0] == 0:
        return out
    uniq, counts = torch.unique_consecutive(frames, return_counts=True)
    parts, start = [], 0
    for frame, count in zip(uniq.tolist(), counts.tolist()):
        parts.append(text_fn(points[start:start + count], frame))
        start += count
    weighted = (parts[0] if len(parts) == 1 else torch.cat(parts)) * w[:, None]
    if ray_of is None:
        return weighted.view(r, s, c).sum(dim=1)
    return out.index_add(0, ray_of, weighted)
