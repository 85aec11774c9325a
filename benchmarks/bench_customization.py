"""Customization: training-step time and peak memory, FeatureNeRF forward time vs samples and reference views.

Training rows run :func:`train_customization` on the tiny random backbone (the only one available without
weight files) with the synthetic subject; the full size is a mid-size clip (8 frames × 4 references at
256², 24 samples per ray), ``quick`` 2 × 2 at 64² with 8 samples. Step time is the median interval between
progress callbacks after the first step. Peak memory is CUDA's ``max_memory_allocated`` on a GPU, the
process's peak resident set on CPU (coarse: it includes the Python process).

FeatureNeRF rows time one forward pass (no gradient, fixed bins) of a single block: full size C = 320
channels (SD1.5's first level) on a 32² grid for F = 4 target frames; ``quick`` C = 32 on 8² for F = 2.
"""

from __future__ import annotations

import resource
import statistics
import time

import torch

from mvcustom_core.customization.featurenerf import FeatureNeRF, FeatureNeRFConfig

__all__ = ["run", "bench_training_step", "bench_featurenerf_forward"]


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench_training_step(size: int, frames: int, references: int, samples: int, steps: int) -> dict:
    from mvcustom_core.backbone.tiny import tiny_backbone
    from mvcustom_core.customization.reference_poses import prepare_reference_set
    from mvcustom_core.customization.training import TrainingConfig, train_customization
    from mvcustom_core.synthetic import SyntheticScene, turntable_cameras

    device = _device()
    backbone = tiny_backbone(seed=0)
    for module in (backbone.unet, backbone.vae, backbone.text_encoder):
        module.to(device)
    views = frames + references + 2
    cams = turntable_cameras(views, elevation_deg=20.0, radius=2.5, image_size=(size, size), fov_y_deg=45.0)
    render = SyntheticScene(seed=1, ground=False).render(cams)
    reference = prepare_reference_set(render.rgb, render.mask, cams, center=torch.zeros(3))
    config = TrainingConfig(class_word="dog", steps=steps, frames=frames, references=references, bank_views=4,
                            featurenerf={"num_samples": samples}, checkpoint_every=10**6)
    stamps: list[float] = []

    def tick(done, total, losses):
        _sync()
        stamps.append(time.perf_counter())

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_customization(backbone, reference, config, progress=tick)
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"name": f"training step {frames}f+{references}r {size}² S={samples}", "device": device,
            "step_ms": 1000 * statistics.median(intervals), "peak_mb": _peak_mb()}


def bench_featurenerf_forward(channels: int, grid: int, frames: int, samples: int, views: int,
                              repeats: int = 3) -> dict:
    from mvcustom_core.synthetic import turntable_cameras

    device = _device()
    torch.manual_seed(0)
    nerf = FeatureNeRF(FeatureNeRFConfig(channels=channels, num_samples=samples)).to(device)
    refs = turntable_cameras(views, radius=1.0, image_size=(8 * grid, 8 * grid)).to(device)
    targets = turntable_cameras(frames, radius=1.0, image_size=(8 * grid, 8 * grid), start_azimuth_deg=17.0)
    feats = torch.randn(views, channels, grid, grid, device=device)
    with torch.no_grad():
        nerf(feats, refs, targets.to(device), (grid, grid))
        times = []
        for _ in range(repeats):
            _sync()
            start = time.perf_counter()
            nerf(feats, refs, targets.to(device), (grid, grid))
            _sync()
            times.append(time.perf_counter() - start)
    return {"name": f"FeatureNeRF forward C={channels} {grid}² F={frames}", "device": device,
            "samples": samples, "views": views, "ms": 1000 * min(times)}


def run(quick: bool) -> list[dict]:
    rows = []
    if quick:
        rows.append(bench_training_step(64, 2, 2, 8, steps=4))
        channels, grid, frames = 32, 8, 2
    else:
        rows.append(bench_training_step(256, 8, 4, 24, steps=6))
        channels, grid, frames = 320, 32, 4
    for samples in (8, 24, 48):
        rows.append(bench_featurenerf_forward(channels, grid, frames, samples, 4))
    for views in (2, 8):
        rows.append(bench_featurenerf_forward(channels, grid, frames, 24, views))
    return rows


if __name__ == "__main__":
    import sys

    from benchmarks.run_all import to_markdown

    print(to_markdown(run(quick="--quick" in sys.argv)))
