"""The full-size MVCustom job beside plain AnimateDiff sampling, with the same UNet, in one run.

Models: the full SD1.5 UNet, VAE and CLIP text encoder and the AnimateDiff v3 motion modules, built from the
shipped configs with random weights (``configs/sd15``, ``configs/animatediff/v3``). The MVCustom job: a
customization with pose blocks on every other transformer block (CustomDiffusion360's choice, 8 blocks) and 8
cached reference views captured for both CFG branches, DFR with the anchor geometry from the customization's
FeatureNeRF depth (default layers, fraction 0.7), CLC (fraction 0.1), CFG 5, DDIM, 2 steps of a 50-step schedule.
The plain side: :func:`~mvcustom_core.backbone.sampler.sample` with the same UNet (pose blocks off), same steps.

What a 50-step run costs is put together from the measured steps: MVCustom = preparation (field depth, DFR
rasterization) + step 0 (renders every pose block's Fy for both branches) + 49 × step 1 (cached Fy, DFR and CLC
both active: an upper bound, since DFR stops after 35 steps and CLC after 5); plain = 50 × its step (median of
its two). Peaks are the bytes allocated and live at once during each stage, weights excluded
(:func:`mvcustom_core.memory.measure_peak`, torch.profiler's allocator events on the CPU). The memory ratio counts
the reference bank with MVCustom's peak (captured when the customization is loaded, resident through the run:
data, not weights); the ratio of the activation peaks alone is given beside it.

On the CPU the job runs at several sizes smaller than 16 × 512² (a 16 × 512² CFG step of the full UNet takes
minutes on a few cores, the whole job well over 20 minutes) and every quantity q is fitted as
``q = a + b·F·P + c·F·P²`` (time; P = latent pixels, the P² term is spatial self-attention) or ``a + b·P + c·F·P``
(memory: some peaks grow with the picture alone) by least squares, then evaluated at F = 16, P = 64².
:mod:`benchmarks.bench_fullsize_memory` runs the job once at 16 × 512² instead (peaks and each stage's CPU
seconds, no fit); :mod:`benchmarks.bench_fullsize_cuda` runs it at 16 × 512² on CUDA in fp16 (seconds per 50-step
sample).

Times on the CPU are CPU seconds of the process (all its threads), not wall time: the machine is shared, and the
CPU time of a computation does not grow with other processes' load the way its wall time does (it still varies by
several per cent with the load: shared caches and cores).

The projected fp16 GPU peak = weights in fp16 (UNet, motion modules, fusion layers; FeatureNeRF in fp32 as it
runs) + the plain activations at half size + MVCustom's extra activations kept at fp32 size (FeatureNeRF runs in
float32) + the reference bank (float16, as a customization stores it).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field

import torch

from mvcustom_core.backbone.sampler import decode_latents, sample
from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.memory import GiB, MemoryBudget, measure_allocations, measure_peak

__all__ = ["run", "build_models", "measure_size", "fit", "attention_rows"]

STEPS, CFG = 50, 5.0
TARGET = (16, 512)  # frames, pixels
CPU_SIZES = [(2, 128), (4, 128), (2, 256), (2, 384)]  # three latent sizes (the time fit's P² term), two frame counts
QUICK_SIZES = [(2, 64), (3, 64), (2, 96)]
N_REFS = 8


@dataclass
class Models:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    label: str
    weight_params: dict[str, int] = field(default_factory=dict)


def build_models(full: bool, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Models:
    """SD1.5 + AnimateDiff v3 shapes (``full``) or the shipped tiny configs, random weights."""
    from diffusers import MotionAdapter

    from mvcustom_core.backbone.loading import build_backbone, build_sd15_modules, shipped_config

    torch.manual_seed(0)
    tag = "sd15" if full else "tiny"
    parts = build_sd15_modules(shipped_config(f"{tag}/unet"), shipped_config(f"{tag}/vae"),
                               shipped_config(f"{tag}/text_encoder"))
    adapter = MotionAdapter.from_config(shipped_config("animatediff/v3" if full else "tiny/motion_adapter"))
    unet = build_backbone(parts, adapter).to(device=device, dtype=dtype).eval()
    params = {"UNet + motion modules": sum(p.numel() for p in unet.parameters()),
              "VAE": sum(p.numel() for p in parts.vae.parameters()),
              "text encoder": sum(p.numel() for p in parts.text_encoder.parameters())}
    return Models(unet, parts.vae.to(device=device, dtype=dtype), parts.text_encoder.to(device=device, dtype=dtype),
                  "SD1.5 + AnimateDiff v3 (random weights)" if full else "tiny configs (code path only)", params)


def _orbit(frames: int, size: int, radius: float = 1.0, span: float = 0.5) -> CameraSet:
    """Cameras on an arc around the normalized scene (subject at the origin, within FeatureNeRF's far plane)."""
    az = torch.linspace(-span, span, frames)
    eye = torch.stack([radius * torch.sin(az), torch.full_like(az, -0.2), -radius * torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3)), 50.0, (size, size))


def _references(size: int) -> CameraSet:
    az = torch.arange(N_REFS) * (2 * torch.pi / N_REFS)
    eye = torch.stack([torch.sin(az), torch.full_like(az, -0.3), -torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3)), 50.0, (size, size))


def clock() -> float:
    """Seconds of CPU time of this process (all threads) on the CPU, wall time on CUDA: on a shared machine the
    CPU time of the work does not grow with other processes' load, so ratios measured minutes apart compare."""
    return time.perf_counter() if torch.cuda.is_available() else time.process_time()


def _timed_steps(fn) -> tuple[list[float], object]:
    """Run ``fn(callback)`` and return the duration of each sampler step (from the step callbacks)."""
    marks = [clock()]
    out = fn(lambda *_: marks.append(clock()))
    return [b - a for a, b in zip(marks, marks[1:])], out


def customize(models: Models, size: int, text: tuple[torch.Tensor, torch.Tensor]):
    """Pose blocks on every other transformer block with random FeatureNeRF weights and a live fusion
    (``W_y`` random, so the rendered map reaches the output), and the 8-view reference bank of both branches,
    stored as a customization stores it (float16)."""
    from mvcustom_core.customization.file_format import stored_reference_bank
    from mvcustom_core.customization.pose_block import PoseContext, install_pose_blocks, pose_blocks
    from mvcustom_core.customization.training import capture_reference_bank

    ctx = PoseContext()
    install_pose_blocks(models.unet, ctx, "every_other")
    g = torch.Generator().manual_seed(3)
    param = next(models.unet.parameters())
    with torch.no_grad():
        for block in pose_blocks(models.unet):
            c = block.fuse.out_features
            block.fuse.weight[:, c:] = (torch.randn(c, c, generator=g) * 0.3 / c**0.5).to(param)
    latents = torch.randn(N_REFS, 4, size // 8, size // 8, generator=g).to(param)
    uncond, cond = text
    seconds = clock()
    with torch.no_grad():
        _, peak = measure_peak(lambda: capture_reference_bank(models.unet, ctx, latents, _references(size),
                                                              [uncond, cond], timestep=1), param.device)
    seconds = clock() - seconds
    # As a customization keeps it (and a run reads it) once training has captured it.
    ctx.references = {name: stored_reference_bank(bank) for name, bank in ctx.references.items()}
    bank = sum(t.numel() * t.element_size() for t in ctx.references.values())
    return ctx, {"capture_s": seconds, "capture_peak": peak, "bank_bytes": bank}


def _prerender(unet, ctx, uncond: torch.Tensor, cond: torch.Tensor, frames: int, size: int) -> None:
    """The pose blocks' pre-render of step 0 alone (what the UNet pre-hook does for a batched-CFG call): every
    block's ``W_y · Fy`` for both branches, left in the cache for the step that follows."""
    from mvcustom_core.backbone.sampler import _equal_length_texts
    from mvcustom_core.customization.pose_block import block_grid, pose_blocks

    param = next(unet.parameters())
    text = torch.cat(_equal_length_texts(uncond.expand(frames, -1, -1), cond.expand(frames, -1, -1))).to(param)
    ctx.step, ctx.branch = 0, "uncond+cond"
    with torch.no_grad():  # as inside the sampler's model call
        for block in pose_blocks(unet):
            block.rendered_term(2 * frames, param.dtype, param.device,
                                block_grid(unet, block.name, (size // 8,) * 2), text)


def _prerender_estimate(memory) -> int:
    """The estimate's pre-render phase: what stays resident, the workspace and the render's fixed part."""
    return sum(memory.resident.values()) + memory.workspace + memory.phases.get("FeatureNeRF pre-render", 0)


def measure_size(models: Models, frames: int, size: int, *, profile: bool = True, timed: bool = True) -> dict:
    """Every measurement of one size (see the module docstring). ``timed=False``: each stage runs once, measured
    (one plain step; MVCustom's preparation, pre-render, step 0 and step 1; one frame's decode), and its CPU
    seconds are taken from that measured run (``*_once_s``: the profiler's per-op cost is small beside ops of
    seconds), for sizes too slow to run twice."""
    from mvcustom_core.customization.pose_block import remove_pose_blocks
    from mvcustom_core.inference import CLCPlan, DFRPlan, prepare_run

    unet, device = models.unet, next(models.unet.parameters()).device
    row: dict = {"frames": frames, "size": size}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # Text: random token ids through the full text encoder (no tokenizer needed for random weights).
    ids = torch.randint(0, models.text_encoder.config.vocab_size, (2, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        states, row["text_peak"] = measure_peak(lambda: models.text_encoder(ids.to(device)).last_hidden_state,
                                                device)
    uncond, cond = states[0:1].float(), states[1:2].float()

    # Plain AnimateDiff sampling, same UNet (no pose blocks installed yet).
    def plain(callback=None):
        out = sample(unet, cond, uncond, frames, size, size, STEPS, CFG, seed=1, end_step=2, callback=callback)
        sync()
        return out

    if timed:
        sample(unet, cond, uncond, frames, size, size, STEPS, CFG, seed=1, end_step=1)  # warm-up at this shape
        steps, _ = _timed_steps(plain)
        row["plain_step_s"] = statistics.median(steps)
    if profile:
        t0 = clock()
        _, row["plain_peak"] = measure_peak(plain if timed else lambda: sample(
            unet, cond, uncond, frames, size, size, STEPS, CFG, seed=1, end_step=1), device)
        row["plain_once_s"] = clock() - t0

    # MVCustom: customization, DFR from the field's anchor depth, CLC, CFG 5.
    ctx, capture = customize(models, size, (uncond, cond))
    row.update(capture)
    cams = _orbit(frames, size).to(device=device)
    dfr, clc = DFRPlan(), CLCPlan()
    budget = MemoryBudget(1 << 40, str(device), "benchmark: unbounded")  # measure, do not limit

    def prepare():
        run = prepare_run(unet, cams, pose_context=ctx, dfr=dfr, clc=clc, steps=STEPS, memory_budget=budget)
        sync()
        return run

    def steps_of(run, start, end, latents=None, callback=None):
        out = sample(run.model, cond, uncond, frames, size, size, STEPS, CFG, seed=1, hooks=run.hooks,
                     start_step=start, end_step=end, latents=latents, callback=callback,
                     cfg_batch=run.memory.cfg_batch)
        sync()
        return out

    run = None
    try:
        t0 = clock()
        run = prepare()
        row["mv_prepare_s"] = clock() - t0
        row["estimate"] = run.memory.peak
        row["estimate_unet"] = run.memory.phases["UNet activations"]
        row["estimate_prerender"] = _prerender_estimate(run.memory)
        row["workspace"] = run.memory.workspace
        if timed:
            steps, latents = _timed_steps(lambda cb: steps_of(run, 0, 2, callback=cb))
            row["mv_step0_s"], row["mv_step1_s"] = steps
        if profile:
            # Each stage's peak counts what the stages before it left allocated (the DFR geometry, the Fy cache):
            # the run holds it through the later stages.
            run.release()
            ctx.clear_cache()
            t0 = clock()
            run, prepare_peak, kept = measure_allocations(prepare, device)
            row["mv_prepare_peak"], t1 = prepare_peak, clock()
            _, peak, fy_cache = measure_allocations(lambda: _prerender(unet, ctx, uncond, cond, frames, size), device)
            row["mv_prerender_peak"], row["fy_cache_bytes"], t2 = kept + peak, fy_cache, clock()
            kept += fy_cache
            x1, peak, step0_kept = measure_allocations(lambda: steps_of(run, 0, 1), device)  # the terms are cached now
            row["mv_step0_peak"], t3 = kept + peak, clock()
            kept += step0_kept - x1.numel() * x1.element_size()  # what step 0 built for later steps (DFR plans)
            row["mv_resident"] = kept
            _, peak = measure_peak(lambda: steps_of(run, 1, 2, latents=x1), device)
            row["mv_step1_peak"], t4 = kept + peak, clock()
            row["mv_peak"] = max(row["mv_prepare_peak"], row["mv_prerender_peak"], row["mv_step0_peak"],
                                 row["mv_step1_peak"])
            row.update(mv_prepare_once_s=t1 - t0, mv_prerender_once_s=t2 - t1, mv_step0_once_s=t3 - t2,
                       mv_step1_once_s=t4 - t3)
            latents = x1
    finally:
        if run is not None:
            run.release()
        ctx.clear_cache()
        ctx.mode = "off"
        remove_pose_blocks(unet)

    # The decode node decodes as many frames at once as its budget allows: one frame's peak is what scales.
    frames_out, row["decode_frame_peak"] = measure_peak(lambda: decode_latents(models.vae, latents[:1], chunk=1),
                                                        device)
    assert frames_out.shape == (1, 3, size, size)
    return row


def _project_50(row: dict) -> tuple[float, float]:
    """(MVCustom, plain) seconds of a 50-step sample (module docstring)."""
    mv = row["mv_prepare_s"] + row["mv_step0_s"] + (STEPS - 1) * row["mv_step1_s"]
    return mv, STEPS * row["plain_step_s"]


def memory_ratio(row: dict) -> float:
    """The goal's memory ratio: MVCustom's peak plus its resident reference bank over plain sampling's peak
    (weights excluded)."""
    return (row["mv_peak"] + row["bank_bytes"]) / row["plain_peak"]


def fit(rows: list[dict], key: str, time: bool, at: tuple[int, int] = TARGET) -> float:
    """Least-squares fit of ``key`` over the measured sizes, evaluated at ``at`` = (frames, pixels).

    Times: ``a + b·F·P + c·F·P²`` (every row of a UNet call costs linear layers and spatial self-attention).
    Memory: ``a + b·P + c·F·P``: a peak may grow with the frames (activations, Fy cache) or with the picture
    alone (the reference capture and bank, one frame's decode, the anchor's field-depth render).
    """
    def features(frames: int, size: int) -> list[float]:
        p = (size // 8) ** 2
        return [1.0, frames * p, frames * p * p] if time else [1.0, p, frames * p]

    a = torch.tensor([features(r["frames"], r["size"]) for r in rows], dtype=torch.float64)
    y = torch.tensor([float(r[key]) for r in rows], dtype=torch.float64)
    scale = a.abs().max(dim=0).values  # columns of very different magnitude
    coef = torch.linalg.lstsq(a / scale, y[:, None]).solution[:, 0] / scale
    return float(torch.tensor(features(*at), dtype=torch.float64) @ coef)


def _weights_bytes(models: Models, fp16: bool) -> dict[str, float]:
    from mvcustom_core.customization.pose_block import PoseContext, install_pose_blocks, pose_blocks, remove_pose_blocks

    ctx = PoseContext()
    install_pose_blocks(models.unet, ctx, "every_other")
    nerf = sum(p.numel() for b in pose_blocks(models.unet) for p in b.featurenerf.parameters())
    fuse = sum(b.fuse.weight.numel() for b in pose_blocks(models.unet))
    remove_pose_blocks(models.unet)
    half = 2 if fp16 else 4
    return {"unet": models.weight_params["UNet + motion modules"] * half + fuse * half + nerf * 4,
            "vae+te": (models.weight_params["VAE"] + models.weight_params["text encoder"]) * half}


def projected_fp16_peak(w16: dict[str, float], r: dict) -> float:
    """The projected fp16 GPU peak (bytes, module docstring) from one size's measured peaks ``r``."""
    extra = r["mv_peak"] - r["plain_peak"]
    return w16["unet"] + r["plain_peak"] / 2 + max(0.0, extra) + r["bank_bytes"]  # the bank is float16 already


def summary_rows(models: Models, rows: list[dict], fitted: bool) -> list[dict]:
    """One row per measured size and the extrapolated (or measured) 16 × 512² row."""
    out = []
    for r in rows:
        mv, plain = _project_50(r)
        out.append({"name": f"measured, {r['frames']} x {r['size']}²", "time ratio": mv / plain,
                    "memory ratio": memory_ratio(r) if r.get("plain_peak") else "",
                    "memory ratio, activations only": r["mv_peak"] / r["plain_peak"] if r.get("plain_peak") else "",
                    "plain 50 steps (s)": plain, "MVCustom 50 steps (s)": mv,
                    "first step / plain step": r["mv_step0_s"] / r["plain_step_s"],
                    "cached step / plain step": r["mv_step1_s"] / r["plain_step_s"],
                    "plain peak (GB)": r.get("plain_peak", 0) / GiB, "MVCustom peak (GB)": r.get("mv_peak", 0) / GiB,
                    "estimate (GB)": r["estimate"] / GiB,
                    "note": f"pre-render phase {r.get('mv_prerender_peak', 0) / GiB:.2f} GB measured, "
                            f"{r['estimate_prerender'] / GiB:.2f} GB estimated"})
    if fitted:
        keys = {k: fit(rows, k, time=k.endswith("_s")) for k in
                ("plain_step_s", "mv_prepare_s", "mv_step0_s", "mv_step1_s", "plain_peak",
                 "mv_step0_peak", "mv_step1_peak", "mv_prepare_peak", "capture_peak", "decode_frame_peak",
                 "text_peak", "estimate", "bank_bytes", "fy_cache_bytes", "mv_resident")}
        # The pre-render's scratch is capped by the workspace (not linear in size): its peak at the target is the
        # estimate's (checked against the measured pre-render at every size below); the other phases are fitted.
        keys["mv_prerender_peak"] = _target_prerender_estimate(models)
        keys["mv_peak"] = max(keys["mv_prerender_peak"], keys["mv_step0_peak"], keys["mv_step1_peak"],
                              keys["mv_prepare_peak"])
        label = f"extrapolated to {TARGET[0]} x {TARGET[1]}² (fit over {len(rows)} sizes)"
    else:
        keys, label = rows[-1], f"measured, {TARGET[0]} x {TARGET[1]}²"
    mv, plain = _project_50(keys)
    w16 = _weights_bytes(models, fp16=True)
    projected = projected_fp16_peak(w16, keys)
    out.append({"name": label, "time ratio": mv / plain,
                "memory ratio": memory_ratio(keys),
                "memory ratio, activations only": keys["mv_peak"] / keys["plain_peak"],
                "projected fp16 peak (GB)": projected / GiB,
                "projected fp16 peak + VAE, text encoder (GB)": (projected + w16["vae+te"]) / GiB,
                "plain 50 steps (s)": plain, "MVCustom 50 steps (s)": mv,
                "first step / plain step": keys["mv_step0_s"] / keys["plain_step_s"],
                "cached step / plain step": keys["mv_step1_s"] / keys["plain_step_s"],
                "plain peak (GB)": keys["plain_peak"] / GiB, "MVCustom peak (GB)": keys["mv_peak"] / GiB,
                "estimate (GB)": keys["estimate"] / GiB,
                "goals": "time <= 1.10, memory <= 1.15, fp16 <= 12 GB (paper 19.3 GB)"})
    out.append({"name": "stage peaks at that size (GB)", "note": ", ".join(
        f"{name} {keys[k] / GiB:.2f}" for name, k in (
            ("text encoder", "text_peak"), ("reference capture", "capture_peak"),
            ("preparation (field depth, DFR rasterization)", "mv_prepare_peak"),
            ("pose-block pre-render (estimate)" if fitted else "pose-block pre-render", "mv_prerender_peak"),
            ("MVCustom step 0 after the pre-render", "mv_step0_peak"),
            ("MVCustom cached step", "mv_step1_peak"), ("plain step", "plain_peak"),
            ("VAE decode, per frame", "decode_frame_peak"),
            ("reference bank (resident)", "bank_bytes"), ("Fy cache (resident from step 0)", "fy_cache_bytes"),
            ("everything MVCustom keeps resident from the steps before (Fy cache, DFR plans)", "mv_resident")))})
    return out


def _target_prerender_estimate(models: Models) -> int:
    """The pre-render phase estimate at 16 × 512² (:func:`plan_run_memory` with 8 references captured at 512²;
    the bank's shapes only, on the meta device)."""
    from types import SimpleNamespace

    from mvcustom_core.customization.pose_block import (PoseContext, block_grid, install_pose_blocks, pose_blocks,
                                                        remove_pose_blocks)
    from mvcustom_core.memory_estimate import plan_run_memory

    frames, size = TARGET
    unet = models.unet
    install_pose_blocks(unet, PoseContext(), "every_other")
    try:
        names = [b.name for b in pose_blocks(unet)]
        refs = {n: torch.empty(2, N_REFS, 1, *block_grid(unet, n, (size // 8,) * 2), device="meta") for n in names}
        context = SimpleNamespace(references=refs, ref_cams=_references(size))
        plan = plan_run_memory(unet, frames, (size, size), MemoryBudget(1 << 40, "cpu", "benchmark"),
                               pose_context=context, dfr_layers=2, cache_dtype=torch.float16)
    finally:
        remove_pose_blocks(unet)
    return _prerender_estimate(plan)


def attention_rows(quick: bool) -> list[dict]:
    """Dense attention at the real latent size (64², 16 frames, C = 320 = 8 heads × 40): one call each."""
    from mvcustom_core.backbone.dense_attention import dense_attention

    f, side = (4, 16) if quick else (16, 64)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, f, side, side, 40, generator=g) for _ in range(3))
    rows = []
    for name, window in (("temporal (k = 1)", 1), ("window 3 (tiled)", 3), ("window 5 (tiled)", 5),
                         ("window 7 (tiled)", 7), ("full (SDPA, query chunks)", None)):
        with torch.no_grad():
            dense_attention(q[:, :, :2, :8, :8], k[:, :, :2, :8, :8], v[:, :, :2, :8, :8], window=window)  # warm-up
            t0 = clock()
            dense_attention(q, k, v, window=window)
            seconds = clock() - t0
            _, peak = measure_peak(lambda: dense_attention(q, k, v, window=window))
            rows.append({"name": f"dense attention, {name}", "shape": f"F={f} latent={side}x{side} C=320",
                         "CPU seconds per call": seconds, "peak (GB)": peak / GiB})
    return rows


def run(quick: bool) -> list[dict]:
    rows: list[dict] = []
    models = build_models(full=not quick)
    measured = []
    for f, s in (QUICK_SIZES if quick else CPU_SIZES):
        measured.append(measure_size(models, f, s))
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in measured[-1].items()}, flush=True)
    rows += summary_rows(models, measured, fitted=True)
    rows += attention_rows(quick)
    rows.append({"name": "CUDA, fp16, 16 x 512²", "note": "benchmarks.bench_fullsize_cuda (its own section)"})
    return rows


if __name__ == "__main__":  # python -m benchmarks.bench_fullsize [--quick]
    import sys

    from benchmarks.run_all import to_markdown

    print(to_markdown(run(quick="--quick" in sys.argv)))
