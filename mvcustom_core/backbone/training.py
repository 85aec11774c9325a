"""Backbone-stage (Stage-0) training: the AnimateDiff motion modules learn dense spatio-temporal attention.

MVCustom (§3.3, method.md §3.1) trains the motion modules of an SD1.5 + AnimateDiff ``UNetMotionModel`` on captioned
videos (a WebVid subset) with the temporal self-attentions made dense (all frames x a k x k spatial window), the
window widened progressively from k = 1 (AnimateDiff's temporal attention) by a :class:`WindowSchedule`. Spatial
layers, VAE and text encoder stay frozen.

Objective (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", eq. 14; AnimateDiff ``train.py``): with
``z0 = vae.encode(x).sample() · scaling_factor`` per frame, ``t ~ U{0..T-1}`` per clip, ``ε ~ N(0, I)``,
``z_t = √ᾱ_t z0 + √(1-ᾱ_t) ε`` (diffusers ``DDPMScheduler.add_noise``), the loss is ``‖ε_θ(z_t, t, c) - y‖²``
(mean) with ``y = ε`` (``prediction_type="epsilon"``) or ``y = √ᾱ_t ε - √(1-ᾱ_t) z0`` (``"v_prediction"``,
``get_velocity``). Betas default to AnimateDiff's linear schedule (``sampler.ANIMATEDIFF_SCHEDULER_CONFIG``).

Determinism and resume:
    - every random draw of a sample (its clip and frames, caption dropout, VAE posterior sample, noise, timestep)
      comes from generators seeded by ``(seed, p)``, ``p`` its position in the global sample stream
      (:class:`~.video_data.StepSampler`); the window is ``schedule(step)``. A run stopped after step ``k`` and
      resumed therefore repeats the uninterrupted run (bit-identical on the same device: the checkpoint holds
      fp32 weights, AdamW moments and the LR-scheduler state), and the process count only changes how the global
      batch is split (DDP averages gradients of equal shares: the same update up to summation order).
    - Checkpoint ``<output_dir>/checkpoints/step-<8 digits>/``: ``motion_module.safetensors`` (trained weights in
      the original AnimateDiff layout, fp32: loads with :func:`~.motion_module.load_motion_module`, ComfyUI
      AnimateDiff-Evolved and AnimateDiff itself; its metadata records the window of the last trained step,
      ``mvcustom.attention_window``, which the Load Backbone node's ``auto`` attention reads), ``optimizer.pt`` (optimizer, LR-scheduler and fp16
      loss-scaler state dicts; ``torch.load(weights_only=True)``), and ``trainer_state.json`` (step, window,
      config, data fingerprint), written last: a folder without it is incomplete and ignored. Every file is written atomically.
      ``<output_dir>/motion_module.safetensors`` is the final result.
    - SIGTERM / SIGINT (Ctrl-C) during :func:`train_motion_module` finish the current step, save a checkpoint
      and return with ``stopped=True``. A ``KeyboardInterrupt`` (a second Ctrl-C, or any when signals are not
      handled) abandons the current step and saves the last completed one the same way.

Multi-GPU / multi-node: pass an ``accelerate.Accelerator`` (or let one be made): DDP, mixed precision
(``fp16`` / ``bf16`` autocast with fp32 master weights; the frozen VAE and text encoder are cast to that dtype),
one checkpoint writer (the main process). ``scripts/train_backbone.py`` is the command line.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from ..files import atomic_write, atomic_write_text
from .dense_attention import enable_dense_attention, motion_attention_window, set_dense_window
from .loading import Backbone
from .motion_module import attention_window_metadata, export_motion_module_state_dict, load_motion_module
from .sampler import ANIMATEDIFF_SCHEDULER_CONFIG
from .schedule import WindowSchedule
from .text import encode_prompt
from .video_data import StepSampler, VideoClipDataset, collate_clips, sample_seed

__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "CheckpointInfo",
    "MOTION_MODULE_FILE",
    "freeze_for_motion_training",
    "motion_state_dict",
    "motion_adapter_from_unet",
    "save_motion_module",
    "window_schedule",
    "sample_noise",
    "diffusion_loss",
    "find_checkpoints",
    "latest_checkpoint",
    "train_motion_module",
]

MOTION_MODULE_FILE = "motion_module.safetensors"
_VAE_CHUNK = 16  # frames per VAE encoder call
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"step-(\d{8})")

# Fields that may differ on resume without changing what the run computes.
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "num_workers", "log_every", "batch_size",
                      "gradient_accumulation"}  # their product with the process count is checked separately


@dataclass
class TrainConfig:
    """Settings of one training run (all JSON-serialisable; stored in every checkpoint).

    Attributes:
        steps: optimizer steps in total (a resumed run may raise it).
        batch_size: clips per process and forward pass.
        gradient_accumulation: forward/backward passes per optimizer step (global batch = ``batch_size`` x
            processes x ``gradient_accumulation``).
        learning_rate, adam_betas, adam_eps, weight_decay: AdamW (AnimateDiff trains motion modules with AdamW
            at 1e-4).
        lr_warmup_steps: linear LR warm-up from 0.
        max_grad_norm: gradient clipping (``None``: off).
        window_start, window_end, window_steps, window_warmup, window_shape: the :class:`WindowSchedule`
            (``window_end=None``: full attention after the ramp).
        attention_impl: dense-attention implementation (``"auto"``, ``"gather"``, ``"flex"``).
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        noise_scheduler: DDPM scheduler config (num_train_timesteps, betas).
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"``.
        gradient_checkpointing: recompute UNet activations in the backward pass.
        checkpoint_every: steps between checkpoints (0: only at the end and on stop).
        keep_checkpoints: newest checkpoints kept (older ones deleted once a new one is complete).
        seed: seeds data order, noise and timesteps.
        num_workers: DataLoader worker processes.
        log_every: steps between progress reports to the callback's ``log`` flag.
    """

    steps: int = 1000
    batch_size: int = 1
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 1e-2
    lr_warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    window_start: int = 1
    window_end: int | None = None
    window_steps: int = 1000
    window_warmup: int = 0
    window_shape: Literal["linear", "cosine"] = "linear"
    attention_impl: str = "auto"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    noise_scheduler: dict[str, Any] = field(default_factory=lambda: {
        k: ANIMATEDIFF_SCHEDULER_CONFIG[k] for k in ("num_train_timesteps", "beta_start", "beta_end",
                                                     "beta_schedule")})
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        if self.steps < 0 or self.batch_size < 1 or self.gradient_accumulation < 1:
            raise ValueError(f"TrainConfig: steps must be >= 0, batch_size and gradient_accumulation >= 1, got "
                             f"{self.steps}, {self.batch_size}, {self.gradient_accumulation}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"TrainConfig: prediction_type must be 'epsilon' or 'v_prediction', got "
                             f"{self.prediction_type!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"TrainConfig: mixed_precision must be 'no', 'fp16' or 'bf16', got "
                             f"{self.mixed_precision!r}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("TrainConfig: checkpoint_every must be >= 0 and keep_checkpoints >= 1")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class TrainProgress:
    """Passed to the progress callback after every step.

    Attributes:
        step: steps done so far (1-based after the first step).
        total: ``config.steps``.
        loss: this step's loss, averaged over processes.
        window: the dense-attention window used in this step (``None`` = full).
        learning_rate: the LR used in this step.
        seconds: wall time of the step.
        log: whether this step is a logging step (``log_every``, first and last).
    """

    step: int
    total: int
    loss: float
    window: int | None
    learning_rate: float
    seconds: float
    log: bool


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint folder and its ``trainer_state.json``."""

    path: Path
    step: int
    state: dict[str, Any]


@dataclass
class TrainResult:
    """What :func:`train_motion_module` did.

    Attributes:
        step: steps done (equals ``config.steps`` unless stopped).
        stopped: stopped early by a signal or ``should_stop``.
        losses: per-step losses of this call (not of earlier, resumed-from runs).
        checkpoint: the last checkpoint written (``None`` if none).
        motion_module: ``<output_dir>/motion_module.safetensors`` when training finished, else ``None``.
    """

    step: int
    stopped: bool
    losses: list[float]
    checkpoint: Path | None
    motion_module: Path | None


# ------------------------------------------------------------------------------------------ parameters
def _is_motion_parameter(name: str) -> bool:
    return ".motion_modules." in f".{name}"


def freeze_for_motion_training(unet: nn.Module) -> list[str]:
    """Freeze every parameter except the motion modules'; returns the trainable parameter names.

    Same selection as diffusers ``UNetMotionModel.freeze_unet2d_params`` (``*.motion_modules.*``).

    Raises:
        ValueError: the model has no motion-module parameters.
    """
    names = []
    for name, parameter in unet.named_parameters():
        trainable = _is_motion_parameter(name)
        parameter.requires_grad_(trainable)
        if trainable:
            names.append(name)
    if not names:
        raise ValueError(f"{type(unet).__name__} has no '*.motion_modules.*' parameters to train")
    return names


def motion_state_dict(unet: nn.Module) -> dict[str, Tensor]:
    """The motion-module tensors of a ``UNetMotionModel`` under ``MotionAdapter`` names (the names coincide)."""
    return {k: v for k, v in unet.state_dict().items() if _is_motion_parameter(k)}


def motion_adapter_from_unet(unet: nn.Module) -> nn.Module:
    """A diffusers ``MotionAdapter`` holding (sharing) the motion-module tensors of a ``UNetMotionModel``.

    Config as diffusers ``UNetMotionModel.save_motion_modules`` builds it, plus the transformer layer counts.
    """
    from diffusers import MotionAdapter

    config = unet.config
    with torch.device("meta"):
        adapter = MotionAdapter(
            block_out_channels=tuple(config["block_out_channels"]),
            motion_layers_per_block=config["layers_per_block"],
            motion_transformer_layers_per_block=config["temporal_transformer_layers_per_block"],
            motion_mid_block_layers_per_block=config["temporal_transformer_layers_per_mid_block"],
            motion_num_attention_heads=config["motion_num_attention_heads"],
            motion_norm_num_groups=config["norm_num_groups"],
            motion_max_seq_length=config["motion_max_seq_length"],
            use_motion_mid_block=config["use_motion_mid_block"],
        )
    adapter.load_state_dict(motion_state_dict(unet), strict=True, assign=True)
    return adapter


def save_motion_module(unet: nn.Module, path: str | Path, *, dtype: torch.dtype | None = None,
                       metadata: dict[str, str] | None = None) -> Path:
    """Write the motion modules of ``unet`` as an AnimateDiff-layout ``.safetensors`` file, atomically.

    The header records the attention ``unet`` runs (``mvcustom.attention_window``): the installed dense
    window, or 1 (temporal) without dense attention.

    Args:
        unet: a ``UNetMotionModel``.
        path: destination.
        dtype: cast floating tensors (``None``: keep, fp32 in training).
        metadata: more string metadata for the safetensors header.
    """
    return _save_adapter(motion_adapter_from_unet(unet), path, dtype=dtype,
                         metadata={**attention_window_metadata(motion_attention_window(unet)), **(metadata or {})})


def _save_adapter(adapter: nn.Module, path: str | Path, *, dtype: torch.dtype | None = None,
                  metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    state = export_motion_module_state_dict(adapter)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata or {}))


def _save_unet_motion(unet: nn.Module, adapter: nn.Module, path: Path, step: int, window: int | None) -> Path:
    """``window``: the one the weights were last trained with (the schedule's at ``step - 1``)."""
    # Re-point the adapter at the UNet's current tensors: wrappers (DDP) may have replaced the storage it shared.
    adapter.load_state_dict(motion_state_dict(unet), strict=True, assign=True)
    return _save_adapter(adapter, path, metadata={"step": str(step), **attention_window_metadata(window)})


def _load_motion_weights(unet: nn.Module, adapter_config: dict[str, Any], path: Path) -> None:
    """Copy a motion-module file into the motion modules of ``unet``."""
    state = load_motion_module(path, dtype=torch.float32, config=adapter_config).state_dict()
    own = motion_state_dict(unet)
    if set(state) != set(own):
        raise ValueError(f"{path}: motion module does not fit the model: "
                         f"{sorted(set(own) ^ set(state))[:3]} differ")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name])


# ----------------------------------------------------------------------------------------------- loss
def window_schedule(config: TrainConfig, latent_size: tuple[int, int]) -> WindowSchedule:
    """The :class:`WindowSchedule` of a config; ``window_end=None`` ramps to the largest latent side."""
    full_at = max(max(latent_size), config.window_start)
    return WindowSchedule(start=config.window_start, end=config.window_end, steps=max(1, config.window_steps),
                          warmup=config.window_warmup, shape=config.window_shape, full_at=full_at)


def _noise_scheduler(config: TrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**config.noise_scheduler, prediction_type=config.prediction_type)


def sample_noise(seeds: list[int], latent_shape: tuple[int, ...], num_train_timesteps: int) -> tuple[Tensor, Tensor]:
    """Per-sample diffusion noise ``[B, *latent_shape]`` and timesteps ``[B]`` (CPU) from each sample's seed."""
    noise, timesteps = [], []
    for seed in seeds:
        generator = torch.Generator().manual_seed(sample_seed(seed, 0x7EA1))
        noise.append(torch.randn(latent_shape, generator=generator))
        timesteps.append(torch.randint(0, num_train_timesteps, (), generator=generator))
    return torch.stack(noise), torch.stack(timesteps)


def diffusion_loss(unet: nn.Module, latents: Tensor, text: Tensor, noise_scheduler: Any, noise: Tensor,
                   timesteps: Tensor) -> Tensor:
    """Denoising loss of one batch (module docstring): mean squared error of the UNet's prediction.

    Args:
        unet: ``UNetMotionModel``.
        latents: ``[B, 4, F, h, w]`` scaled VAE latents ``z0``.
        text: ``[B, 77, C]`` conditioning (repeated per frame here, as diffusers >= 0.30 wants ``[B·F, 77, C]``).
        noise_scheduler: diffusers ``DDPMScheduler`` (``add_noise``, ``get_velocity``, ``config``).
        noise: ``ε`` shaped like ``latents``.
        timesteps: ``[B]`` integer timesteps.

    Returns:
        Scalar fp32 loss.
    """
    f = latents.shape[2]
    noise, timesteps = noise.to(latents), timesteps.to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet(noisy, timesteps, encoder_hidden_states=text.repeat_interleave(f, dim=0)).sample
    return F_.mse_loss(prediction.float(), target.float())


@torch.no_grad()
def _encode_batch(backbone: Backbone, batch: dict, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``pixels [B, F, 3, H, W]`` -> latents ``[B, 4, F, h, w]`` (fp32; posterior samples drawn from each sample's
    ``batch["seed"]``) and text ``[B, 77, C]``."""
    pixels = batch["pixels"]
    b, f = pixels.shape[:2]
    frames = pixels.flatten(0, 1)
    # Frames are independent in the VAE encoder (GroupNorm is per image): chunks bound its activation memory.
    posteriors = [backbone.vae.encode(frames[i:i + _VAE_CHUNK].to(device=device, dtype=dtype)).latent_dist
                  for i in range(0, frames.shape[0], _VAE_CHUNK)]
    mean = torch.cat([p.mean for p in posteriors])
    std = torch.cat([p.std for p in posteriors])
    eps = [torch.randn((f, *mean.shape[1:]), generator=torch.Generator().manual_seed(sample_seed(seed, 0x1A7E)))
           for seed in batch["seed"]]  # per sample, so it does not depend on the batch split
    z0 = (mean + std * torch.cat(eps).to(mean)) * backbone.vae.config.scaling_factor
    latents = z0.float().unflatten(0, (b, f)).permute(0, 2, 1, 3, 4).contiguous()
    text = encode_prompt(backbone.text_encoder, backbone.tokenizer, list(batch["caption"]))
    return latents, text.float()


# ------------------------------------------------------------------------------------------ checkpoints
def find_checkpoints(output_dir: str | Path) -> list[CheckpointInfo]:
    """Complete checkpoints under ``<output_dir>/checkpoints`` (those with ``trainer_state.json``), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for folder in root.iterdir():
            if _STEP_DIR.fullmatch(folder.name) and (folder / STATE_FILE).is_file():
                try:
                    state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{folder / STATE_FILE}: unreadable trainer state: {error}") from error
                found.append(CheckpointInfo(folder, int(state["step"]), state))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(output_dir: str | Path) -> CheckpointInfo | None:
    """The newest complete checkpoint, or ``None``."""
    found = find_checkpoints(output_dir)
    return found[-1] if found else None


def _read_checkpoint(path: Path) -> CheckpointInfo:
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ValueError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
    state = json.loads(state_file.read_text(encoding="utf-8"))
    return CheckpointInfo(path, int(state["step"]), state)


def _save_checkpoint(output_dir: Path, step: int, unet: nn.Module, adapter: nn.Module, optimizer: Any,
                     lr_scheduler: Any, grad_scaler: Any, state: dict[str, Any], keep: int) -> Path:
    folder = output_dir / "checkpoints" / f"step-{step:08d}"
    if folder.exists():  # an incomplete or older copy of this step
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    _save_unet_motion(unet, adapter, folder / MOTION_MODULE_FILE, step, state["window"])
    payload = {"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()}
    if grad_scaler is not None:  # fp16 loss scale: a resumed run continues with the same scale
        payload["grad_scaler"] = grad_scaler.state_dict()
    atomic_write(folder / OPTIMIZER_FILE, lambda tmp: torch.save(payload, tmp))
    atomic_write_text(folder / STATE_FILE, json.dumps(state, indent=2) + "\n")
    for old in find_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    return folder


def _check_resumable(saved: dict[str, Any], config: TrainConfig, fingerprint: list[str], world_size: int,
                     where: Path) -> None:
    old = saved.get("config", {})
    new = config.to_json()
    changed = sorted(k for k in new if k not in _RESUMABLE_CHANGES and k in old and old[k] != new[k])
    if changed:
        raise ValueError(f"{where}: cannot resume with a different {', '.join(changed)} "
                         f"({', '.join(f'{k}: {old[k]!r} -> {new[k]!r}' for k in changed)}); "
                         "start a new output folder or restore the settings")
    global_batch = config.batch_size * world_size * config.gradient_accumulation
    if saved.get("global_batch", global_batch) != global_batch:
        raise ValueError(f"{where}: saved with a global batch of {saved['global_batch']} clips per step "
                         f"(batch_size x processes x gradient_accumulation), resumed with {global_batch} = "
                         f"{config.batch_size} x {world_size} x {config.gradient_accumulation}; keep the product "
                         "equal to resume")
    if saved.get("clips") is not None and saved["clips"] != fingerprint:
        raise ValueError(f"{where}: the dataset changed since the checkpoint ({len(saved['clips'])} clips then, "
                         f"{len(fingerprint)} now); resume on the same clips")


# ------------------------------------------------------------------------------------------- signals
class _StopFlag:
    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        self.reason = self.reason or reason


@contextmanager
def _stop_on_signals(flag: _StopFlag) -> Iterator[None]:
    """SIGTERM / first SIGINT set ``flag``; a second SIGINT raises KeyboardInterrupt. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, _frame):
        if signum == signal.SIGINT and flag.reason is not None:
            raise KeyboardInterrupt
        flag.set(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# ------------------------------------------------------------------------------------------- training
def _lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda step: 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)


def train_motion_module(
    backbone: Backbone,
    dataset: VideoClipDataset,
    output_dir: str | Path,
    config: TrainConfig,
    *,
    resume: bool | str | Path = True,
    accelerator: Any = None,
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    handle_signals: bool = True,
) -> TrainResult:
    """Train the motion modules of ``backbone.unet`` with dense attention and a widening window.

    Args:
        backbone: ``unet`` (``UNetMotionModel``), ``vae``, ``text_encoder``, ``tokenizer`` (required here). The
            UNet is trained in place (fp32, train mode, only motion modules requiring grad); dense attention stays
            installed on it afterwards at the last window. VAE and text encoder are frozen, moved to the
            accelerator's device and cast to the mixed-precision dtype.
        dataset: clips, frame count and size (``pixels [F, 3, H, W]``).
        output_dir: checkpoints and the final ``motion_module.safetensors``.
        config: :class:`TrainConfig`.
        resume: ``True`` continues from the newest complete checkpoint in ``output_dir`` if any, ``False``
            starts fresh (refused when checkpoints exist), or a checkpoint folder.
        accelerator: an ``accelerate.Accelerator``; default one with ``config.mixed_precision``.
        progress: called with :class:`TrainProgress` after every step (on every process).
        should_stop: polled after every step; ``True`` stops like a signal (checkpoint, ``stopped=True``).
        handle_signals: turn SIGTERM / SIGINT into a clean stop (main thread only).

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: no tokenizer, a frame size the UNet cannot halve down to its lowest level, a checkpoint made
            with other settings / data / global batch, or ``resume=False`` with checkpoints present.
    """
    from accelerate import Accelerator

    if backbone.tokenizer is None:
        raise ValueError("train_motion_module: the backbone has no tokenizer (load one with text.load_tokenizer)")
    output_dir = Path(output_dir)
    accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
    device, world_size, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    unet = backbone.unet
    trainable_names = freeze_for_motion_training(unet)
    for module in (backbone.vae, backbone.text_encoder):
        module.requires_grad_(False).eval().to(device)
        if module.dtype != weight_dtype:
            module.to(weight_dtype)
    unet.to(device).train()
    if unet.dtype != torch.float32:  # fp32 master weights; autocast computes in fp16/bf16
        unet.float()
    adapter = motion_adapter_from_unet(unet)  # config and key layout of the saved files
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    factor = 2 ** (len(backbone.vae.config.block_out_channels) - 1)
    multiple = factor * 2 ** (len(unet.config.down_block_types) - 1)  # the UNet halves the latent per down block
    if dataset.size[0] % multiple or dataset.size[1] % multiple:
        raise ValueError(f"train_motion_module: frame size {dataset.size[0]}x{dataset.size[1]} (height x width) must "
                         f"be a multiple of {multiple} for this VAE and UNet (e.g. 256 or 512)")
    schedule = window_schedule(config, (dataset.size[0] // factor, dataset.size[1] // factor))
    enable_dense_attention(unet, schedule(0), impl=config.attention_impl)

    named = dict(unet.named_parameters())
    parameters = [named[n] for n in trainable_names]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, betas=config.adam_betas,
                                  eps=config.adam_eps, weight_decay=config.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.lr_warmup_steps))

    # ---- resume
    fingerprint = dataset.fingerprint()
    if resume is True:
        checkpoint = latest_checkpoint(output_dir)
    elif resume is False:
        checkpoint = None
        if find_checkpoints(output_dir):
            raise ValueError(f"{output_dir}: holds checkpoints; resume them or choose another output folder")
    else:
        checkpoint = _read_checkpoint(Path(resume))
    start_step = 0
    if checkpoint is not None:
        _check_resumable(checkpoint.state, config, fingerprint, world_size, checkpoint.path)
        _load_motion_weights(unet, dict(adapter.config), checkpoint.path / MOTION_MODULE_FILE)
        payload = torch.load(checkpoint.path / OPTIMIZER_FILE, map_location=device, weights_only=True)
        optimizer.load_state_dict(payload["optimizer"])
        lr_scheduler.load_state_dict(payload["lr_scheduler"])
        if accelerator.scaler is not None and "grad_scaler" in payload:
            accelerator.scaler.load_state_dict(payload["grad_scaler"])
        start_step = checkpoint.step
        accelerator.print(f"resuming from {checkpoint.path} at step {start_step}")

    model, optimizer = accelerator.prepare(unet, optimizer)
    noise_scheduler = _noise_scheduler(config)
    num_train_timesteps = int(noise_scheduler.config.num_train_timesteps)
    accumulation = config.gradient_accumulation
    global_batch = config.batch_size * world_size * accumulation
    # Each process's share of a step (batch_size x accumulation clips) arrives as `accumulation` loader batches.
    sampler = StepSampler(len(dataset), global_batch, seed=config.seed, start_step=start_step,
                          end_step=config.steps, rank=rank, world_size=world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                                         collate_fn=collate_clips, num_workers=config.num_workers,
                                         persistent_workers=False)

    def trainer_state(step: int) -> dict[str, Any]:
        return {"step": step, "window": schedule(max(step - 1, 0)), "next_window": schedule(step),
                "config": config.to_json(), "world_size": world_size,
                "global_batch": global_batch, "clips": fingerprint,
                "trainable_parameters": len(trainable_names), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}

    last_checkpoint: Path | None = None

    def checkpoint_now(step: int) -> None:
        nonlocal last_checkpoint
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            last_checkpoint = _save_checkpoint(output_dir, step, unet, adapter, optimizer, lr_scheduler,
                                               accelerator.scaler, trainer_state(step), config.keep_checkpoints)
        accelerator.wait_for_everyone()

    flag, losses, step, updating = _StopFlag(), [], start_step, False
    batches = iter(loader)

    def stop_here(reason: str) -> TrainResult:
        checkpoint_now(step)
        accelerator.print(f"stopped at step {step} ({reason}); checkpoint {last_checkpoint}")
        return TrainResult(step, True, losses, last_checkpoint, None)

    with _stop_on_signals(flag) if handle_signals else _null_context():
        try:
            while step < config.steps:
                started = time.perf_counter()
                window = schedule(step)
                set_dense_window(unet, window)
                loss = torch.zeros((), device=device)
                for micro in range(accumulation):
                    batch = next(batches)
                    latents, text = _encode_batch(backbone, batch, device, weight_dtype)
                    noise, timesteps = sample_noise(batch["seed"], latents.shape[1:], num_train_timesteps)
                    # Gradients are all-reduced once per step, after the last micro-batch.
                    sync = micro == accumulation - 1
                    with _null_context() if sync else accelerator.no_sync(model):
                        with accelerator.autocast():
                            micro_loss = diffusion_loss(model, latents, text, noise_scheduler, noise, timesteps)
                        if not torch.isfinite(micro_loss):
                            raise FloatingPointError(f"training loss is {micro_loss.item()} at step {step}; lower "
                                                     "the learning rate or use bf16 instead of fp16")
                        accelerator.backward(micro_loss / accumulation)
                    loss = loss + micro_loss.detach() / accumulation
                if config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
                learning_rate = optimizer.param_groups[0]["lr"]
                updating = True  # weights, optimizer and step disagree until the step is counted
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                updating = False
                mean_loss = float(accelerator.reduce(loss.detach(), "mean")) if world_size > 1 else float(loss.detach())
                losses.append(mean_loss)
                if progress is not None:
                    log = step == start_step + 1 or step == config.steps or step % max(1, config.log_every) == 0
                    progress(TrainProgress(step, config.steps, mean_loss, window, learning_rate,
                                           time.perf_counter() - started, log))
                if should_stop is not None and should_stop():
                    flag.set("should_stop")
                stop = flag.reason is not None
                if world_size > 1:  # every process stops at the same step, or collectives would hang
                    stop = bool(accelerator.reduce(torch.tensor(float(stop), device=device), "sum") > 0)
                if stop:
                    return stop_here(flag.reason or "another process")
                if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                    checkpoint_now(step)
        except KeyboardInterrupt:
            # Not turned into a flag (second Ctrl-C, signals not handled, another thread): save the last completed
            # step unless the update was half applied or other processes would wait for this one forever.
            if updating or world_size > 1:
                raise
            return stop_here("KeyboardInterrupt")

    final = None
    if step > start_step or checkpoint is None or checkpoint.step != step:
        checkpoint_now(step)
    else:
        last_checkpoint = checkpoint.path
    if accelerator.is_main_process:
        final = _save_unet_motion(unet, adapter, output_dir / MOTION_MODULE_FILE, step, schedule(max(step - 1, 0)))
    accelerator.wait_for_everyone()
    return TrainResult(step, False, losses, last_checkpoint, final)


@contextmanager
def _null_context() -> Iterator[None]:
    yield
