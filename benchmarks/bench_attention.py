"""Dense spatio-temporal attention: time and peak memory vs frames and window; sampler steps/s.

``run(quick)`` returns one row per measurement. Attention rows compare, side by side in the same
run, AnimateDiff's 1D temporal attention (``temporal``), the tiled and gather window paths
(``window k``), full dense attention (``full``) and, where affordable, the naive masked reference and
compiled flex_attention (full mode only: its compile takes minutes on a CPU).
Widths are SD1.5's top level: 320 channels = 8 heads × 40. Peak memory: CUDA allocator peak on a GPU;
on the CPU the rise of the process's peak resident set (VmHWM after resetting it), which includes the
inputs' temporaries but not allocator-cached memory.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F_

from mvcustom_core.backbone.dense_attention import dense_attention, windowed_attention_reference

HEADS, HEAD_DIM = 8, 40  # 320 channels


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def _measure(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """(median ms, peak MB above the starting level) of ``fn``."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed blocks back so the RSS rise is real
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            base = _status_mb("VmRSS:")
            fn()
            peak = _status_mb("VmHWM:") - base
        except (OSError, AttributeError):
            peak = float("nan")
    return statistics.median(times), peak


def _temporal(q, k, v):
    """AnimateDiff's attention: per pixel over frames, [B·H·W, heads, F, d]."""
    per_pixel = lambda t: t.permute(0, 3, 4, 1, 2, 5).flatten(0, 2)  # noqa: E731
    return F_.scaled_dot_product_attention(per_pixel(q), per_pixel(k), per_pixel(v))


def attention_rows(quick: bool, device: torch.device) -> list[dict]:
    side = (16 if quick else 32) if device.type == "cpu" else 64
    frames = (8, 16, 32)  # the frame counts; quick only shrinks the latent side
    windows = (1, 3, 7) if quick else (1, 3, 7, 15)
    repeats = 2 if quick else 3
    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for f in frames:
            q, k, v = (torch.randn(1, HEADS, f, side, side, HEAD_DIM, generator=g, device=device) for _ in range(3))
            config = f"F={f} latent={side}x{side} C={HEADS * HEAD_DIM}"
            base_ms, base_mb = _measure(lambda: _temporal(q, k, v), device, repeats)
            rows.append({"name": "temporal (AnimateDiff)", "config": config, "time_ms": base_ms,
                         "peak_mem_mb": base_mb, "ratio_vs_temporal": 1.0})
            cases = [("window 1 (auto: per-pixel grouping)", lambda: dense_attention(q, k, v, window=1))]
            cases += [(f"window {w} (tiled)", lambda w=w: dense_attention(q, k, v, window=w, impl="tiled"))
                      for w in windows if w > 1]
            cases += [(f"window {w} (gather)", lambda w=w: dense_attention(q, k, v, window=w, impl="gather"))
                      for w in windows if w <= 3 or quick]
            cases.append(("full (SDPA)", lambda: dense_attention(q, k, v, window=None)))
            if f * side * side <= 4096:  # the masked reference materializes (F·H·W)² scores
                cases.append(("window 3 (masked reference)", lambda: windowed_attention_reference(q, k, v, 3)))
            for name, fn in cases:
                ms, mb = _measure(fn, device, repeats)
                rows.append({"name": name, "config": config, "time_ms": ms, "peak_mem_mb": mb,
                             "ratio_vs_temporal": ms / base_ms})
        if not quick:
            rows += _flex_rows(device)
    return rows


def _flex_rows(device: torch.device) -> list[dict]:
    """flex_attention with a block mask, compiled (first call = compile time reported separately)."""
    try:
        from mvcustom_core.backbone.dense_attention import _flex_windowed
    except ImportError as e:  # pragma: no cover
        return [{"name": "flex", "config": str(e)}]
    side = 32 if device.type == "cpu" else 64
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, 16, side, side, HEAD_DIM, generator=g, device=device) for _ in range(3))
    config = f"F=16 latent={side}x{side} C={HEADS * HEAD_DIM} window 7"
    rows = []
    try:
        t0 = time.perf_counter()
        _flex_windowed(q, k, v, 7, None, compile=True)  # includes torch.compile
        first = (time.perf_counter() - t0) * 1e3
        ms, mb = _measure(lambda: _flex_windowed(q, k, v, 7, None, compile=True), device, 2)
        rows.append({"name": "window 7 (flex_attention)", "config": config, "time_ms": ms, "peak_mem_mb": mb,
                     "first_call_ms": first})
        ms_g, mb_g = _measure(lambda: dense_attention(q, k, v, window=7, impl="tiled"), device, 2)
        rows.append({"name": "window 7 (tiled)", "config": config, "time_ms": ms_g, "peak_mem_mb": mb_g,
                     "ratio_vs_flex": ms_g / ms})
    except Exception as e:  # compile toolchain missing etc.: record, do not hide other rows
        rows.append({"name": "window 7 (flex_attention)", "config": config, "error": repr(e)[:200]})
    return rows


def _mid_unet(device: torch.device):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(
        block_out_channels=(64, 128, 256), layers_per_block=1, cross_attention_dim=128, norm_num_groups=32,
        attention_head_dim=8, sample_size=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    adapter = MotionAdapter(block_out_channels=(64, 128, 256), motion_layers_per_block=1, motion_num_attention_heads=8,
                            motion_norm_num_groups=32, motion_max_seq_length=32)
    return UNetMotionModel.from_unet2d(unet2d, adapter).to(device).eval()


def sampler_rows(quick: bool, device: torch.device) -> list[dict]:
    from mvcustom_core.backbone.dense_attention import disable_dense_attention, enable_dense_attention
    from mvcustom_core.backbone.sampler import sample

    unet = _mid_unet(device)
    frames, size, steps = (8, 128, 2) if quick else (16, 256, 3)
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(1, 77, 128, generator=g), torch.randn(1, 77, 128, generator=g)
    config = f"UNet (64,128,256) F={frames} {size}px CFG batched"
    rows = []
    base = None
    for name, window in [("temporal (AnimateDiff)", "off"), ("dense window 3", 3), ("dense full", None)]:
        if window != "off":
            enable_dense_attention(unet, window=window)
        run = lambda: sample(unet, cond, uncond, frames, size, size, steps=steps, cfg=5.0)  # noqa: E731
        ms, mb = _measure(run, device, 1)
        disable_dense_attention(unet)
        sps = steps / (ms / 1e3)
        base = base or sps
        rows.append({"name": f"sampler {name} (time per step)", "config": config, "time_ms": ms / steps,
                     "peak_mem_mb": mb,
                     "steps_per_s": sps, "ratio_vs_temporal": base / sps})
    return rows


def run(quick: bool) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return attention_rows(quick, device) + sampler_rows(quick, device)


if __name__ == "__main__":
    import sys

    from benchmarks.run_all import to_markdown

    print(to_markdown(run(quick="--quick" in sys.argv)))
