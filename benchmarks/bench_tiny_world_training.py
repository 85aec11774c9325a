"""The built-in backbone's UNet training step (``scripts/train_tiny_world.py``), three ways side by side.

The stage's step at its defaults (4 clips of 8 frames at 64², so 8×8 latents; UNet, motion modules and text tower
trained; Min-SNR loss, gradient clipping, AdamW, EMA) on freshly initialised weights (values do not change the
time), with the CPU threads the script is given (2 by default):

- ``one worker, per-tensor AdamW``: the script before it split batches: one replica on all threads, torch's
  per-tensor AdamW loop and a per-tensor EMA;
- ``one worker, fused AdamW``: the same with the fused AdamW and the foreach EMA;
- ``N workers, fused AdamW``: what the script does now on the CPU: the batch split over ``BatchWorkers``, one
  thread each.

Each row is the median of ``steps`` steps after one warm-up step; ``speedup`` is the first row's time over the
row's. On a GPU the script trains with one worker, so the rows there only compare the optimizers.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch
from torch import nn

__all__ = ["run", "bench_unet_step"]

BATCH, FRAMES, LATENT = 4, 8, 8


def _script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny_world.py"
    spec = importlib.util.spec_from_file_location("train_tiny_world", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_unet_step(workers: int, threads: int, fused: bool, steps: int) -> dict:
    """Median seconds of one UNet-stage step with ``workers`` replicas on ``threads`` CPU threads in all."""
    from mvcustom_core.backbone.text import encode_prompt
    from mvcustom_core.backbone.tiny_world import tiny_world_tokenizer
    from mvcustom_core.customization.training import training_scheduler

    script = _script()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    components, unet = script._fresh_unet_parts(argparse.Namespace(seed=0))
    model = nn.ModuleDict({"unet": unet, "text": components.text_encoder}).to(device).train()
    params = dict(model.named_parameters())
    optimizer = (script._adamw(list(params.values()), 1e-4) if fused
                 else torch.optim.AdamW(list(params.values()), lr=1e-4, weight_decay=1e-2))
    ema = script.EMA(params, 0.999)  # the script's foreach EMA; the per-tensor one it replaced is timed inline below
    tokenizer, scheduler = tiny_world_tokenizer(), training_scheduler(unet)

    def batch_loss(replica: nn.Module, step: int, rows: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(step)
        latents = torch.randn(BATCH, 4, FRAMES, LATENT, LATENT, generator=g).to(device)
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = torch.randint(0, 1000, (BATCH,), generator=g).to(device)
        text = encode_prompt(replica["text"], tokenizer, ["photo of a red robot on snow ground"] * len(rows))
        return script.min_snr_loss(replica["unet"], latents[rows], text, scheduler, noise[rows], t[rows], 5.0)

    workers_ = script.BatchWorkers(model, BATCH, workers, threads)
    times = []
    try:
        for step in range(steps + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            workers_.backward(batch_loss, step)
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            optimizer.step()
            if fused:
                ema.update(params)
            else:
                with torch.no_grad():
                    for k, p in params.items():
                        ema.shadow[k].lerp_(p.detach(), 1e-3)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    finally:
        workers_.close()
    label = (f"{workers} workers x {max(1, threads // workers)} thread" if workers > 1
             else f"one worker x {threads} threads")
    return {"name": f"UNet step, {label}, {'fused' if fused else 'per-tensor'} AdamW", "device": device,
            "step_s": statistics.median(times[1:])}


def run(quick: bool) -> list[dict]:
    steps, threads = (2, 2) if quick else (8, 2)
    cuda = torch.cuda.is_available()
    rows = [bench_unet_step(1, threads, False, steps), bench_unet_step(1, threads, True, steps)]
    if not cuda:
        rows.append(bench_unet_step(2, threads, True, steps))
    for row in rows:
        row["speedup"] = rows[0]["step_s"] / row["step_s"]
    return rows


if __name__ == "__main__":
    import sys

    from benchmarks.run_all import to_markdown

    print(to_markdown(run(quick="--quick" in sys.argv)))
