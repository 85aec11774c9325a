"""Per-subject training (MVCustom Stage 1, method.md §6): FeatureNeRF + fusion layers + the subject token.

Trained: every pose-conditioned block's FeatureNeRF and ``W_fuse`` and the subject token's input embedding, both at
learning rate 1e-4 by default (``lr``, ``token_lr``: CustomDiffusion360's ``trainkeys: pose`` puts the token in the
base-rate group). Frozen: everything else (UNet incl. motion modules, text encoder, VAE). The pose blocks start
from the identity initialization (the paper's), or from ``pose_init``: a pose prior trained across subjects for the
backbone (:mod:`~mvcustom_core.customization.pose_prior`). Per-step details follow
CustomDiffusion360's released code; docs/customization.md tabulates them against ours. One step:

1. draw F target photos (sorted, they form one clip whose cameras are the clip's target cameras), N references
   spread evenly over the other photos with a random offset, a target timestep ``t = ⌊(1 − u³)(T − 1)⌋``
   (``u ~ U[0, 1)``, CustomDiffusion360's cubic sampling, biased to high noise; or uniform), a reference timestep
   ``t_ref ~ U[0, reference_max_timestep)`` (low noise, method.md §4.2), and the dropouts: with probability
   ``reference_dropout`` the references are null (zero latents, empty prompt) and the target is the photos with the
   subject prompt or a regularization picture with its caption; otherwise, with probability ``text_dropout``, the
   empty prompt in both streams;
2. reference latents noised to ``t_ref`` go through the UNet without gradients, motion modules bypassed (each
   reference on its own, as an image), with the pose context in *capture* mode: every pose block stores its output
   tokens (the reference bank of this step);
3. target latents noised to ``t`` go through the UNet in *render* mode with the prompt
   ``"photo of a <token> <class word>"``: every pose block renders FeatureNeRF from the bank for the target cameras;
4. loss ``L = λ_diff L_diff + Σ_blocks (λ_fg L_fg + λ_bg L_bg + λ_rgb L_rgb)`` (method.md §6.2,
   :mod:`mvcustom_core.customization.losses`; without references only ``L_diff``, over the whole picture), AdamW
   step.

Afterwards the reference bank for inference is captured once from ``bank_views`` photos spread evenly over
the set, for both CFG branches (empty prompt, then the subject prompt), so inference needs no photos.

Checkpoints (``torch.save``, read back with ``weights_only=True``) hold the trainable weights, the
optimizer state and the random generator state; they are written atomically every ``checkpoint_every``
steps, at the end, and when the loop is interrupted (an exception from the progress callback, e.g.
ComfyUI's cancel, or ``KeyboardInterrupt``). A run resumed from a checkpoint gives the same result as an
uninterrupted run: every random draw comes from one CPU generator whose state is saved.
"""

from __future__ import annotations


import copy
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from mvcustom_core.backbone.dense_attention import motion_modules_bypassed
from mvcustom_core.backbone.module_view import module_view
from mvcustom_core.cameras import CameraSet
from mvcustom_core.checks import about
from mvcustom_core.customization.file_format import (
    Customization, backbone_fingerprint, check_backbone, customization_from_unet)
from mvcustom_core.customization.losses import FeatureNeRFLossWeights, featurenerf_losses, masked_denoising_loss
from mvcustom_core.customization.pose_block import (
    PoseBlockError, PoseContext, install_pose_blocks, pose_blocks)
from mvcustom_core.customization.reference_poses import ReferenceSet
from mvcustom_core.customization.token import DEFAULT_TOKEN, add_subject_token
from mvcustom_core.files import atomic_write

__all__ = ["TrainingConfig", "TrainingResult", "TrainingError", "RegularizationSet", "CHECKPOINT_FORMAT", "train_customization",
           "checkpoint_path_for", "sample_timesteps", "spread_references", "reference_digest",
           "encode_references", "unet_epsilon", "capture_reference_bank", "bank_indices", "load_checkpoint",
           "training_scheduler", "PoseWeights", "trainable_pose_blocks", "pose_weights_digest", "StepDraws",
           "draw_step", "SubjectData", "step_loss"]

CHECKPOINT_FORMAT = "mvcustom.training-checkpoint/1"
_CHECKPOINT_KEYS = {"step", "data", "pose", "token", "optimizer", "generator", "config", "resume_key", "backbone",
                    "losses"}
ProgressFn = Callable[[int, int, dict], None]


class TrainingError(ValueError):
    """Training settings or a checkpoint that cannot be used."""


@dataclass
class TrainingConfig:
    """Settings of one customization run (all saved with the result).

    Attributes:
        class_word: the subject's category ("car"); initialises the token and fills the prompt.
        token: the new token written in prompts.
        prompt_template: training prompt; ``{token}`` and ``{class_word}`` are filled in.
        steps: optimizer steps (CustomDiffusion360: ~1.6k).
        lr: AdamW learning rate of FeatureNeRF and fusion (CustomDiffusion360: 1e-4).
        token_lr: learning rate of the token embedding (CustomDiffusion360 trains it at the base rate, 1e-4).
        weight_decay: AdamW weight decay of the pose weights and the token (torch's AdamW default, which
            CustomDiffusion360 keeps).
        frames: F target frames per step (one clip).
        references: N reference views per step, spread evenly over the other photos with a random offset.
        bank_views: reference views stored for inference (CustomDiffusion360: 8).
        reference_max_timestep: reference noise ``t_ref ~ U[0, this)``; the bank uses ``bank_timestep``.
        bank_timestep: timestep of the stored reference bank.
        blocks: which spatial transformer blocks get pose conditioning (see ``select_blocks``).
        featurenerf: FeatureNeRF config overrides (``num_samples``, ``near``, ``far`` …).
        denoise_weight, fg_weight, bg_weight, rgb_weight: loss weights (method.md §6.2: 1, 10, 10, 5).
        mask_dilate: dilation of the subject mask for the denoising loss (0/1: the mask as is, undilated).
        mask_denoising: average the denoising loss inside the dilated mask (CustomDiffusion360) or everywhere.
        text_dropout: probability that a step uses the empty prompt (references and targets), so the
            unconditional CFG branch also sees pose blocks in training (CustomDiffusion360: 0.1).
        reference_dropout: probability that a step drops its references (CustomDiffusion360: 0.25): the
            reference latents become zeros (what CustomDiffusion360's noise images turn into before noising)
            with the empty prompt, the FeatureNeRF losses are off and the denoising loss covers the whole
            picture; the target is a regularization picture with its caption when ``train_customization``
            has any, else the photos with the subject prompt.
        timesteps: ``"cubic"`` (``t = ⌊(1 − u³)(T − 1)⌋``, CustomDiffusion360's ``CubicSampling``; also the
            "cubic sampling" of diffusers' ``examples/t2i_adapter/train_t2i_adapter_sdxl.py``) or ``"uniform"``
            (``t ~ U{0 … T−1}``).
        seed: seeds every random draw.
        checkpoint_every: steps between checkpoints.
        ray_chunk: FeatureNeRF rays per chunk (memory bound).
        clip_skip: text states from this many layers before the last (ComfyUI's CLIP Set Last Layer -1 = 0,
            -2 = 1): the token is trained for the conditioning the prompts will be encoded with.
    """

    class_word: str
    token: str = DEFAULT_TOKEN
    prompt_template: str = "photo of a {token} {class_word}"
    steps: int = 1600
    lr: float = 1e-4
    token_lr: float = 1e-4
    weight_decay: float = 1e-2
    frames: int = 4
    references: int = 4
    bank_views: int = 8
    reference_max_timestep: int = 50
    bank_timestep: int = 0
    blocks: str = "every_other"
    featurenerf: dict = field(default_factory=dict)
    denoise_weight: float = 1.0
    fg_weight: float = 10.0
    bg_weight: float = 10.0
    rgb_weight: float = 5.0
    mask_dilate: int = 7
    mask_denoising: bool = True
    text_dropout: float = 0.1
    reference_dropout: float = 0.25
    timesteps: str = "cubic"
    seed: int = 0
    checkpoint_every: int = 100
    ray_chunk: int | None = None
    clip_skip: int = 0

    def prompt(self) -> str:
        return self.prompt_template.format(token=self.token, class_word=self.class_word)

    def check(self) -> None:
        """Raise :class:`TrainingError` naming the first bad setting."""
        ints = {"steps": 1, "frames": 1, "references": 1, "bank_views": 1, "reference_max_timestep": 1,
                "checkpoint_every": 1, "bank_timestep": 0, "mask_dilate": 0, "clip_skip": 0}
        for name, low in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise about(name, TrainingError(f"{name} must be an integer ≥ {low}, got {value!r}"))
        for name in ("lr", "token_lr", "weight_decay", "denoise_weight", "fg_weight", "bg_weight", "rgb_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise about(name, TrainingError(f"{name} must be a finite number ≥ 0, got {value!r}"))
        for name in ("text_dropout", "reference_dropout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise about(name, TrainingError(f"{name} must be in [0, 1], got {value!r}"))
        if self.timesteps not in ("cubic", "uniform"):
            raise about("timesteps", TrainingError(f"timesteps must be 'cubic' or 'uniform', got {self.timesteps!r}"))
        if not self.class_word or not self.class_word.strip():
            raise about("class_word", TrainingError("class_word must be a word such as 'car', 'chair' or 'teddybear'"))
        if "{token}" not in self.prompt_template:
            raise about("prompt_template",
                        TrainingError(f"prompt_template must contain {{token}}, got {self.prompt_template!r}"))

    def resume_key(self) -> dict:
        """Settings that must match for a checkpoint to be resumed (``steps`` may grow)."""
        d = asdict(self)
        for k in ("steps", "checkpoint_every"):
            d.pop(k)
        return d


@dataclass
class TrainingResult:
    """Outcome of :func:`train_customization`.

    Attributes:
        customization: the trained subject (save it with ``save_customization``).
        losses: per step ``{"total", "denoise", "fg", "bg", "rgb"}`` floats (steps of this call only when
            resumed; earlier ones come from the checkpoint).
        resumed_from: step the run resumed at (0 for a fresh run).
    """

    customization: Customization
    losses: list[dict[str, float]]
    resumed_from: int = 0


# --------------------------------------------------------------------------------- UNet helpers
def _has_motion(unet: nn.Module) -> bool:
    return any(hasattr(b, "motion_modules") for b in getattr(unet, "down_blocks", []))


def unet_epsilon(unet: nn.Module, latents: Tensor, timestep: Tensor | int, text: Tensor) -> Tensor:
    """ε prediction for F frames ``[F, 4, h, w]`` as one clip; ``text [1 | F, L, D]``.

    A ``UNetMotionModel`` sees the frames as one video ``[1, 4, F, h, w]`` (text repeated per frame); a
    plain ``UNet2DConditionModel`` sees them as an image batch. Returns ``[F, 4, h, w]``.
    """
    f = latents.shape[0]
    param = next(unet.parameters())  # conv_in: the backbone's device and dtype
    latents, text = latents.to(param), text.to(param)
    text = text.expand(f, -1, -1) if text.shape[0] == 1 else text
    t = torch.as_tensor(timestep, device=param.device).reshape(-1)[:1]
    if _has_motion(unet):
        video = latents.permute(1, 0, 2, 3)[None]
        return unet(video, t, encoder_hidden_states=text).sample[0].permute(1, 0, 2, 3).float()
    return unet(latents, t.expand(f), encoder_hidden_states=text).sample.float()


@torch.no_grad()
def encode_references(vae: nn.Module, images: Tensor, chunk: int = 4) -> Tensor:
    """``[M, 3, H, W]`` in [0, 1] → diffusion-space latents ``[M, 4, H/8, W/8]`` (posterior mean × scale)."""
    param = next(vae.parameters())
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))
    parts = [vae.encode((images[i:i + chunk].to(param) * 2 - 1)).latent_dist.mean * scale
             for i in range(0, images.shape[0], chunk)]
    return torch.cat(parts).float()


def bank_indices(num_images: int, views: int) -> Tensor:
    """``min(views, M)`` indices spread evenly over ``M`` photos (CustomDiffusion360 keeps 8)."""
    v = min(views, num_images)
    return (torch.arange(v) * num_images // v).long()


@torch.no_grad()
def capture_reference_bank(unet: nn.Module, ctx: PoseContext, latents: Tensor, ref_cams, texts: list[Tensor],
                           timestep: int, noise: Tensor | None = None, scheduler=None) -> None:
    """Capture the reference bank of N views ``latents [N, 4, h, w]``, one branch per text ``[1, L, D]``.

    ``noise`` (``[N, 4, h, w]``) is added at ``timestep`` with ``scheduler.add_noise`` when given.

    The references run through the UNet with its motion modules bypassed (:func:`motion_modules_bypassed`): each
    is an image through the spatial UNet, as in CustomDiffusion360's image model, so a reference's tokens do not
    depend on which or how many other references are captured with it (method.md §4.2). Training and the stored
    inference bank both capture here.
    """
    x = latents
    if noise is not None:
        x = scheduler.add_noise(latents, noise.to(latents), torch.tensor([timestep]))
    ctx.begin_capture()
    try:
        with motion_modules_bypassed(unet):
            for text in texts:
                unet_epsilon(unet, x, timestep, text)
    except BaseException:
        ctx.mode = "off"
        raise
    ctx.end_capture(ref_cams, branches=len(texts))


# --------------------------------------------------------------------------------- checkpoints
def _trainable_state(unet: nn.Module, token_vector: Tensor) -> dict[str, Any]:
    pose = {b.name: b.own_state() for b in pose_blocks(unet)}
    return {"pose": pose, "token": token_vector.detach().clone()}


@dataclass
class RegularizationSet:
    """Regularization pictures for the steps whose references are dropped (CustomDiffusion360's ``addreg``).

    Attributes:
        images: ``[R, 3, H, W]`` in [0, 1], the size of the reference photos (e.g. generated by the backbone
            from class prompts, as in Custom Diffusion's prior preservation).
        captions: R prompts, one per picture.
    """

    images: Tensor
    captions: list[str]

    def check(self, size: tuple[int, int]) -> None:
        """Raise :class:`TrainingError` naming the problem (layout, caption count, size)."""
        if self.images.ndim != 4 or self.images.shape[1] != 3 or self.images.shape[0] < 1:
            raise about("regularization", TrainingError(
                f"regularization images must be [R, 3, H, W], got {list(self.images.shape)}"))
        if len(self.captions) != self.images.shape[0]:
            raise about("regularization", TrainingError(
                f"{self.images.shape[0]} regularization images but {len(self.captions)} captions"))
        if tuple(self.images.shape[-2:]) != tuple(size):
            raise about("regularization", TrainingError(
                f"regularization images are {self.images.shape[-1]}x{self.images.shape[-2]}, the photos "
                f"{size[1]}x{size[0]}; give them the photos' size"))

    def digest(self) -> str:
        """SHA-256 of the pictures and captions: a checkpoint only resumes with the same regularization set."""
        digest = hashlib.sha256(self.images.detach().float().cpu().contiguous().numpy().tobytes())
        digest.update(json.dumps(list(self.captions)).encode())
        return digest.hexdigest()


def reference_digest(reference: ReferenceSet) -> str:
    """SHA-256 of the photos, masks and cameras: a checkpoint only resumes on the same data."""
    digest = hashlib.sha256()
    for x in (reference.images, reference.masks, reference.cameras.K, reference.cameras.c2w):
        digest.update(x.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _write_checkpoint(path: Path, step: int, unet: nn.Module, token_vector: Tensor, optimizer, gen_state: Tensor,
                      config: TrainingConfig, fingerprint: dict, losses: list, data: str,
                      inputs: dict[str, str | None]) -> None:
    """``data``: the subject's reference digest (what :func:`~.subject_files.subject_of` reads, so a later run
    for the same subject may replace the file); ``inputs``: the digests of the other inputs a resumed run must
    share (``"regularization"``, ``"pose_init"``; None: not given), kept apart so they never change whose file
    this is."""
    extra = {k: v for k, v in inputs.items() if v is not None}
    payload = {"format": CHECKPOINT_FORMAT, "step": int(step), "data": data, **extra,
               **_trainable_state(unet, token_vector),
               "optimizer": optimizer.state_dict(), "generator": gen_state.clone(),
               "config": json.dumps(asdict(config)), "resume_key": json.dumps(config.resume_key()),
               "backbone": json.dumps(fingerprint), "losses": json.dumps(losses)}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def checkpoint_path_for(output: str | os.PathLike) -> Path:
    """Where training toward ``output`` keeps its checkpoint: ``<output>.training`` beside it (a suffix no
    model folder lists as weights)."""
    output = Path(output)
    return output.with_name(output.name + ".training")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (``torch.load(weights_only=True)``)."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise about("checkpoint", TrainingError(f"{path}: not a readable training checkpoint: {error}")) from error
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise about("checkpoint", TrainingError(f"{path}: not an MVCustom training checkpoint ({CHECKPOINT_FORMAT})"))
    missing = sorted(_CHECKPOINT_KEYS - set(data))
    if missing:
        raise about("checkpoint", TrainingError(f"{path}: training checkpoint without {', '.join(missing)}"))
    return data


# --------------------------------------------------------------------------------- training
def sample_timesteps(gen: torch.Generator, n: int, num_train_timesteps: int, kind: str = "cubic") -> Tensor:
    """``[n]`` int64 training timesteps, ``u ~ U[0, 1)``: ``⌊(1 − u³)(T − 1)⌋`` (cubic, CustomDiffusion360's
    ``CubicSampling`` over its 1000 DDPM levels) or ``⌊u T⌋`` (uniform)."""
    u = torch.rand((n,), generator=gen, dtype=torch.float64)
    t = (1 - u**3) * (num_train_timesteps - 1) if kind == "cubic" else u * num_train_timesteps
    return t.long().clamp(0, num_train_timesteps - 1)


def spread_references(others: Tensor, count: int, offset: int) -> Tensor:
    """``count`` of the photo indices ``others`` (in capture order), evenly spread: ``others[(⌊i·L/n⌋ + offset)
    mod L]`` for ``i < n = min(count, L)``.

    CustomDiffusion360 picks its 4 references at evenly spaced positions of the sequence with a random offset,
    so every step sees the subject from around it; photos taken in order around the subject (a turntable, a
    walk-around video) are then spread in viewpoint too.
    """
    length = others.numel()
    n = min(count, length)
    return others[(torch.arange(n) * length // n + offset) % length]


def _sample_step(gen: torch.Generator, m: int, frames: int, refs: int) -> tuple[Tensor, Tensor]:
    """Sorted F target indices, and N reference indices spread evenly over the other photos (random offset)."""
    f = min(frames, m - 1)
    targets = torch.randperm(m, generator=gen)[:f].sort().values
    others = torch.tensor([i for i in range(m) if i not in set(targets.tolist())])
    offset = int(torch.randint(0, others.numel(), (1,), generator=gen))
    return targets, spread_references(others, refs, offset)


def _step_inputs(ref_latents: Tensor, target_latents: Tensor, prompt: str, *, drop_text: bool, drop_refs: bool,
                 regularization: tuple[Tensor, str] | None = None) -> tuple[Tensor, str, Tensor, str]:
    """What one step trains on: ``(reference latents, reference prompt, target latents, target prompt)``.

    CustomDiffusion360's data loader: a text-dropped step uses the empty prompt (here in both streams, the
    configuration of the stored unconditional bank row); a reference-dropped step has null references (zero
    latents, empty prompt) and keeps the target's prompt, or replaces the target by a regularization picture
    ``[4, h, w]`` (a still clip) with its caption.
    """
    if not drop_refs:
        text = "" if drop_text else prompt
        return ref_latents, text, target_latents, text
    if regularization is None:
        return torch.zeros_like(ref_latents), "", target_latents, prompt
    picture, caption = regularization
    return torch.zeros_like(ref_latents), "", picture.expand_as(target_latents), caption


def training_scheduler(unet: nn.Module):
    """The DDPM noise schedule the backbone was trained with (AnimateDiff's linear betas for a motion UNet, SD1.5's
    scaled-linear ones for an image UNet)."""
    from diffusers import DDPMScheduler

    from mvcustom_core.backbone.sampler import ANIMATEDIFF_SCHEDULER_CONFIG, SD15_SCHEDULER_CONFIG

    config = ANIMATEDIFF_SCHEDULER_CONFIG if _has_motion(unet) else SD15_SCHEDULER_CONFIG
    return DDPMScheduler(**{k: v for k, v in config.items()
                            if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "steps_offset",
                                     "clip_sample", "prediction_type")})


PoseWeights = Mapping[str, Mapping[str, Tensor]]  # block name -> PoseConditionedBlock.own_state()


def trainable_pose_blocks(unet: nn.Module, ctx: PoseContext, config: TrainingConfig,
                          init: PoseWeights | None = None) -> list[nn.Parameter]:
    """Install pose blocks on ``unet`` (a per-run view) and return their own weights, the only trainable ones.

    The weights are drawn from ``config.seed`` (identity fusion, zero density head: the UNet is unchanged at the
    start, method.md §3.2), or copied from ``init`` (e.g. a pose prior, :mod:`~.pose_prior`), which must hold
    exactly the blocks and weights of that initialization.
    """
    with torch.random.fork_rng(devices=[]):  # pose weights drawn from the seed, global RNG untouched
        torch.manual_seed(config.seed)
        install_pose_blocks(unet, ctx, config.blocks, config_overrides=dict(config.featurenerf))
    blocks = list(pose_blocks(unet))
    if init is not None:
        names = sorted(b.name for b in blocks)
        if sorted(init) != names:
            raise about("pose_init", TrainingError(
                f"the pose initialization has blocks {sorted(init)}, this UNet with blocks={config.blocks!r} has "
                f"{names}; use an initialization made for this backbone and block selection"))
        for block in blocks:
            own = block.own_state()
            wrong = sorted(k for k in own if k not in init[block.name]
                           or tuple(init[block.name][k].shape) != tuple(own[k].shape))
            if wrong or len(init[block.name]) != len(own):
                raise about("pose_init", TrainingError(
                    f"the pose initialization of {block.name} does not fit its FeatureNeRF (e.g. {wrong[:1]}); "
                    f"use one made with the same featurenerf settings ({dict(config.featurenerf)})"))
            block.load_own_state(init[block.name])
    params = [p for b in blocks for n, p in b.named_parameters() if not n.startswith("block.")]
    for p in params:
        p.requires_grad_(True)
    return params


def pose_weights_digest(weights: PoseWeights) -> str:
    """SHA-256 of pose weights (names and values): a checkpoint only resumes from the same initialization."""
    digest = hashlib.sha256()
    for block in sorted(weights):
        for name in sorted(weights[block]):
            digest.update(f"{block}/{name}".encode())
            digest.update(weights[block][name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class StepDraws:
    """Every random draw of one training step (:func:`draw_step`).

    Attributes:
        targets: ``[F]`` sorted photo indices of the target clip; ``references``: ``[N]`` reference photo indices.
        t: ``[1]`` target timestep; ``t_ref``: the references' timestep.
        noise: ``[F, 4, h, w]`` target noise; ``ref_noise``: ``[N, 4, h, w]``.
        featurenerf_seed: seeds the FeatureNeRF's ray jitter of the step.
        drop_text, drop_refs: the step's dropouts; ``regularization``: the regularization picture replacing the
            target when the references are dropped (None: none).
    """

    targets: Tensor
    references: Tensor
    t: Tensor
    t_ref: int
    noise: Tensor
    ref_noise: Tensor
    featurenerf_seed: int
    drop_text: bool
    drop_refs: bool
    regularization: int | None


def draw_step(gen: torch.Generator, num_photos: int, latent_shape: tuple[int, int, int], config: TrainingConfig,
              num_train_timesteps: int, regularizations: int = 0) -> StepDraws:
    """Draw one step from ``gen`` (always in this order, so a resumed run repeats an uninterrupted one)."""
    targets, refs = _sample_step(gen, num_photos, config.frames, config.references)
    t = sample_timesteps(gen, 1, num_train_timesteps, config.timesteps)
    t_ref = int(torch.randint(0, config.reference_max_timestep, (1,), generator=gen))
    noise = torch.randn((len(targets), *latent_shape), generator=gen)
    ref_noise = torch.randn((len(refs), *latent_shape), generator=gen)
    featurenerf_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    drop_text = float(torch.rand((), generator=gen)) < config.text_dropout
    drop_refs = float(torch.rand((), generator=gen)) < config.reference_dropout
    reg = int(torch.randint(0, regularizations, (1,), generator=gen)) if drop_refs and regularizations else None
    return StepDraws(targets, refs, t, t_ref, noise, ref_noise, featurenerf_seed, drop_text, drop_refs, reg)


@dataclass
class SubjectData:
    """One subject's training data on the backbone's device.

    Attributes:
        latents: ``[M, 4, h, w]`` diffusion-space latents of the photos (:func:`encode_references`).
        images: ``[M, 3, H, W]`` photos in [0, 1]; ``masks``: ``[M, 1, H, W]`` subject masks.
        cameras: the M normalized cameras.
        prompt: the training prompt (``TrainingConfig.prompt()``).
    """

    latents: Tensor
    images: Tensor
    masks: Tensor
    cameras: CameraSet
    prompt: str


def step_loss(unet: nn.Module, ctx: PoseContext, scheduler, text_encoder: nn.Module, tokenizer,
              subject: SubjectData, draws: StepDraws, config: TrainingConfig,
              regularization: tuple[Tensor, str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Stages 2-4 of a step (module docstring) on ``unet`` with pose blocks bound to ``ctx``: capture the reference
    bank, render the target clip, and return ``(total loss, {"denoise", "fg", "bg", "rgb"})``.

    ``regularization``: the picture ``[4, h, w]`` and caption of ``draws.regularization``.
    """
    from mvcustom_core.backbone.text import encode_prompt

    device = subject.latents.device
    ref_latents, ref_prompt, target_latents, target_prompt = _step_inputs(
        subject.latents[draws.references], subject.latents[draws.targets], subject.prompt,
        drop_text=draws.drop_text, drop_refs=draws.drop_refs, regularization=regularization)
    ctx.generator = torch.Generator().manual_seed(draws.featurenerf_seed)
    # 2. the reference bank of this step
    with torch.no_grad():
        ref_text = encode_prompt(text_encoder, tokenizer, ref_prompt, clip_skip=config.clip_skip)
    ctx.jitter = False
    capture_reference_bank(unet, ctx, ref_latents, subject.cameras[draws.references], [ref_text], draws.t_ref,
                           draws.ref_noise, scheduler)
    # 3. the target clip, rendered from the bank
    ctx.mode, ctx.target_cams, ctx.jitter = "render", subject.cameras[draws.targets], True
    ctx.outputs = {}
    try:
        text = encode_prompt(text_encoder, tokenizer, target_prompt, clip_skip=config.clip_skip)
        noise = draws.noise.to(target_latents)
        eps = unet_epsilon(unet, scheduler.add_noise(target_latents, noise, draws.t), draws.t.to(device), text)
        outputs = [out for outs in ctx.outputs.values() for out in outs]
    finally:
        ctx.mode, ctx.outputs = "off", {}
    # 4. the losses
    target_masks = subject.masks[draws.targets]
    loss_mask = target_masks if config.mask_denoising and not draws.drop_refs else None
    parts = {"denoise": masked_denoising_loss(eps, noise, loss_mask, dilate=config.mask_dilate) * config.denoise_weight}
    weights = FeatureNeRFLossWeights(fg=config.fg_weight, bg=config.bg_weight, rgb=config.rgb_weight)
    fg = bg = rgb = torch.zeros((), device=device)
    for out in outputs if not draws.drop_refs else ():  # nothing to fit without references
        terms = featurenerf_losses(out, target_masks, subject.images[draws.targets], weights)
        fg, bg = fg + terms["fg"], bg + terms["bg"]
        rgb = rgb + terms.get("rgb", torch.zeros((), device=device))
    parts.update(fg=fg, bg=bg, rgb=rgb)
    return sum(parts.values()), parts


# Hosts may call this under torch.inference_mode (ComfyUI runs every node in it): training needs autograd,
# and modules or inputs created in inference mode cannot take part in it.
@torch.inference_mode(False)
@torch.enable_grad()
def train_customization(
    backbone: Any,
    reference: ReferenceSet,
    config: TrainingConfig,
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    progress: ProgressFn | None = None,
    regularization: RegularizationSet | None = None,
    pose_init: PoseWeights | None = None,
) -> TrainingResult:
    """Train a subject customization (see the module docstring).

    Args:
        backbone: object with ``unet`` (``UNetMotionModel`` or ``UNet2DConditionModel``), ``vae``,
            ``text_encoder`` and ``tokenizer`` (:class:`~mvcustom_core.backbone.loading.Backbone`). It is
            never changed: pose blocks, the subject token and gradient flags go on per-run views of its
            modules (:func:`~mvcustom_core.backbone.module_view.module_view`, same weight memory), and the
            tokenizer is copied, not extended. Weights created under ``torch.inference_mode`` are fine.
        reference: checked photos, masks and normalized cameras (``prepare_reference_set``); image sides
            must be multiples of 8.
        config: :class:`TrainingConfig`.
        checkpoint: checkpoint file; resumed from when it exists and ``resume``.
        progress: ``progress(done, total, losses)`` after every step; raising in it stops the run cleanly
            (a checkpoint is written first when ``checkpoint`` is set), then the exception propagates.
        regularization: optional pictures + captions that replace the target in steps whose references are
            dropped (``config.reference_dropout``); part of what a checkpoint must be resumed with.
        pose_init: where the pose blocks start instead of the identity initialization: ``{block name: own
            weights}`` of a pose prior trained across subjects for this backbone (:mod:`~.pose_prior`; the built-in
            backbone ships one); part of what a checkpoint must be resumed with.

    Returns:
        :class:`TrainingResult`.
    """
    cams = reference.cameras
    reference = ReferenceSet(reference.images.clone(), reference.masks.clone(),
                             CameraSet(K=cams.K.clone(), c2w=cams.c2w.clone(), image_size=cams.image_size),
                             reference.new_from_old.clone())
    config.check()
    if getattr(backbone, "tokenizer", None) is None:
        raise about("backbone", TrainingError("the backbone has no tokenizer; the subject token needs one"))
    m, (h, w) = len(reference), reference.images.shape[-2:]
    if h % 8 or w % 8:
        raise about("reference", TrainingError(f"reference images are {w}x{h}; both sides must be multiples of 8 "
                                               "(VAE factor)"))
    if next(pose_blocks(backbone.unet), None) is not None:
        raise about("backbone", TrainingError("the UNet already has pose blocks installed; train on a clean backbone"))
    unet, vae, text_encoder = (module_view(m) for m in (backbone.unet, backbone.vae, backbone.text_encoder))
    unet_dtype = next(unet.parameters()).dtype
    if unet_dtype != torch.float32:
        raise about("backbone", TrainingError(f"the backbone UNet is {unet_dtype}; training needs float32 weights (the "
                                              "trained fusion layers sit in the UNet's token path): load the "
                                              "backbone with dtype fp32"))
    tokenizer = copy.deepcopy(backbone.tokenizer)
    device = next(unet.parameters()).device
    fingerprint = backbone_fingerprint(unet)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    data_digest = reference_digest(reference)
    if regularization is not None:
        regularization.check((h, w))
    inputs = {"regularization": None if regularization is None else regularization.digest(),
              "pose_init": None if pose_init is None else pose_weights_digest(pose_init)}
    state = load_checkpoint(ckpt_path) if ckpt_path is not None and resume and ckpt_path.exists() else None
    if state is not None:
        if json.loads(state["resume_key"]) != config.resume_key():
            raise about("checkpoint", TrainingError(f"{ckpt_path}: checkpoint was written with other settings; turn "
                                                    "resume off, or train with the same settings (only steps may "
                                                    "change)"))
        try:
            check_backbone(json.loads(state["backbone"]), unet, f"checkpoint {ckpt_path}")
        except ValueError as error:
            raise about("checkpoint", error)
        if state.get("data") != data_digest:
            raise about("checkpoint", TrainingError(f"{ckpt_path}: checkpoint was written for other photos, masks or "
                                                    "cameras; turn resume off, or train on the same reference set"))
        if state.get("regularization") != inputs["regularization"]:
            raise about("checkpoint", TrainingError(f"{ckpt_path}: checkpoint was written with other regularization "
                                                    "pictures or captions (or without them); turn resume off, or "
                                                    "train with the same ones"))
        if state.get("pose_init") != inputs["pose_init"]:
            raise about("checkpoint", TrainingError(f"{ckpt_path}: checkpoint was written from another pose "
                                                    "initialization (or without one); turn resume off, or train "
                                                    "from the same one"))

    scheduler = training_scheduler(unet)
    num_t = scheduler.config.num_train_timesteps
    ctx = PoseContext(ray_chunk=config.ray_chunk)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    pose_params = trainable_pose_blocks(unet, ctx, config, pose_init)
    token_emb = add_subject_token(text_encoder, tokenizer, config.token, class_word=config.class_word)
    optimizer = torch.optim.AdamW([
        {"params": pose_params, "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": [token_emb.vector], "lr": config.token_lr, "weight_decay": config.weight_decay}])
    gen = torch.Generator().manual_seed(config.seed)
    start, history = 0, []
    if state is not None:
        for block in pose_blocks(unet):
            try:
                block.load_own_state(state["pose"][block.name])
            except PoseBlockError as error:
                raise about("checkpoint", TrainingError(f"{ckpt_path}: {error}")) from error
        with torch.no_grad():
            token_emb.vector.copy_(state["token"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        start, history = int(state["step"]), json.loads(state["losses"])

    images = reference.images.to(device)
    masks = reference.masks.to(device)
    cams = reference.cameras
    latents = encode_references(vae, images)
    reg_latents = None if regularization is None else encode_references(vae, regularization.images.to(device))
    prompt, empty = config.prompt(), ""
    subject = SubjectData(latents, images, masks, cams, prompt)
    from mvcustom_core.backbone.text import encode_prompt

    end = config.steps
    done, gen_done = start, gen.get_state()
    new_losses: list[dict[str, float]] = []

    def save(step: int, gen_state: Tensor) -> None:
        if ckpt_path is not None:
            _write_checkpoint(ckpt_path, step, unet, token_emb.vector, optimizer, gen_state, config,
                              fingerprint, history, data_digest, inputs)

    try:
        for step in range(start, end):
            draws = draw_step(gen, m, tuple(latents.shape[1:]), config, num_t,
                              regularizations=0 if reg_latents is None else reg_latents.shape[0])
            reg = None if draws.regularization is None else (reg_latents[draws.regularization],
                                                               regularization.captions[draws.regularization])
            total, parts = step_loss(unet, ctx, scheduler, text_encoder, tokenizer, subject, draws, config,
                                     regularization=reg)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()

            done, gen_done = step + 1, gen.get_state()
            record = {"total": float(total.detach()), **{k: float(v.detach()) for k, v in parts.items()}}
            history.append(record)
            new_losses.append(record)
            if done % config.checkpoint_every == 0 or done == end:
                save(done, gen_done)
            if progress is not None:
                progress(done, config.steps, record)
    except BaseException:
        ctx.mode, ctx.outputs = "off", {}
        save(done, gen_done)  # the last completed step: resuming continues exactly there
        raise

    # Inference bank: evenly spread photos, uncond (row 0) and cond (row 1) branches, fixed noise.
    idx = bank_indices(m, config.bank_views)
    bank_gen = torch.Generator().manual_seed(config.seed + 1)
    bank_noise = torch.randn(latents[idx].shape, generator=bank_gen)
    with torch.no_grad():
        texts = [encode_prompt(text_encoder, tokenizer, p, clip_skip=config.clip_skip) for p in (empty, prompt)]
    capture_reference_bank(unet, ctx, latents[idx], cams[idx], texts, config.bank_timestep, bank_noise,
                           scheduler)
    training = {"config": asdict(config), "steps_done": done, "final_losses": history[-1] if history else {},
                "num_photos": m, "bank_indices": idx.tolist(), "reference_digest": data_digest,
                "pose_init": inputs["pose_init"]}
    customization = customization_from_unet(
        unet, ctx, token=config.token, class_word=config.class_word, token_embedding=token_emb.vector,
        prompt_template=config.prompt_template, training=training)
    return TrainingResult(customization, new_losses, start)
