"""The sampler's peak-memory estimate for the full-size job (16 × 512², SD1.5 + AnimateDiff v3, 8 references,
pose blocks on every other transformer block, DFR on its two default layers, CFG), from shapes alone.

The UNet is built on the meta device (configs and shapes are all :func:`plan_run_memory` reads), so this runs in
seconds anywhere; what the estimate is checked against is measured in ``bench_fullsize`` (estimate column) and in
``tests/core/test_memory_estimate.py``.
"""

from __future__ import annotations

import torch

from benchmarks.bench_fullsize import N_REFS, TARGET, _references
from mvcustom_core.memory import GiB, MemoryBudget, MemoryBudgetError
from mvcustom_core.memory_estimate import plan_run_memory

__all__ = ["run", "estimate_rows"]


def _meta_unet():
    """SD1.5 + AnimateDiff v3 UNet with pose blocks on every other transformer block, on the meta device (shapes
    only: the estimate reads configs and shapes), and its 8-view reference bank's shapes at 512²."""
    from types import SimpleNamespace

    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from mvcustom_core.backbone.loading import shipped_config
    from mvcustom_core.customization.pose_block import PoseContext, block_grid, install_pose_blocks, pose_blocks

    with torch.device("meta"):
        unet = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_config(shipped_config("sd15/unet")),
                                           MotionAdapter.from_config(shipped_config("animatediff/v3")),
                                           load_weights=False)
        install_pose_blocks(unet, PoseContext(), "every_other")
    size = TARGET[1]
    refs = {b.name: torch.empty(2, N_REFS, 1, *block_grid(unet, b.name, (size // 8,) * 2), device="meta")
            for b in pose_blocks(unet)}
    return unet, SimpleNamespace(references=refs, ref_cams=_references(size))


def estimate_rows() -> list[dict]:
    """The sampler's estimate (:func:`plan_run_memory`) at 16 × 512² in fp16 and fp32, with and without MVCustom,
    and the smallest budgets it accepts (both CFG branches in one call, or one after the other), found by bisection
    on the budget. On the meta device: on the CPU the estimate adds one copy of the largest convolution weight
    (0.11 GB in fp32, oneDNN's per-call reorder)."""
    unet, context = _meta_unet()
    frames, size = TARGET
    rows = []
    for label, dtype, cache in (("fp16", torch.float16, None), ("fp32, Fy cache fp16", torch.float32, torch.float16)):
        for job, ctx, layers in (("plain", None, 0), ("MVCustom", context, 2)):
            def plan(budget: int):
                return plan_run_memory(unet, frames, (size, size), MemoryBudget(budget, "meta", "benchmark"),
                                       pose_context=ctx, dfr_layers=layers, dtype=dtype, cache_dtype=cache)

            def smallest(accepts) -> int:
                lo, hi = 0, 1 << 40  # lo refused, hi accepted
                while hi - lo > 1 << 20:
                    mid = (lo + hi) // 2
                    try:
                        ok = accepts(plan(mid))
                    except MemoryBudgetError:
                        ok = False
                    lo, hi = (lo, mid) if ok else (mid, hi)
                return hi

            whole = plan(1 << 40)
            rows.append({"name": f"estimate, {job}, {frames} x {size}², CFG, {label}", "estimate (GB)": whole.peak / GiB,
                         "smallest budget, CFG batched (GB)": smallest(lambda p: p.cfg_batch) / GiB,
                         "smallest budget, CFG in turn (GB)": smallest(lambda p: True) / GiB,
                         "note": whole.describe() + "; weights not included"})
    return rows


def run(quick: bool) -> list[dict]:
    return estimate_rows()  # shapes only: the same at quick and full sizes


if __name__ == "__main__":  # python -m benchmarks.bench_estimate
    from benchmarks.run_all import to_markdown

    print(to_markdown(run(quick=False)))
