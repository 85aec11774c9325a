"""The full-size job on a GPU: seconds per 50-step sample and peak memory, MVCustom beside plain AnimateDiff.

The job of :mod:`benchmarks.bench_fullsize` (the same models, customization, DFR + CLC, CFG 5 and stages) at 16 ×
512² on CUDA in float16, measured directly: each stage runs under ``torch.cuda.max_memory_allocated`` (weights
excluded) and is timed with synchronized wall clocks; a 50-step sample is put together from the measured steps as
:func:`benchmarks.bench_fullsize._project_50` does. Goals: ≤ 30 s per 50-step sample on an H100/H200 and ≤ 12 GB,
within 1.10× the time and 1.15× the memory of plain sampling. Without CUDA it records that nothing was measured.
A few minutes on an H100; the device-machine entry point is ``scripts/gpu_check.sh``.
"""

from __future__ import annotations

import torch

from benchmarks.bench_fullsize import TARGET, _project_50, _weights_bytes, build_models, measure_size, memory_ratio
from mvcustom_core.memory import GiB

__all__ = ["run"]


def run(quick: bool) -> list[dict]:
    shape = f"{TARGET[0]} x {TARGET[1]}², CFG 5, 8 references, fp16"
    if not torch.cuda.is_available():
        return [{"name": "CUDA full-size job", "shape": shape, "note": "not measured: no GPU"}]
    models = build_models(full=not quick, device="cuda", dtype=torch.float16)
    r = measure_size(models, *TARGET, profile=True)
    mv, plain = _project_50(r)
    weights = sum(_weights_bytes(models, fp16=True).values())
    return [{"name": f"CUDA {torch.cuda.get_device_name(0)}", "shape": shape,
             "MVCustom 50 steps (s)": mv, "plain 50 steps (s)": plain, "time ratio": mv / plain,
             "memory ratio": memory_ratio(r),
             "plain peak (GB)": r["plain_peak"] / GiB, "MVCustom peak (GB)": r["mv_peak"] / GiB,
             "MVCustom peak + weights (GB)": (r["mv_peak"] + r["bank_bytes"] + weights) / GiB,
             "estimate (GB)": r["estimate"] / GiB,
             "goals": "<= 30 s per 50-step sample, <= 12 GB, time <= 1.10, memory <= 1.15",
             "note": "peaks: torch.cuda.max_memory_allocated above the weights; memory ratio counts the bank"}]


if __name__ == "__main__":  # python -m benchmarks.bench_fullsize_cuda [--quick]
    import sys

    from benchmarks.run_all import to_markdown

    print(to_markdown(run(quick="--quick" in sys.argv)))
