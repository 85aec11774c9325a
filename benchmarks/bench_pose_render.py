"""Pose-block render choices, each measured against the paper-faithful computation (time and relative error).

The reference is method.md §4.5–4.6 computed as written: per sample and reference view the MLP input
``f ‖ γ16(p⁽ⁱ⁾) ‖ p⁽ⁱ⁾ ‖ γ8(Plücker) ‖ d⁽ⁱ⁾`` through both MLP layers, the view score on
``f ‖ γ16(p⁽ᵗ⁾) ‖ p⁽ᵗ⁾ ‖ cᵢ⁽ᵗ⁾ ‖ γ16(cᵢ⁽ᵗ⁾)``, softmax over views, density, the block's text cross-attention on every
point, compositing; once per CFG branch. Against it, on one SD1.5-width block (C = 320, 8 references, 24 samples,
both CFG branches, text cross-attention of the block's shape):

* ``forward``: the pack's render of one bank (reference maps projected once through the MLP's feature columns,
  second MLP layer after the view mix, bilinear taps as a sparse product, chunked rays);
* ``render_branches``: both banks in one call (rays, taps, positional and Plücker terms shared);

and on the sampler (tiny customized UNet, 10 DDIM steps, DFR + CLC): the Fy cache in float16 and bfloat16
against float32 (relative change of the final latents; the pose blocks' own effect on them for scale).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.customization.encoding import plucker_of_rays, positional_encoding
from mvcustom_core.customization.featurenerf import FeatureNeRF, FeatureNeRFConfig
from mvcustom_core.ops.raymarch import camera_rays
from mvcustom_core.ops.volume import volume_render

__all__ = ["run", "reference_render"]


def _ring(n: int, radius: float, size: int, elevation: float = -0.3) -> CameraSet:
    az = torch.arange(n) * (2 * torch.pi / n) + 0.1
    eye = torch.stack([radius * torch.sin(az), torch.full_like(az, elevation), -radius * torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3)), 45.0, (size, size))


def reference_render(nerf: FeatureNeRF, ref_features: torch.Tensor, ref_cams: CameraSet, target_cams: CameraSet,
                     grid: tuple[int, int], text_fn) -> torch.Tensor:
    """``[F, C, h, w]`` Fy as method.md §4.5–4.6 write it (all rays at once; see the module docstring)."""
    cfg = nerf.config
    h, w = grid
    origins, dirs = camera_rays(target_cams, h, w)
    n_frames, n_views = target_cams.num_frames, ref_cams.num_frames
    t = nerf.sample_distances((n_frames, h, w))
    o, d, tt = origins.reshape(-1, 3), dirs.reshape(-1, 3), t.reshape(-1, t.shape[-1])
    s = tt.shape[-1]
    points = o[:, None] + tt[..., None] * d[:, None]  # [R, S, 3]
    rot, trans = ref_cams.w2c[:, :3, :3], ref_cams.w2c[:, :3, 3]
    p_ref = torch.einsum("nij,rsj->nrsi", rot, points) + trans[:, None, None]
    feats = nerf._sample_reference(ref_features, ref_cams, p_ref)  # [N, R, S, C]
    o_ref = torch.einsum("nij,rj->nri", rot, o) + trans[:, None]
    d_ref = torch.einsum("nij,rj->nri", rot, d)
    ray_code = torch.cat([positional_encoding(plucker_of_rays(o_ref, d_ref), cfg.ray_freqs), d_ref], dim=-1)
    x = torch.cat([feats, positional_encoding(p_ref, cfg.point_freqs), p_ref,
                   ray_code[:, :, None].expand(-1, -1, s, -1)], dim=-1)
    g_views = nerf.point_mlp(x)  # [N, R, S, C]
    frame = torch.arange(n_frames).repeat_interleave(h * w)
    w2c_t = target_cams.w2c[frame]
    p_tgt = torch.einsum("rij,rsj->rsi", w2c_t[:, :3, :3], points) + w2c_t[:, None, :3, 3]
    c_tgt = torch.einsum("rij,nj->nri", w2c_t[:, :3, :3], ref_cams.centers) + w2c_t[None, :, :3, 3]
    c_code = torch.cat([c_tgt, positional_encoding(c_tgt, cfg.point_freqs)], dim=-1)
    y = torch.cat([feats, positional_encoding(p_tgt, cfg.point_freqs).expand(n_views, -1, -1, -1),
                   p_tgt.expand(n_views, -1, -1, -1), c_code[:, :, None].expand(-1, -1, s, -1)], dim=-1)
    g = (torch.softmax(nerf.view_score(y), dim=0) * g_views).sum(dim=0)  # [R, S, C]
    raw = nerf.decoder(g)
    g = g + torch.cat([text_fn(g[frame == f].reshape(-1, g.shape[-1]), f).reshape(-1, s, g.shape[-1])
                       for f in range(n_frames)])
    deltas = nerf._deltas(tt)
    vr = volume_render(raw[..., 0], tt, deltas, features=g)
    return vr.features.reshape(n_frames, h, w, -1).permute(0, 3, 1, 2)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def render_rows(quick: bool) -> list[dict]:
    torch.manual_seed(0)
    c, side, frames = (64, 8, 2) if quick else (320, 32, 2)
    refs, tgt = _ring(8, 1.0, 512), _ring(frames, 1.1, 512, elevation=-0.1)
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=c))
    with torch.no_grad():
        nerf.decoder.weight.normal_(std=0.05)  # some structure in the density
    # A block's text cross-attention (SD1.5 top level: 8 heads, text width 768) with its LayerNorm.
    from diffusers.models.attention_processor import Attention

    attn, norm = Attention(c, cross_attention_dim=768, heads=8, dim_head=c // 8).eval(), nn.LayerNorm(c)
    texts = torch.randn(2, 1, 77, 768)
    banks = torch.randn(2, 8, c, side, side)
    text_fns = [lambda g, f, _t=texts[b]: attn(norm(g)[None], encoder_hidden_states=_t)[0] for b in range(2)]
    shape = f"C={c}, {frames} frames x {side}², 8 references, 24 samples, 2 CFG branches"
    rows = []
    with torch.no_grad():
        timings = {}

        def timed(name, fn):  # CPU seconds of the process: the machine is shared
            t0 = time.process_time()
            out = fn()
            timings[name] = time.process_time() - t0
            return out

        ref = timed("reference", lambda: [reference_render(nerf, banks[b], refs, tgt, (side, side), text_fns[b])
                                          for b in range(2)])
        one = timed("forward", lambda: [nerf(banks[b], refs, tgt, (side, side), text_fn=text_fns[b]).features
                                        for b in range(2)])
        both = timed("render_branches", lambda: [o.features for o in nerf.render_branches(
            banks, refs, tgt, (side, side), text_fns=text_fns)])
    for name, key, outs, exact, note in (
            ("reference (method.md §4.5-4.6 as written), per branch", "reference", ref, ref,
             "the paper-faithful computation"),
            ("forward (projected maps, MLP layer 2 after the view mix, sparse taps), per branch", "forward", one, ref,
             "exact rewrite"),
            ("render_branches (both CFG branches together)", "render_branches", both, ref,
             "exact rewrite; the default")):
        rows.append({"name": name, "shape": shape, "CPU seconds": timings[key],
                     "speedup": timings["reference"] / timings[key],
                     "Fy relative error": max(_rel(a, b) for a, b in zip(outs, exact)), "note": note})
    return rows


def cache_rows() -> list[dict]:
    from mvcustom_core.backbone.tiny import tiny_backbone
    from mvcustom_core.customization.pose_block import PoseContext, install_pose_blocks, pose_blocks
    from mvcustom_core.inference import CLCPlan, DFRPlan, mvcustom_sample

    unet = tiny_backbone(0).unet.eval()
    ctx = PoseContext()
    install_pose_blocks(unet, ctx, "every_other")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in pose_blocks(unet):
            block.featurenerf.decoder.weight.normal_(0, 2.0, generator=g)
            c = block.fuse.out_features
            block.fuse.weight[:, c:] = torch.eye(c)
    ctx.begin_capture()
    with torch.no_grad():
        unet(torch.randn(1, 4, 4, 8, 8, generator=g), 50, encoder_hidden_states=torch.randn(4, 5, 32, generator=g))
    ctx.end_capture(_ring(4, 1.0, 64))
    cond, uncond = torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    cams = _ring(5, 1.2, 64, elevation=-0.2)
    dfr = DFRPlan(depth=torch.full((64, 64), 1.2), depth_kind="metric", scale=1.0)
    run = lambda dtype: mvcustom_sample(unet, cond, uncond, cams, pose_context=ctx, dfr=dfr,  # noqa: E731
                                        clc=CLCPlan(), seed=3, steps=10, pose_cache_dtype=dtype)
    exact = run(None)
    ctx_off = PoseContext()  # the same run without pose blocks: their effect, for scale
    plain = mvcustom_sample(unet, cond, uncond, cams, pose_context=ctx_off, dfr=dfr, clc=CLCPlan(), seed=3, steps=10)
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        rows.append({"name": f"Fy cache in {str(dtype).split('.')[-1]} (float32 UNet)",
                     "shape": "tiny customized UNet, 5 frames x 64², 10 DDIM steps, DFR + CLC",
                     "final latents relative error": _rel(run(dtype), exact),
                     "note": f"pose blocks' own effect on the latents: {_rel(exact, plain):.3f}; cache size halved"})
    return rows


def run(quick: bool) -> list[dict]:
    return render_rows(quick) + cache_rows()


if __name__ == "__main__":  # python -m benchmarks.bench_pose_render [--quick]
    import sys

    from benchmarks.run_all import to_markdown

    print(to_markdown(run(quick="--quick" in sys.argv)))
