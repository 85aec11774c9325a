"""MVCustom sampler overhead: DFR + CLC hooks against the plain sampler, same UNet, steps, frames, in one run.

Goal (issue "Inference"): ≤ 1.10× the plain sampler's time and ≤ 1.15× its peak memory. DFR replaces features
at the default layers (the last two upsampling decoder blocks) in the first 70 % of the steps (35/50 in the
paper), CLC refreshes the uncovered latents for t ≥ 900; the anchor depth is a plane 2.5 units in front
of the middle camera and the cameras orbit ±15°.

Sizes: CPU uses a mid-size random UNetMotionModel (widths 64/128/128, 8 frames, 128×128 px, 4 steps); a GPU
uses the SD1.5 UNet + AnimateDiff v3 motion module shapes with random weights (16 frames, 256×256 px, 10
steps, fp16). Peak memory is CUDA's ``max_memory_allocated`` (weights + activations); on CPU, where torch
keeps no allocator statistics, it is the peak of the bytes allocated during the call, summed from the
profiler's memory events in a separate untimed run (:func:`cpu_peak_bytes`): the weights, allocated before
and shared by both sides, are left out, which makes the CPU ratio the stricter one. The one-off geometry
(mesh + rasterization per layer size) is part of the measured sampler call.
"""

from __future__ import annotations

import statistics
import time

import torch

from mvcustom_core.backbone.sampler import sample
from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.inference import CLCPlan, DFRPlan, mvcustom_sample

__all__ = ["run", "make_unet"]


def make_unet(full: bool, device: str, dtype: torch.dtype):
    """Random UNetMotionModel: SD1.5 + AnimateDiff v3 shapes (``full``) or a mid-size CPU config."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from mvcustom_core.backbone.loading import shipped_config

    torch.manual_seed(0)
    if full:
        unet2d = UNet2DConditionModel.from_config(shipped_config("sd15/unet"))
        adapter = MotionAdapter.from_config(shipped_config("animatediff/v3"))
    else:
        unet2d = UNet2DConditionModel(
            block_out_channels=(64, 128, 128), layers_per_block=1, cross_attention_dim=64, norm_num_groups=16,
            attention_head_dim=8, sample_size=16,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
        adapter = MotionAdapter(block_out_channels=(64, 128, 128), motion_layers_per_block=1,
                                motion_norm_num_groups=16, motion_num_attention_heads=2, motion_max_seq_length=32)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    unet = unet.to(device) if dtype == torch.float32 else unet.to(device=device, dtype=dtype)
    return unet, unet2d.config.cross_attention_dim


def cpu_peak_bytes(fn) -> int | None:
    """Peak bytes of CPU tensors allocated by ``fn()`` and live at once (allocations minus frees, in time order).

    Read from the memory events of ``torch.profiler`` (``profile_memory=True``), which report every
    allocation and free of torch's CPU allocator, op scratch buffers included. None when this torch's
    profiler does not expose its raw events.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:
        return None
    deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak


def _cams(frames: int, size: int) -> CameraSet:
    """A 30° arc at radius 1: cameras in a customization's normalized scene frame (within FeatureNeRF's far plane)."""
    az = torch.linspace(-0.26, 0.26, frames)
    eye = torch.stack([torch.sin(az), torch.full_like(az, -0.16), -torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3)), 50.0, (size, size))


def _pose_cache_row(unet, cond, uncond, cams, steps, shape) -> dict:
    """Customized sampler with the first-step Fy cache vs rendering Fy at every step (method.md §4.8)."""
    import copy

    from mvcustom_core.customization.pose_block import PoseContext, install_pose_blocks

    model, ctx = copy.deepcopy(unet), PoseContext()
    install_pose_blocks(model, ctx, "every_other")
    refs = _cams(4, cams.image_size[0]).transformed(torch.eye(4), 1.0)
    h = cams.image_size[0] // 8
    ctx.begin_capture()
    with torch.no_grad():
        model(torch.randn(1, 4, 4, h, h), 50, encoder_hidden_states=cond.expand(4, -1, -1))
    ctx.end_capture(refs)
    times = {}
    for cached in (True, False):
        t0 = time.perf_counter()
        mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, seed=1, steps=steps,
                        cache_pose_features=cached)
        times[cached] = time.perf_counter() - t0
    return {"name": "pose blocks (every other, 4 references): Fy cached vs rendered every step, cpu",
            "shape": shape, "plain_s": times[False], "mvcustom_s": times[True],
            "time_ratio": times[True] / times[False],
            "note": "plain_s column: Fy rendered every step; mvcustom_s: cached after the first step"}


def _sizes(full: bool, quick: bool) -> tuple[int, int, int]:
    """``(frames, size, steps)`` of a configuration."""
    return (16, 256, 10) if full else ((4, 64, 2) if quick else (8, 128, 4))


def _samplers(full: bool, quick: bool, device: str, dtype: torch.dtype):
    """The two sides measured, as zero-argument callables, and the UNet and inputs they share."""
    frames, size, steps = _sizes(full, quick)
    unet, text_dim = make_unet(full, device, dtype)
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 77, text_dim, generator=g), torch.randn(1, 77, text_dim, generator=g)
    cams = _cams(frames, size).to(device=device)
    dfr = DFRPlan(depth=torch.full((size, size), 2.5, device=device), depth_kind="metric", scale=1.0,
                  steps=max(1, round(0.7 * steps)))
    clc = CLCPlan(tau=900 if steps >= 10 else 500)
    sides = {"plain": lambda: sample(unet, cond, uncond, frames, size, size, steps, 5.0, seed=1),
             "mvcustom": lambda: mvcustom_sample(unet, cond, uncond, cams, dfr=dfr, clc=clc, seed=1, steps=steps)}
    return sides, (unet, cond, uncond, cams)


def run(quick: bool) -> list[dict]:
    rows: list[dict] = []
    configs = [("cpu", torch.float32, False)]
    if torch.cuda.is_available():
        configs.append(("cuda", torch.float16, True))
    for device, dtype, full in configs:
        frames, size, steps = _sizes(full, quick)
        sides, (unet, cond, uncond, cams) = _samplers(full, quick, device, dtype)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def measure(fn):
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() if device == "cuda" else 0)

        for fn in sides.values():  # warm-up (allocator, kernels)
            fn()
        repeats = 3 if (full or not quick) else 2
        samples = {"plain": [], "mvcustom": []}
        peaks = {"plain": 0, "mvcustom": 0}
        for _ in range(repeats):  # interleaved so load changes hit both sides alike
            for name, fn in sides.items():
                t, p = measure(fn)
                samples[name].append(t)
                peaks[name] = max(peaks[name], p)
        t_plain, t_mv = statistics.median(samples["plain"]), statistics.median(samples["mvcustom"])
        shape = f"{frames} frames x {size}² px, {steps} steps, {'SD1.5+AD v3 shapes' if full else 'mid-size UNet'}"
        row = {"name": f"MVCustom (DFR + CLC) vs plain sampler, {device}", "shape": shape,
               "plain_s": t_plain, "mvcustom_s": t_mv, "time_ratio": t_mv / t_plain, "time_goal": "<= 1.10"}
        note = "peak: torch.cuda.max_memory_allocated (weights + activations)"
        if device == "cpu":
            # The resident high-water mark (VmHWM / ru_maxrss) was tried first: it moves with allocator reuse
            # and model-initialisation temporaries, not with the sampler's peak.
            peaks = {name: cpu_peak_bytes(fn) for name, fn in sides.items()}
            note = "peak: bytes allocated during the call (profiler memory events, weights excluded)"
        if all(peaks.values()):
            row.update(plain_peak_gb=peaks["plain"] / 2**30, mvcustom_peak_gb=peaks["mvcustom"] / 2**30,
                       memory_ratio=peaks["mvcustom"] / peaks["plain"], memory_goal="<= 1.15", note=note)
        else:
            row["note"] = "peak memory not measured: this torch's profiler exposes no memory events"
        rows.append(row)
        if not full:
            rows.append(_pose_cache_row(unet, cond, uncond, cams, steps, shape))
        del unet
    if not torch.cuda.is_available():
        rows.append({"name": "MVCustom (DFR + CLC) vs plain sampler, cuda", "note": "not measured: no GPU"})
    return rows


if __name__ == "__main__":  # python -m benchmarks.bench_sampler [--quick]
    import sys

    from benchmarks.run_all import to_markdown

    print(to_markdown(run(quick="--quick" in sys.argv)))
