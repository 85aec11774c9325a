"""The full-size job measured at 16 × 512² on the CPU (no fit): plain AnimateDiff sampling and MVCustom with the
same UNet, stage by stage, in float32 with random weights: peak memory, and CPU seconds of each stage run once.

The same job and measurements as :mod:`benchmarks.bench_fullsize` (``measure_size(..., timed=False)``: one plain
step; MVCustom's preparation, pre-render, step 0 and step 1, each stage's peak counting what the stages before it
left allocated; one frame's decode), at the size a user runs instead of fitted from smaller ones: a peak's growth
is not linear over sizes where the largest tensor moves between layers, so only a measurement at the size tells.
The stages run once, under the memory profiler, and are timed in that run (ops of seconds: the profiler's per-op
cost is small beside them). About 45 minutes of one CPU core and ~12 GB of RAM.
"""

from __future__ import annotations

from benchmarks.bench_fullsize import (TARGET, _weights_bytes, build_models, measure_size, memory_ratio,
                                       projected_fp16_peak)
from mvcustom_core.memory import GiB

__all__ = ["run", "memory_rows"]

QUICK = (2, 64)


def memory_rows(models, frames: int, size: int) -> list[dict]:
    """Measured peaks (GB) and CPU seconds of each stage, the ratios and the fp16 projection at one size."""
    r = measure_size(models, frames, size, timed=False)
    print({k: v for k, v in r.items()}, flush=True)
    shape = f"{frames} x {size}², CFG, 8 references"
    stages = {
        "plain step (activations)": r["plain_peak"],
        "reference capture (once per customization)": r["capture_peak"],
        "MVCustom preparation (field depth, DFR rasterization)": r["mv_prepare_peak"],
        "MVCustom pose-block pre-render (+ what preparation left)": r["mv_prerender_peak"],
        "MVCustom step 0 (+ Fy cache and what preparation left)": r["mv_step0_peak"],
        "MVCustom step 1, cached Fy (+ what the steps before left)": r["mv_step1_peak"],
        "reference bank (resident through the run)": r["bank_bytes"],
        "Fy cache (resident from step 0)": r["fy_cache_bytes"],
        "VAE decode, one frame": r["decode_frame_peak"],
    }
    seconds = {"plain step (activations)": r["plain_once_s"],
               "MVCustom preparation (field depth, DFR rasterization)": r["mv_prepare_once_s"],
               "MVCustom pose-block pre-render (+ what preparation left)": r["mv_prerender_once_s"],
               "MVCustom step 0 (+ Fy cache and what preparation left)": r["mv_step0_once_s"],
               "MVCustom step 1, cached Fy (+ what the steps before left)": r["mv_step1_once_s"]}
    rows = [{"name": name, "shape": shape, "measured (GB)": b / GiB, "CPU seconds": seconds.get(name, "")}
            for name, b in stages.items()]
    rows[-1]["note"] = "the Decode Latent node decodes as many frames at once as its memory budget allows"
    w16 = _weights_bytes(models, fp16=True)
    projected = projected_fp16_peak(w16, r)
    # 50 steps as a run weights them: preparation, the first step with its pre-render, 49 cached steps with DFR and
    # CLC active (an upper bound: DFR stops after 35 steps, CLC after 5), against 50 plain steps.
    mv = r["mv_prepare_once_s"] + r["mv_prerender_once_s"] + r["mv_step0_once_s"] + 49 * r["mv_step1_once_s"]
    rows.append({"name": "MVCustom vs plain", "shape": shape, "time ratio": mv / (50 * r["plain_once_s"]),
                 "first step / plain step": (r["mv_prerender_once_s"] + r["mv_step0_once_s"]) / r["plain_once_s"],
                 "cached step / plain step": r["mv_step1_once_s"] / r["plain_once_s"],
                 "memory ratio": memory_ratio(r),
                 "memory ratio, activations only": r["mv_peak"] / r["plain_peak"],
                 "plain peak (GB)": r["plain_peak"] / GiB, "MVCustom peak (GB)": r["mv_peak"] / GiB,
                 "estimate (GB)": r["estimate"] / GiB,
                 "projected fp16 peak (GB)": projected / GiB,
                 "projected fp16 peak + VAE, text encoder (GB)": (projected + w16["vae+te"]) / GiB,
                 "goals": "time <= 1.10, memory <= 1.15, fp16 <= 12 GB (paper 19.3 GB)",
                 "note": "memory ratio: MVCustom's peak + its reference bank over plain's peak, weights excluded; "
                         "projected fp16 peak: fp16 UNet, motion modules and fusion weights, FeatureNeRF in fp32, "
                         "plain activations halved, MVCustom's extra kept at its fp32 size, the bank as stored (fp16); "
                         f"estimate: the sampler's, unbounded budget (workspace {r['workspace'] / GiB:.2f} GB)"})
    return rows


def run(quick: bool) -> list[dict]:
    models = build_models(full=not quick)
    return memory_rows(models, *(QUICK if quick else TARGET))


if __name__ == "__main__":  # python -m benchmarks.bench_fullsize_memory [--quick]
    import sys

    from benchmarks.run_all import to_markdown

    print(to_markdown(run(quick="--quick" in sys.argv)))
