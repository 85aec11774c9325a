"""Anchor depth in one pass against two passes: what it costs and what it changes (issue 11).

Two passes (the paper's reading): sample without DFR, decode the anchor frame, estimate and align its depth, sample
again with the same seed and DFR + CLC. One pass (ours): one sampling run that decodes the anchor's x̂0 after
``one_pass_at`` of the steps, estimates and aligns its depth there and applies DFR from the next step, CLC's window
starting there.

Setup (CPU): the mid-size random UNetMotionModel of bench_sampler.py with pose blocks on every other transformer
and a captured reference bank (so the field's depth is the alignment reference), the tiny VAE, and a Depth Anything
V2 Small of the released size (random weights, 24.8M parameters, 518 px input) as the depth model. Rows: wall time
of each side (interleaved, medians), and what one pass changes: the DFR steps it keeps, IoU of the two anchor
coverages, the median relative difference of the two aligned anchor depths where both are valid, and the final
latents' distance between the two, relative to the distance DFR + CLC moves two passes away from pass 1.
With random weights the pictures and depths are not meaningful: the time ratio is, the change figures only show
that the machinery runs; trained weights (a GPU, or the built-in tiny-world backbone) are needed to judge quality.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from benchmarks.bench_sampler import _cams, make_unet
from mvcustom_core.backbone.sampler import decode_latents
from mvcustom_core.backbone.tiny import tiny_components
from mvcustom_core.depth import DepthModel, build_depth_module, estimate_depth, shipped_depth_config
from mvcustom_core.inference import CLCPlan, DFRPlan, mvcustom_sample, prepare_run, resolve_anchor_geometry
from mvcustom_core.inference.dfr import anchor_index

__all__ = ["run"]


def _customized(unet, cond, size: int):
    from mvcustom_core.customization.pose_block import PoseContext, install_pose_blocks

    model, ctx = copy.deepcopy(unet), PoseContext()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        install_pose_blocks(model, ctx, "every_other")
    refs = _cams(4, size)
    ctx.begin_capture()
    with torch.no_grad():
        model(torch.randn(1, 4, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(2)), 50,
              encoder_hidden_states=cond.expand(4, -1, -1))
    ctx.end_capture(refs)
    return model, ctx


def run(quick: bool) -> list[dict]:
    frames, size, steps = (4, 64, 4) if quick else (8, 128, 10)
    unet, text_dim = make_unet(False, "cpu", torch.float32)
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 77, text_dim, generator=g), torch.randn(1, 77, text_dim, generator=g)
    model, ctx = _customized(unet, cond, size)
    vae = tiny_components(0).vae.eval()
    torch.manual_seed(0)
    depth = DepthModel(build_depth_module(shipped_depth_config("depth_anything_v2_small")), "depth_anything",
                       "disparity", "Depth Anything V2 Small (random weights)")
    cams = _cams(frames, size)
    clc = CLCPlan(fraction=0.2)
    common = dict(pose_context=ctx, seed=1, steps=steps)
    a = anchor_index(None, frames)
    state: dict = {}

    def two_pass():
        first = mvcustom_sample(model, cond, uncond, cams, **common)
        picture = decode_latents(vae, first[a:a + 1])
        estimate = estimate_depth(depth, picture)
        plan = DFRPlan(depth=estimate.values[0], depth_valid=estimate.valid[0], depth_kind=estimate.kind)
        run_ = prepare_run(model, cams, pose_context=ctx, dfr=plan, clc=clc, steps=steps)
        state["two"] = (first, mvcustom_sample(model, cond, uncond, cams, dfr=plan, clc=clc, run=run_, **common),
                        run_.geometry, resolve_anchor_geometry(plan, cams, unet=model, pose_context=ctx)[1])

    def one_pass():
        plan = DFRPlan(depth_model=depth, one_pass_at=0.2)
        run_ = prepare_run(model, cams, pose_context=ctx, dfr=plan, clc=clc, steps=steps, vae=vae)
        out = mvcustom_sample(model, cond, uncond, cams, dfr=plan, clc=clc, run=run_, vae=vae, **common)
        state["one"] = (out, run_)

    sides = {"two passes": two_pass, "one pass": one_pass}
    for fn in sides.values():  # warm-up
        fn()
    samples = {name: [] for name in sides}
    for _ in range(2 if quick else 3):  # interleaved so load changes hit both sides alike
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    t_two, t_one = statistics.median(samples["two passes"]), statistics.median(samples["one pass"])
    shape = f"{frames} frames x {size}² px, {steps} steps, mid-size UNet + pose blocks, DA-V2-Small-sized depth"
    rows = [{"name": "anchor depth: one pass vs two passes, cpu", "shape": shape, "plain_s": t_two,
             "mvcustom_s": t_one, "time_ratio": t_one / t_two,
             "note": "plain_s column: two passes (2 sampling runs + decode + estimate); mvcustom_s: one pass"}]

    first, two_out, two_geo, _ = state["two"]
    one_out, one_run = state["one"]
    one_geo = one_run.geometry
    latent = (size // 8, size // 8)
    c2, c1 = two_geo.coverage(latent) > 0.5, one_geo.coverage(latent) > 0.5
    both = (two_geo.depth > 0) & (one_geo.depth > 0)
    rel = ((one_geo.depth - two_geo.depth).abs() / two_geo.depth)[both]
    dfr_effect = float((two_out - first).norm())
    rows.append({"name": "what one pass changes against two passes (random weights)", "shape": shape,
                 "note": (f"DFR steps: {one_run.dfr.num_steps - one_run.one_pass.step - 1} of "
                          f"{one_run.dfr.num_steps} (x̂0 after step {one_run.one_pass.step + 1}); anchor coverage IoU "
                          f"{float((c1 & c2).sum() / (c1 | c2).sum().clamp_min(1)):.3f}; aligned depth median rel. "
                          f"difference {float(rel.median()) if rel.numel() else float('nan'):.3f}; final latents "
                          f"|one − two| / |two − pass 1| = {float((one_out - two_out).norm()) / dfr_effect:.3f}")})
    return rows


if __name__ == "__main__":  # python -m benchmarks.bench_one_pass [--quick]
    import sys

    from benchmarks.run_all import to_markdown

    print(to_markdown(run(quick="--quick" in sys.argv)))
