#!/usr/bin/env python
"""Train the built-in backbone on the synthetic world and write the shipped weights (docs/tiny_world.md).

    python scripts/train_tiny_world.py --output runs/tiny_world --ship mvcustom_core/weights/tiny_world

Stages, each resumable (re-running the same command continues where it stopped; Ctrl-C / SIGTERM
checkpoint and exit):

1. ``data``: render ``--clips`` clips of ``--frames`` frames at ``--size``² from worlds ``HELD_OUT_SEEDS + i``
   (:mod:`mvcustom_core.synthetic.world`: subject, ground, sky, path, caption) into ``data/chunk-*.safetensors``.
2. ``vae``: the ``AutoencoderKL`` (L1 + image-gradient L1 + a small KL), first on random crops, then on whole
   frames; its latents are then scaled to SD1.5's convention (``fold_latent_scale``) and cached.
3. ``unet``: UNet, motion modules (temporal attention) and CLIP text tower together from scratch, on the
   cached latents: ε-prediction with AnimateDiff's linear betas, Min-SNR-5 weighting, caption dropout, EMA.
4. ``dense``: the pack's own backbone stage (``mvcustom_core.backbone.training.train_motion_module``): only
   the motion modules train while their attention widens from temporal (k = 1) to dense over all frames
   and positions (MVCustom §3.3). Optional: it runs with ``--dense-steps N`` (e.g. 400); the shipped weights
   skipped it (docs/tiny_world.md).
5. ``depth``: a tiny Depth Anything (transformers format) on the clips' exact disparity (scale-invariant
   loss), half of the inputs passed through the VAE so it also reads generated frames.
6. ``prior``: the pose prior (``mvcustom_core.customization.pose_prior``): FeatureNeRF pose blocks and fusion
   layers trained by Reptile over the pack's own customization (:func:`stage_prior`) on the subjects of
   ``--prior-worlds`` training worlds (8 turntable photos each), against the backbone as exported (float16);
   customizations of the built-in backbone start there.
7. ``export``: float16 files in the real layouts, the pose prior (float32), and ``manifest.json`` (hashes,
   settings, losses, times) into ``--ship``; then loaded back with ``load_tiny_world``.
8. ``preview``: frames sampled from held-out captions (``preview.png``); not part of ``all``.

Every random draw of a step comes from a generator seeded by ``(--seed, stage, step)``, so a resumed
stage repeats the uninterrupted one. Settings that change what a stage computes are stored in its
checkpoint; resuming with other values is refused.

On the CPU every batch is split over ``--workers`` (default 2) replicas that run at once on one thread each
(:class:`BatchWorkers`: the same gradient as one worker, up to float rounding, and faster at these sizes).
``--device cuda`` trains the VAE, UNet, depth and prior stages on a GPU with one worker (``bash scripts/gpu_check.sh
tiny_world`` times it on a lent device).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file from a checkout
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

STAGES = ("data", "vae", "unet", "dense", "depth", "prior", "export", "preview")
DEFAULT_STAGES = STAGES[:-1]
_STAGE_CODES = {"vae": 1, "unet": 2, "depth": 5, "prior": 6}  # seeds per-step generators
CHUNK = 100  # clips per data file


# ------------------------------------------------------------------------------------------ settings
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output", type=Path, required=True, help="run folder: data, checkpoints, logs")
    p.add_argument("--ship", type=Path, default=None, help="folder for the exported weights (export stage); "
                   "default <output>/ship")
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES), help=f"comma-separated subset of {STAGES}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="CPU threads in all, shared by the workers")
    p.add_argument("--workers", type=int, default=None,
                   help="replicas that each take a share of every batch at once (default: 2 on the CPU, 1 on a GPU)")
    p.add_argument("--device", default="cpu",
                   help="where the VAE, UNet, depth and prior stages train: cpu, cuda, cuda:1 ...")
    g = p.add_argument_group("data")
    g.add_argument("--clips", type=int, default=1200)
    g.add_argument("--frames", type=int, default=8)
    g.add_argument("--size", type=int, default=64, help="frame side in pixels (a multiple of 16)")
    g.add_argument("--supersample", type=int, default=2)
    g = p.add_argument_group("vae")
    g.add_argument("--vae-steps", type=int, default=3000)
    g.add_argument("--vae-crop-steps", type=int, default=2400, help="first steps on random crops")
    g.add_argument("--vae-crop", type=int, default=32)
    g.add_argument("--vae-batch", type=int, default=32)
    g.add_argument("--vae-lr", type=float, default=1e-3)
    g.add_argument("--vae-kl", type=float, default=1e-6)
    g.add_argument("--vae-grad", type=float, default=0.5, help="weight of the image-gradient L1 term")
    g = p.add_argument_group("unet")
    g.add_argument("--unet-steps", type=int, default=3300)
    g.add_argument("--unet-batch", type=int, default=4, help="clips per step")
    g.add_argument("--unet-lr", type=float, default=5e-4)
    g.add_argument("--unet-warmup", type=int, default=200)
    g.add_argument("--ema", type=float, default=0.999)
    g.add_argument("--caption-dropout", type=float, default=0.1)
    g.add_argument("--min-snr", type=float, default=5.0, help="Min-SNR-γ loss weighting (0: plain mean)")
    g = p.add_argument_group("dense")
    g.add_argument("--dense-steps", type=int, default=0, help="0 skips the stage (the shipped weights); e.g. 400")
    g.add_argument("--dense-clips", type=int, default=300, help="clips written as frame folders for this stage")
    g.add_argument("--dense-batch", type=int, default=4)
    g.add_argument("--dense-lr", type=float, default=1e-4)
    g = p.add_argument_group("depth")
    g.add_argument("--depth-steps", type=int, default=800)
    g.add_argument("--depth-batch", type=int, default=32)
    g.add_argument("--depth-lr", type=float, default=1e-3)
    g = p.add_argument_group("prior")
    g.add_argument("--prior-steps", type=int, default=400, help="outer steps, one world each; 0 skips the stage")
    g.add_argument("--prior-inner-steps", type=int, default=2, help="customization steps of each outer step")
    g.add_argument("--prior-worlds", type=int, default=400, help="training worlds whose subjects the prior sees")
    g.add_argument("--prior-lr", type=float, default=2e-3, help="the inner customizations' learning rate")
    g = p.add_argument_group("progress")
    g.add_argument("--checkpoint-every", type=int, default=200)
    g.add_argument("--log-every", type=int, default=25)
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stage(s) {unknown}; choose from {STAGES}")
    if args.size % 16:
        p.error(f"--size must be a multiple of 16 (VAE 8x, UNet 2x), got {args.size}")
    if args.vae_crop % 8 or args.vae_crop > args.size:
        p.error(f"--vae-crop must be a multiple of 8 and at most --size, got {args.vae_crop}")
    args.ship = args.ship or args.output / "ship"
    try:
        on_cpu = torch.device(args.device).type == "cpu"
    except RuntimeError as error:
        p.error(f"--device: {error}")
    args.workers = args.workers if args.workers is not None else (2 if on_cpu else 1)
    if args.workers < 1 or (args.workers > 1 and not on_cpu):
        p.error(f"--workers must be >= 1, and 1 on {args.device} (the workers share CPU cores), got {args.workers}")
    return args


# ------------------------------------------------------------------------------------------ helpers
def _seed(args, stage: str, step: int) -> torch.Generator:
    from mvcustom_core.backbone.video_data import sample_seed

    return torch.Generator().manual_seed(sample_seed(args.seed, _STAGE_CODES[stage], step))


def _save_torch(path: Path, payload: dict) -> None:
    from mvcustom_core.files import atomic_write

    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    from mvcustom_core.files import atomic_write

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class _Stop:
    reason: str | None = None


@contextmanager
def _stop_on_signals() -> Iterator[_Stop]:
    """SIGTERM / SIGINT set a flag; the loop checkpoints after the current step and exits."""
    flag, previous = _Stop(), {}

    def handler(signum, _frame):
        flag.reason = signal.Signals(signum).name

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class EMA:
    """Exponential moving average of parameters (decay warmed up as ``min(d, (1 + n) / (10 + n))``)."""

    def __init__(self, parameters: dict[str, nn.Parameter], decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = {k: p.detach().clone() for k, p in parameters.items()}

    @torch.no_grad()
    def update(self, parameters: dict[str, nn.Parameter]) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.shadow.values()), [p.detach() for p in parameters.values()], 1 - d)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


# One share of a step's loss: (model or its replica, step, rows of the step's batch) -> the mean loss over those rows.
BatchLoss = Callable[[nn.Module, int, Tensor], Tensor]


class BatchWorkers:
    """Each step's batch split over ``count`` replicas of ``model`` that run at once, one Python thread each.

    Replica 0 is ``model``; the others are :func:`~mvcustom_core.backbone.module_view.module_view` views of it: their
    own parameter objects (so their own ``.grad``) over ``model``'s weight memory, so an optimizer step on ``model``
    updates them all. Worker ``i`` runs ``batch_loss`` on its rows and back-propagates it weighted by its share of
    the batch; the gradients are then added into ``model``'s in worker order. For losses that are means over the
    batch's rows this is the whole batch's gradient, up to float rounding, and a run stays deterministic.

    Why: at the built-in backbone's sizes (8×8 latents, 64² frames) one op is too small for two intra-op threads to
    pay; two workers on one thread each do a UNet step in 0.50 s where one worker on two threads takes 0.61 s.
    """

    def __init__(self, model: nn.Module, batch: int, count: int, threads: int | None = None):
        """``threads``: CPU threads in all, shared out as intra-op threads per worker until :meth:`close` (None: keep
        torch's setting)."""
        from concurrent.futures import ThreadPoolExecutor

        from mvcustom_core.backbone.module_view import module_view

        self.model, self.batch = model, batch
        self.rows = [rows for rows in torch.arange(batch).tensor_split(min(count, batch)) if len(rows)]
        self.replicas = [model] + [module_view(model) for _ in self.rows[1:]]
        self.pool = ThreadPoolExecutor(len(self.rows) - 1) if len(self.rows) > 1 else None
        self._threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(max(1, threads // len(self.rows)))

    def backward(self, batch_loss: BatchLoss, step: int) -> Tensor:
        """Back-propagate the step's loss into ``model``'s gradients; returns the loss (detached)."""
        def share(replica: nn.Module, rows: Tensor) -> Tensor:
            loss = batch_loss(replica, step, rows) * (len(rows) / self.batch)
            loss.backward()
            return loss.detach()

        if self.pool is None:
            return share(self.model, self.rows[0])
        jobs = [self.pool.submit(share, replica, rows) for replica, rows in zip(self.replicas[1:], self.rows[1:])]
        try:
            total = share(self.model, self.rows[0])
        finally:
            for job in jobs:  # every worker has finished before the gradients are read or an error propagates
                job.exception()
        total = total + sum(job.result() for job in jobs)
        for replica in self.replicas[1:]:
            for param, other in zip(self.model.parameters(), replica.parameters()):
                if other.grad is not None:
                    param.grad = other.grad if param.grad is None else param.grad.add_(other.grad)
                    other.grad = None
        return total

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        torch.set_num_threads(self._threads)


def train_loop(stage: str, folder: Path, key: dict, steps: int, model: nn.Module, batch_loss: BatchLoss, batch: int,
               args, *, lr: float, warmup: int = 0, ema_decay: float | None = None,
               max_grad_norm: float = 1.0) -> dict[str, Any]:
    """AdamW over ``model``'s trainable parameters for ``steps >= 1`` steps of ``batch_loss`` on batches of
    ``batch`` rows, split over ``args.workers`` workers (:class:`BatchWorkers`); linear warm-up, cosine decay to
    ``lr / 10``; an EMA of the parameters when ``ema_decay`` is given; checkpoints and resume.

    ``folder/checkpoint.pt`` holds parameters, optimizer, EMA, step, the losses, the wall and CPU seconds spent
    and ``key`` (the settings that change what the stage computes; resuming with another key is refused; the
    worker count is not one of them). Returns the final checkpoint payload.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = folder / "checkpoint.pt", folder / "log.jsonl"
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    ema = EMA(parameters, ema_decay) if ema_decay is not None else None
    optimizer = _adamw(list(parameters.values()), lr)
    # Linear warm-up, then a cosine decay to a tenth of the rate at the last step.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup)) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    start, losses, seconds, cpu = 0, [], 0.0, 0.0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=args.device, weights_only=True)
        if state["key"] != key:
            changed = sorted(k for k in key if state["key"].get(k) != key[k])
            raise SystemExit(f"{ckpt_path}: written with other settings ({', '.join(changed)}); restore them or "
                             f"delete {folder} to train this stage again")
        with torch.no_grad():
            for k, p in parameters.items():
                p.copy_(state["parameters"][k])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, losses = int(state["step"]), list(state["losses"])
        seconds, cpu = float(state["seconds"]), float(state["cpu_seconds"])
        if start < steps:
            print(f"{stage}: resuming at step {start}", flush=True)

    def payload(step: int) -> dict:
        return {"key": key, "step": step, "losses": losses, "seconds": seconds, "cpu_seconds": cpu,
                "parameters": {k: p.detach().clone() for k, p in parameters.items()},
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "ema": ema.state_dict() if ema is not None else None}

    with _stop_on_signals() as flag, closing(BatchWorkers(model, batch, args.workers, args.threads)) as workers:
        for step in range(start, steps):
            began, began_cpu = time.perf_counter(), time.process_time()
            optimizer.zero_grad(set_to_none=True)
            loss = workers.backward(batch_loss, step)
            if not torch.isfinite(loss):
                raise SystemExit(f"{stage}: loss is {float(loss)} at step {step}; lower the learning rate")
            torch.nn.utils.clip_grad_norm_(list(parameters.values()), max_grad_norm)
            optimizer.step()
            schedule.step()
            if ema is not None:
                ema.update(parameters)
            done, took = step + 1, time.perf_counter() - began
            seconds += took
            cpu += time.process_time() - began_cpu
            losses.append(float(loss.detach()))
            if done % args.log_every == 0 or done == steps or done == start + 1:
                recent = sum(losses[-args.log_every:]) / len(losses[-args.log_every:])
                eta = (steps - done) * seconds / max(1, done)
                print(f"{stage}: step {done}/{steps}  loss {recent:.5f}  {took:.2f} s/step  eta {eta / 60:.1f} min",
                      flush=True)
                with open(log_path, "a", encoding="utf-8") as log:  # a log, appended; not a checkpoint
                    log.write(json.dumps({"step": done, "loss": recent, "seconds": round(seconds, 2),
                                          "cpu_seconds": round(cpu, 2)}) + "\n")
            if flag.reason or done % args.checkpoint_every == 0 or done == steps:
                _save_torch(ckpt_path, payload(done))
            if flag.reason:
                raise SystemExit(f"{stage}: stopped by {flag.reason} at step {done}; re-run the same command to resume")
    return torch.load(ckpt_path, map_location="cpu", weights_only=True)


def _adamw(parameters: list[nn.Parameter], lr: float) -> torch.optim.AdamW:
    """AdamW (weight decay 1e-2), fused where torch has the kernel for the parameters' device: on the CPU one fused
    step over the UNet takes 8 ms against 38 ms for the per-tensor loop (the same update rule)."""
    try:
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-2, fused=True)
    except RuntimeError:  # no fused kernel for this device or dtype
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-2)


# ------------------------------------------------------------------------------------------ 1. data
def _chunk_paths(args, index: int) -> tuple[Path, Path]:
    folder = args.output / "data"
    return folder / f"chunk-{index:05d}.safetensors", folder / f"chunk-{index:05d}.json"


def _data_key(args) -> dict:
    return {"frames": args.frames, "size": args.size, "supersample": args.supersample, "seed": args.seed}


def stage_data(args) -> None:
    """Render the clips in chunks of :data:`CHUNK` (a chunk is complete once its JSON exists)."""
    from mvcustom_core.backbone.video_data import sample_seed
    from mvcustom_core.files import atomic_write_text
    from mvcustom_core.synthetic.world import HELD_OUT_SEEDS, render_clip

    chunks = math.ceil(args.clips / CHUNK)
    began = time.perf_counter()
    for c in range(chunks):
        tensors_path, json_path = _chunk_paths(args, c)
        if json_path.is_file():
            if json.loads(json_path.read_text())["key"] != _data_key(args):
                raise SystemExit(f"{json_path}: rendered with other data settings; delete {json_path.parent}")
            continue
        rgb, disparity, mask, captions, worlds, paths = [], [], [], [], [], []
        for i in range(c * CHUNK, min(args.clips, (c + 1) * CHUNK)):
            world = HELD_OUT_SEEDS + i
            clip = render_clip(world, args.frames, args.size, supersample=args.supersample,
                               path_seed=sample_seed(args.seed, 0xDA7A, i))
            r = clip.render
            rgb.append((r.rgb * 255).round().to(torch.uint8))
            disparity.append(torch.where(r.valid, 1.0 / r.depth, torch.zeros_like(r.depth)).half())
            mask.append(r.mask.to(torch.uint8))
            captions.append(clip.caption)
            worlds.append(world)
            paths.append(clip.path)
        _save_tensors(tensors_path, {"rgb": torch.stack(rgb), "disparity": torch.stack(disparity),
                                     "mask": torch.stack(mask)})
        atomic_write_text(json_path, json.dumps({"key": _data_key(args), "captions": captions, "worlds": worlds,
                                                 "paths": paths}) + "\n")
        done = min(args.clips, (c + 1) * CHUNK)
        print(f"data: {done}/{args.clips} clips  {(time.perf_counter() - began) / 60:.1f} min", flush=True)


def load_data(args) -> dict[str, Any]:
    """All chunks: ``rgb [N, F, 3, H, W]`` uint8, ``disparity [N, F, 1, H, W]`` float16, ``mask``, ``captions``."""
    parts, captions = [], []
    for c in range(math.ceil(args.clips / CHUNK)):
        tensors_path, json_path = _chunk_paths(args, c)
        if not json_path.is_file():
            raise SystemExit(f"{json_path}: missing; run the data stage first")
        parts.append(_load_tensors(tensors_path))
        captions += json.loads(json_path.read_text())["captions"]
    data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    data["captions"] = captions
    return data


def _pixels(rgb_uint8: Tensor) -> Tensor:
    return rgb_uint8.float() / 127.5 - 1.0


# ------------------------------------------------------------------------------------------ 2. vae
def _vae_key(args) -> dict:
    return {**_data_key(args), "clips": args.clips, "steps": args.vae_steps, "crop_steps": args.vae_crop_steps,
            "crop": args.vae_crop, "batch": args.vae_batch, "lr": args.vae_lr, "kl": args.vae_kl,
            "grad": args.vae_grad}


def vae_loss(vae: nn.Module, x: Tensor, eps: Tensor, kl_weight: float, grad_weight: float) -> Tensor:
    """L1 reconstruction + ``grad_weight`` · L1 of the finite differences + ``kl_weight`` · KL(q(z|x) ‖ N(0, I))."""
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * eps
    rec = vae.decode(z).sample
    loss = (rec - x).abs().mean()
    for dim in (-1, -2):
        loss = loss + grad_weight * (rec.diff(dim=dim) - x.diff(dim=dim)).abs().mean()
    kl = 0.5 * (posterior.mean ** 2 + posterior.var - 1.0 - posterior.logvar).sum(dim=(1, 2, 3)).mean()
    return loss + kl_weight * kl


def stage_vae(args) -> None:
    from mvcustom_core.backbone.sampler import LATENT_SCALE
    from mvcustom_core.backbone.tiny_world import fold_latent_scale, tiny_world_components

    folder = args.output / "vae"
    if (folder / "vae.safetensors").is_file():
        return
    data = load_data(args)
    frames = data["rgb"].flatten(0, 1).to(args.device)  # [N*F, 3, H, W]
    vae = tiny_world_components(args.seed).vae.to(args.device).train()
    latent_channels = vae.config.latent_channels

    def batch_loss(replica: nn.Module, step: int, rows: Tensor) -> Tensor:
        g = _seed(args, "vae", step)
        idx = torch.randint(len(frames), (args.vae_batch,), generator=g)
        x = _pixels(frames[idx[rows].to(args.device)])
        if step < args.vae_crop_steps and args.vae_crop < args.size:
            cells = (args.size - args.vae_crop) // 8 + 1
            oy, ox = (int(torch.randint(cells, (), generator=g)) * 8 for _ in range(2))
            x = x[..., oy:oy + args.vae_crop, ox:ox + args.vae_crop]
        if bool(torch.rand((), generator=g) < 0.5):
            x = x.flip(-1)
        eps = torch.randn((args.vae_batch, latent_channels, x.shape[-2] // 8, x.shape[-1] // 8), generator=g)
        return vae_loss(replica, x, eps[rows].to(args.device), args.vae_kl, args.vae_grad)

    state = train_loop("vae", folder, _vae_key(args), args.vae_steps, vae, batch_loss, args.vae_batch, args,
                       lr=args.vae_lr, warmup=100)
    vae.load_state_dict(state["parameters"], strict=False)
    vae.eval()
    # Latent spread on a fixed subset, folded into the weights so that 0.18215 · z has unit spread.
    with torch.no_grad():
        sample = _pixels(frames[torch.randperm(len(frames), generator=torch.Generator().manual_seed(0))[:512]])
        z = torch.cat([vae.encode(sample[i:i + 64]).latent_dist.mean for i in range(0, len(sample), 64)])
    factor = 1.0 / (LATENT_SCALE * float(z.std()))
    fold_latent_scale(vae, factor)
    _save_tensors(folder / "vae.safetensors", vae.state_dict(), {"latent_factor": repr(factor)})
    print(f"vae: latent std {float(z.std()):.4f} folded by {factor:.4f}", flush=True)


def _trained_vae(args) -> nn.Module:
    from mvcustom_core.backbone.tiny_world import tiny_world_components

    vae = tiny_world_components(args.seed).vae
    vae.load_state_dict(_load_tensors(args.output / "vae" / "vae.safetensors"))
    return vae.to(args.device).eval().requires_grad_(False)


def cached_latents(args) -> tuple[Tensor, Tensor]:
    """Posterior mean and std of every frame ``[N, F, 4, h, w]`` (float16), encoded once with the trained VAE."""
    path = args.output / "latents.safetensors"
    if path.is_file():
        cached = _load_tensors(path)
        return cached["mean"], cached["std"]
    data, vae = load_data(args), _trained_vae(args)
    rgb = data["rgb"]
    means, stds = [], []
    with torch.no_grad():
        for clip in rgb:
            posterior = vae.encode(_pixels(clip.to(args.device))).latent_dist
            means.append(posterior.mean.half().cpu())
            stds.append(posterior.std.half().cpu())
    mean, std = torch.stack(means), torch.stack(stds)
    _save_tensors(path, {"mean": mean, "std": std})
    return mean, std


# ------------------------------------------------------------------------------------------ 3. unet
def _unet_key(args) -> dict:
    return {**_vae_key(args), "unet_steps": args.unet_steps, "batch": args.unet_batch, "lr": args.unet_lr,
            "warmup": args.unet_warmup, "ema": args.ema, "caption_dropout": args.caption_dropout,
            "min_snr": args.min_snr}


def _fresh_unet_parts(args):
    """Random UNet, text encoder and motion adapter combined into one ``UNetMotionModel`` (shared tensors)."""
    from mvcustom_core.backbone.loading import build_backbone
    from mvcustom_core.backbone.tiny_world import tiny_world_components, tiny_world_motion_adapter

    components = tiny_world_components(args.seed)
    unet = build_backbone(components, tiny_world_motion_adapter(args.seed))
    return components, unet


def min_snr_loss(unet: nn.Module, latents: Tensor, text: Tensor, scheduler, noise: Tensor, timesteps: Tensor,
                 gamma: float) -> Tensor:
    """ε-prediction MSE per clip weighted by ``min(SNR_t, γ) / SNR_t`` (Min-SNR-γ; Hang et al. 2023, "Efficient
    Diffusion Training via Min-SNR Weighting Strategy", eq. 8 in the ε form), ``SNR_t = ᾱ_t / (1 − ᾱ_t)``.

    ``latents [B, 4, F, h, w]``, ``text [B, 77, C]`` (repeated per frame as diffusers wants), ``timesteps [B]``.
    ``gamma = 0`` gives the plain mean (:func:`mvcustom_core.backbone.training.diffusion_loss`).
    """
    f = latents.shape[2]
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, encoder_hidden_states=text.repeat_interleave(f, dim=0)).sample
    per_clip = (prediction.float() - noise.float()).pow(2).flatten(1).mean(1)
    if gamma <= 0:
        return per_clip.mean()
    alpha_bar = scheduler.alphas_cumprod.to(latents.device)[timesteps].float()
    snr = alpha_bar / (1 - alpha_bar)
    return (per_clip * snr.clamp_max(gamma) / snr).mean()


def stage_unet(args) -> None:
    from mvcustom_core.backbone.sampler import LATENT_SCALE
    from mvcustom_core.backbone.text import encode_prompt
    from mvcustom_core.backbone.tiny_world import tiny_world_tokenizer
    from mvcustom_core.customization.training import training_scheduler

    folder = args.output / "unet"
    if (folder / "unet.safetensors").is_file():
        return
    mean, std = (x.to(args.device) for x in cached_latents(args))
    captions = load_data(args)["captions"]
    components, unet = _fresh_unet_parts(args)
    model = nn.ModuleDict({"unet": unet, "text": components.text_encoder}).to(args.device).train()
    tokenizer = tiny_world_tokenizer()
    scheduler = training_scheduler(unet)  # AnimateDiff's linear betas, as the sampler and customization use
    num_t = scheduler.config.num_train_timesteps

    def batch_loss(replica: nn.Module, step: int, rows: Tensor) -> Tensor:
        g = _seed(args, "unet", step)
        idx = torch.randint(len(mean), (args.unet_batch,), generator=g)
        m, s = mean[idx].float(), std[idx].float()
        z = (m + s * torch.randn(m.shape, generator=g).to(m)) * LATENT_SCALE  # [B, F, 4, h, w]
        latents = z.permute(0, 2, 1, 3, 4).contiguous()  # [B, 4, F, h, w]
        drop = torch.rand(args.unet_batch, generator=g) < args.caption_dropout
        texts = ["" if d else captions[int(i)] for i, d in zip(idx, drop)]
        noise = torch.randn(latents.shape, generator=g).to(latents)
        t = torch.randint(0, num_t, (args.unet_batch,), generator=g).to(latents.device)
        text = encode_prompt(replica["text"], tokenizer, [texts[int(r)] for r in rows])
        return min_snr_loss(replica["unet"], latents[rows], text, scheduler, noise[rows], t[rows], args.min_snr)

    train_loop("unet", folder, _unet_key(args), args.unet_steps, model, batch_loss, args.unet_batch, args,
               lr=args.unet_lr, warmup=args.unet_warmup, ema_decay=args.ema)
    state = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)
    _save_tensors(folder / "unet.safetensors", state["ema"]["shadow"])


def _load_parameters(module: nn.Module, parameters: dict[str, Tensor]) -> None:
    """Load every parameter of ``module`` (buffers such as positional encodings keep their fixed values)."""
    missing, unexpected = module.load_state_dict(parameters, strict=False)
    names = {n for n, _ in module.named_parameters()}
    if unexpected or any(m in names for m in missing):
        raise SystemExit(f"{type(module).__name__}: saved weights do not fit: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")


def trained_backbone(args, *, motion: Path | None = None):
    """The stage-3 result (EMA weights) as a pack ``Backbone``; ``motion`` replaces its motion modules."""
    from mvcustom_core.backbone.loading import Backbone
    from mvcustom_core.backbone.tiny_world import tiny_world_tokenizer
    from mvcustom_core.backbone.training import _load_motion_weights, motion_adapter_from_unet

    components, unet = _fresh_unet_parts(args)
    weights = _load_tensors(args.output / "unet" / "unet.safetensors")
    _load_parameters(unet, {k[5:]: v for k, v in weights.items() if k.startswith("unet.")})
    _load_parameters(components.text_encoder, {k[5:]: v for k, v in weights.items() if k.startswith("text.")})
    if motion is not None:
        _load_motion_weights(unet, dict(motion_adapter_from_unet(unet).config), motion)
    return components, Backbone(unet=unet.eval(), vae=_trained_vae(args), text_encoder=components.text_encoder.eval(),
                                tokenizer=tiny_world_tokenizer())


# ------------------------------------------------------------------------------------------ 4. dense
def _write_frame_folders(args, root: Path) -> None:
    from mvcustom_core.files import atomic_write_text, save_png

    index = root / "captions.jsonl"
    if index.is_file():
        return
    data = load_data(args)
    lines = []
    for i in range(min(args.dense_clips, len(data["rgb"]))):
        name = f"clip_{i:05d}"
        for f, frame in enumerate(data["rgb"][i]):
            save_png(frame.float() / 255, root / name / f"{f:03d}.png")
        lines.append(json.dumps({"clip": name, "caption": data["captions"][i]}))
    atomic_write_text(index, "\n".join(lines) + "\n")


def stage_dense(args) -> None:
    from mvcustom_core.backbone.training import TrainConfig, train_motion_module
    from mvcustom_core.backbone.video_data import VideoClipDataset, scan_clips

    folder = args.output / "dense"
    if args.dense_steps == 0 or (folder / "motion_module.safetensors").is_file():
        return
    clips_root = args.output / "clips"
    _write_frame_folders(args, clips_root)
    _, backbone = trained_backbone(args)
    dataset = VideoClipDataset(scan_clips(clips_root), args.frames, (args.size, args.size), stride=1,
                               caption_dropout=args.caption_dropout)
    config = TrainConfig(steps=args.dense_steps, batch_size=args.dense_batch, learning_rate=args.dense_lr,
                         lr_warmup_steps=20, window_start=1, window_end=None, window_steps=max(1, args.dense_steps // 2),
                         checkpoint_every=args.checkpoint_every, keep_checkpoints=1, seed=args.seed,
                         log_every=args.log_every)

    def report(p) -> None:
        if p.log:
            print(f"dense: step {p.step}/{p.total}  loss {p.loss:.5f}  window {p.window or 'full'}  "
                  f"{p.seconds:.2f} s/step", flush=True)

    result = train_motion_module(backbone, dataset, folder, config, progress=report)
    if result.stopped:
        raise SystemExit(f"dense: stopped at step {result.step}; re-run the same command to resume")


# ------------------------------------------------------------------------------------------ 5. depth
def _depth_key(args) -> dict:
    return {**_vae_key(args), "depth_steps": args.depth_steps, "batch": args.depth_batch, "lr": args.depth_lr}


def scale_invariant_disparity_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Scale-invariant MSE in disparity: per image the least-squares scale ``s = Σxy / Σx²`` maps ``prediction`` to
    ``target`` before the error (MiDaS's scale-and-shift fit, Ranftl et al. 2020 eq. 4, without the shift: the
    sky's disparity 0 stays 0, so one scale fitted on the subject later places the ground too). ``[B, H, W]``.
    """
    x, y = prediction.flatten(1), target.flatten(1)
    s = (x * y).sum(1, keepdim=True) / (x * x).sum(1, keepdim=True).clamp_min(1e-8)
    return ((s * x - y) ** 2).mean()


def stage_depth(args) -> None:
    from mvcustom_core.backbone.tiny_world import tiny_world_depth_model

    folder = args.output / "depth"
    if (folder / "model" / "model.safetensors").is_file():
        return
    data, vae = load_data(args), _trained_vae(args)
    frames = data["rgb"].flatten(0, 1).to(args.device)
    disparity = data["disparity"].flatten(0, 1)[:, 0].float().to(args.device)
    model = tiny_world_depth_model(args.seed).to(args.device).train()

    def batch_loss(replica: nn.Module, step: int, rows: Tensor) -> Tensor:
        g = _seed(args, "depth", step)
        idx = torch.randint(len(frames), (args.depth_batch,), generator=g)[rows].to(args.device)
        x = _pixels(frames[idx])
        through_vae = (torch.rand(args.depth_batch, generator=g) < 0.5)[rows].to(args.device)
        if through_vae.any():
            with torch.no_grad():
                x[through_vae] = vae.decode(vae.encode(x[through_vae]).latent_dist.mean).sample.clamp(-1, 1)
        prediction = replica(pixel_values=x).predicted_depth  # [-1, 1]: the processor's mean/std of 0.5
        return scale_invariant_disparity_loss(prediction, disparity[idx])

    state = train_loop("depth", folder, _depth_key(args), args.depth_steps, model, batch_loss, args.depth_batch, args,
                       lr=args.depth_lr, warmup=50)
    model.load_state_dict(state["parameters"])
    model.eval().save_pretrained(folder / "model", safe_serialization=True)


# ------------------------------------------------------------------------------------------ 6. prior
PRIOR_REFERENCES = 8  # turntable photos per training world, as the demo's and the ablation's subjects have


def _prior_key(args) -> dict:
    return {**_unet_key(args), "prior_steps": args.prior_steps, "worlds": args.prior_worlds, "lr": args.prior_lr,
            "inner_steps": args.prior_inner_steps, "references": PRIOR_REFERENCES}


def _as_shipped(backbone) -> None:
    """Round the trained weights to float16 and back, as export writes them: the prior trains against the backbone
    users load."""
    with torch.no_grad():
        for module in (backbone.unet, backbone.vae, backbone.text_encoder):
            for tensor in module.parameters():
                tensor.copy_(tensor.half().float())


def prior_task(args, step: int):
    """Outer step ``step``'s task: the subject of training world ``HELD_OUT_SEEDS + step mod --prior-worlds`` (8
    turntable photos from a start azimuth drawn from the step's generator) and its customization settings (the
    demo's, token frozen, ``--prior-inner-steps`` steps at ``--prior-lr``, seeded by the step)."""
    from mvcustom_core.eval.world_ablation import customization_config, turntable_references
    from mvcustom_core.synthetic.world import HELD_OUT_SEEDS, build_world, world_spec

    g = _seed(args, "prior", step)
    spec = world_spec(HELD_OUT_SEEDS + step % args.prior_worlds)
    reference = turntable_references(build_world(spec), PRIOR_REFERENCES, 360.0 * float(torch.rand((), generator=g)),
                                     size=args.size)
    return reference, customization_config(spec, steps=args.prior_inner_steps, lr=args.prior_lr, token_lr=0.0,
                                           seed=int(torch.randint(0, 2**31, (1,), generator=g)))


def stage_prior(args) -> None:
    """The pose prior (:mod:`mvcustom_core.customization.pose_prior`) by Reptile (Nichol, Achiam & Schulman 2018,
    "On first-order meta-learning algorithms", with step size ε = 1): each outer step runs the pack's own
    customization (``train_customization``: a fresh AdamW, the subject token frozen) for a few steps on one training
    world's subject from the current prior, and the prior becomes its result. The prior is so trained for what it is
    used for: a few steps of a fresh customization from it. (One AdamW over all steps, with the same per-step loss,
    made a prior that a 20-step customization starts from worse: background PSNR −2.1 dB on the ablation's worlds.)
    """
    from mvcustom_core.customization import backbone_fingerprint, train_customization
    from mvcustom_core.customization.pose_prior import PosePrior, save_pose_prior
    from mvcustom_core.eval.world_ablation import customization_config
    from mvcustom_core.synthetic.world import HELD_OUT_SEEDS, world_spec

    folder = args.output / "prior"
    ckpt_path = folder / "checkpoint.pt"
    if args.prior_steps < 1 or (folder / "pose_prior.safetensors").is_file():
        return
    _, backbone = trained_backbone(args)
    _as_shipped(backbone)
    for module in (backbone.unet, backbone.vae, backbone.text_encoder):
        module.to(args.device)
    key, weights, start, losses, seconds, cpu = _prior_key(args), None, 0, [], 0.0, 0.0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state["key"] != key:
            raise SystemExit(f"{ckpt_path}: written with other settings; restore them or delete {folder}")
        weights, start, losses = state["weights"], int(state["step"]), list(state["losses"])
        seconds, cpu = float(state["seconds"]), float(state["cpu_seconds"])
        print(f"prior: resuming at step {start}", flush=True)

    def payload(step: int) -> dict:
        return {"key": key, "step": step, "weights": weights, "losses": losses, "seconds": seconds,
                "cpu_seconds": cpu}

    with _stop_on_signals() as flag:
        for step in range(start, args.prior_steps):
            began, began_cpu = time.perf_counter(), time.process_time()
            reference, config = prior_task(args, step)
            result = train_customization(backbone, reference, config, pose_init=weights)
            weights = result.customization.weights
            done = step + 1
            seconds += time.perf_counter() - began
            cpu += time.process_time() - began_cpu
            losses.append(sum(r["total"] for r in result.losses) / len(result.losses))
            if done % args.log_every == 0 or done == args.prior_steps:
                recent = sum(losses[-args.log_every:]) / len(losses[-args.log_every:])
                print(f"prior: step {done}/{args.prior_steps}  loss {recent:.5f}  "
                      f"eta {(args.prior_steps - done) * seconds / done / 60:.1f} min", flush=True)
            if flag.reason or done % args.checkpoint_every == 0 or done == args.prior_steps:
                _save_torch(ckpt_path, payload(done))
            if flag.reason:
                raise SystemExit(f"prior: stopped by {flag.reason} at step {done}; re-run the same command to resume")
    # The block selection and FeatureNeRF settings, the same for every world (no photos rendered for them).
    config = customization_config(world_spec(HELD_OUT_SEEDS), steps=args.prior_inner_steps, lr=args.prior_lr,
                                  token_lr=0.0)
    prior = PosePrior(weights, config.blocks, dict(config.featurenerf), backbone_fingerprint(backbone.unet),
                      {"method": "reptile", "outer_steps": args.prior_steps, "inner_steps": args.prior_inner_steps,
                       "worlds": args.prior_worlds, "lr": args.prior_lr, "references": PRIOR_REFERENCES})
    save_pose_prior(folder / "pose_prior.safetensors", prior)


# ------------------------------------------------------------------------------------------ 7. export
def stage_export(args) -> None:
    from mvcustom_core.backbone.loading import export_ldm_state_dict
    from mvcustom_core.backbone.motion_module import attention_window_metadata, export_motion_module_state_dict
    from mvcustom_core.backbone.tiny_world import (CHECKPOINT_FILE, DEPTH_FOLDER, MANIFEST_FILE, MOTION_FILE,
                                                   POSE_PRIOR_FILE, file_sha256, load_tiny_world,
                                                   load_tiny_world_pose_prior, save_depth_model)
    from mvcustom_core.backbone.training import motion_adapter_from_unet
    from mvcustom_core.files import atomic_write_bytes, atomic_write_text
    from mvcustom_core.synthetic.world import HELD_OUT_SEEDS

    dense = args.output / "dense" / "motion_module.safetensors"
    components, backbone = trained_backbone(args, motion=dense if dense.is_file() else None)
    components.vae = backbone.vae
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in export_ldm_state_dict(components).items()}
    ship = args.ship
    # One metadata entry: safetensors writes its metadata map in an unspecified order, so several entries would
    # make the bytes (and the manifest's hashes) differ from one export to the next.
    _save_tensors(ship / CHECKPOINT_FILE, half, {"model": "mvcustom tiny_world, SD1.x single-file layout"})
    motion = export_motion_module_state_dict(motion_adapter_from_unet(backbone.unet))
    # The attention the motion modules were trained with, in the header key the backbone loaders' "auto" reads.
    _save_tensors(ship / MOTION_FILE, {k: v.half() for k, v in motion.items()},
                  attention_window_metadata(None if dense.is_file() else 1))
    depth_files = save_depth_model(args.output / "depth" / "model", ship / DEPTH_FOLDER)
    prior = args.output / "prior" / "pose_prior.safetensors"
    if prior.is_file():
        atomic_write_bytes(ship / POSE_PRIOR_FILE, prior.read_bytes())

    def summary(stage: str) -> dict:
        path = args.output / stage / "checkpoint.pt"
        if not path.is_file():
            return {}
        state = torch.load(path, map_location="cpu", weights_only=True)
        tail = state["losses"][-100:]
        return {"steps": state["step"], "final_loss": sum(tail) / max(1, len(tail)),
                "seconds": round(state["seconds"], 1), "cpu_seconds": round(state.get("cpu_seconds", 0.0), 1)}

    files = [CHECKPOINT_FILE, MOTION_FILE, *(f"{DEPTH_FOLDER}/{name}" for name in depth_files),
             *([POSE_PRIOR_FILE] if prior.is_file() else [])]
    manifest = {
        "format": "mvcustom.tiny_world/1",
        "files": {name: {"sha256": file_sha256(ship / name), "bytes": (ship / name).stat().st_size} for name in files},
        "image_size": [args.size, args.size], "frames": args.frames,
        "training": {"command": "python scripts/train_tiny_world.py " + " ".join(sys.argv[1:]),
                     "data": {"clips": args.clips, "world_seeds": [HELD_OUT_SEEDS, HELD_OUT_SEEDS + args.clips - 1]},
                     "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "vae": summary("vae"), "unet": summary("unet"), "depth": summary("depth"),
                     "prior": summary("prior"),
                     "dense": {"steps": args.dense_steps, "window_end": "full"} if dense.is_file() else {},
                     "times": json.loads((args.output / "times.json").read_text())
                     if (args.output / "times.json").is_file() else {}},
    }
    atomic_write_text(ship / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    load_tiny_world(folder=ship)  # the real loaders accept what was written
    if prior.is_file():
        load_tiny_world_pose_prior(folder=ship)
    total = sum(entry["bytes"] for entry in manifest["files"].values())
    print(f"export: {len(files)} files, {total / 2**20:.2f} MiB in {ship}", flush=True)


# ------------------------------------------------------------------------------------------ 8. preview
def stage_preview(args) -> None:
    from mvcustom_core.backbone.sampler import decode_latents, sample
    from mvcustom_core.backbone.text import encode_prompt
    from mvcustom_core.backbone.tiny_world import load_tiny_world
    from mvcustom_core.files import image_grid, save_png
    from mvcustom_core.synthetic.world import world_spec

    backbone = load_tiny_world(folder=args.ship)
    rows = []
    for seed in range(6):
        prompt = world_spec(seed).caption()
        cond = encode_prompt(backbone.text_encoder, backbone.tokenizer, [prompt])
        uncond = encode_prompt(backbone.text_encoder, backbone.tokenizer, [""])
        with torch.no_grad():
            latents = sample(backbone.unet, cond, uncond, args.frames, args.size, args.size, steps=25, cfg=5.0,
                             seed=seed)
        rows.append(decode_latents(backbone.vae, latents))
        print(f"preview {seed}: {prompt}", flush=True)
    save_png(image_grid(torch.cat(rows), args.frames), args.output / "preview.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))  # the training loops share them out over their workers
    runners = {"data": stage_data, "vae": stage_vae, "unet": stage_unet, "dense": stage_dense,
               "depth": stage_depth, "prior": stage_prior, "export": stage_export, "preview": stage_preview}
    for stage in STAGES:
        if stage in args.stages:
            began, began_cpu = time.perf_counter(), time.process_time()
            try:
                runners[stage](args)
            finally:
                _add_time(args, stage, time.perf_counter() - began, time.process_time() - began_cpu)
            print(f"{stage}: done in {(time.perf_counter() - began) / 60:.1f} min", flush=True)
    return 0


def _add_time(args, stage: str, wall: float, cpu: float) -> None:
    """Accumulate each stage's wall and CPU seconds over all runs (resumes included) in ``times.json``."""
    from mvcustom_core.files import atomic_write_text

    path = args.output / "times.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    entry = times.setdefault(stage, {"wall_seconds": 0.0, "cpu_seconds": 0.0})
    entry["wall_seconds"] = round(entry["wall_seconds"] + wall, 1)
    entry["cpu_seconds"] = round(entry["cpu_seconds"] + cpu, 1)
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(times, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
