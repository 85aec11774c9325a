"""The built-in backbone: a small SD1.x + AnimateDiff model trained on the synthetic world, shipped with the pack.

Same module classes as the real backbone, at small widths (``configs/tiny_world/*.json``): an
``AutoencoderKL`` (8x down, 4 latent channels, SD1.5's latent scale 0.18215), a ``UNet2DConditionModel``
with AnimateDiff v3-layout motion modules (``UNetMotionModel``), and a CLIP text tower using the tiny tokenizer of
``configs/tiny/tokenizer``. It makes 64x64 frames of :mod:`mvcustom_core.synthetic.world` scenes ("photo of a
red toy on grass ground under a blue sky").

The weights ship in ``mvcustom_core/weights/tiny_world/`` in the layouts of real downloads, and
:func:`load_tiny_world` reads them with the real loaders: ``tiny_world.safetensors`` is an SD1.x single-file
checkpoint (LDM keys ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``)
read by :func:`~mvcustom_core.backbone.loading.load_sd15_checkpoint`, ``tiny_world_motion.safetensors`` an
AnimateDiff motion module read by :func:`~mvcustom_core.backbone.motion_module.load_motion_module`.
``tiny_world_pose_prior.safetensors`` holds pose-block weights trained across the training worlds' subjects, where
customizations of this backbone start (:func:`load_tiny_world_pose_prior`). ``manifest.json`` records each file's
SHA-256 and how it was trained; loading checks the hashes. The weights come from ``scripts/train_tiny_world.py``
(``docs/tiny_world.md``).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .dense_attention import set_motion_attention
from .loading import Backbone, SD15Components, build_backbone, build_sd15_modules, load_sd15_checkpoint, shipped_config
from .motion_module import load_motion_module, trained_attention_window
from .text import load_tokenizer

__all__ = ["TINY_WORLD_CONFIGS", "CHECKPOINT_FILE", "MOTION_FILE", "DEPTH_FOLDER", "POSE_PRIOR_FILE", "MANIFEST_FILE",
           "TinyWorldError", "load_tiny_world_pose_prior",
           "weights_dir", "tiny_world_config", "tiny_world_components", "tiny_world_motion_adapter",
           "tiny_world_tokenizer", "fold_latent_scale", "file_sha256", "read_manifest", "verify_weights",
           "load_tiny_world", "tiny_world_depth_model", "save_depth_model", "load_tiny_world_depth",
           "estimate_disparity"]

TINY_WORLD_CONFIGS = {"unet": "tiny_world/unet", "vae": "tiny_world/vae", "text_encoder": "tiny_world/text_encoder",
                      "motion_adapter": "tiny_world/motion_adapter", "depth": "tiny_world/depth"}
CHECKPOINT_FILE = "tiny_world.safetensors"
MOTION_FILE = "tiny_world_motion.safetensors"
DEPTH_FOLDER = "tiny_world_depth"  # a transformers save_pretrained folder
POSE_PRIOR_FILE = "tiny_world_pose_prior.safetensors"
# Depth Anything's DPTImageProcessor settings at the built-in frame size ([0, 255] -> [-1, 1]).
_DEPTH_PREPROCESSOR = {"image_processor_type": "DPTImageProcessor", "do_resize": True,
                       "size": {"height": 64, "width": 64}, "keep_aspect_ratio": False, "ensure_multiple_of": 8,
                       "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                       "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_pad": False}
MANIFEST_FILE = "manifest.json"


class TinyWorldError(ValueError):
    """The shipped weights are missing or differ from the manifest (e.g. a Git LFS pointer or a partial checkout)."""


def weights_dir() -> Path:
    """``mvcustom_core/weights/tiny_world`` (where the shipped files live)."""
    return Path(str(resources.files("mvcustom_core").joinpath("weights", "tiny_world")))


def tiny_world_config(part: str) -> dict[str, Any]:
    """The shipped config of ``"unet"``, ``"vae"``, ``"text_encoder"``, ``"motion_adapter"`` or ``"depth"``."""
    return shipped_config(TINY_WORLD_CONFIGS[part])


def tiny_world_components(seed: int = 0) -> SD15Components:
    """Randomly initialised UNet, VAE and text encoder of the built-in architecture (training starts here)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_sd15_modules(tiny_world_config("unet"), tiny_world_config("vae"),
                                  tiny_world_config("text_encoder"))


def tiny_world_motion_adapter(seed: int = 0) -> nn.Module:
    """A randomly initialised ``MotionAdapter`` of the built-in architecture."""
    from diffusers import MotionAdapter

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return MotionAdapter.from_config(tiny_world_config("motion_adapter")).eval()


def tiny_world_tokenizer():
    """The tiny CLIP tokenizer the text tower was trained with (``configs/tiny/tokenizer``)."""
    return load_tokenizer(resources.files("mvcustom_core").joinpath("configs", "tiny", "tokenizer"))


@torch.no_grad()
def fold_latent_scale(vae: nn.Module, factor: float) -> None:
    """Make the VAE's latents ``factor`` times larger without changing what it decodes (in place).

    With ``z ~ N(μ, σ²)`` from the encoder's ``quant_conv`` (moments = [μ; log σ²]), ``z' = factor·z`` is
    ``N(factor·μ, factor²σ²)``: the μ rows of ``quant_conv`` are scaled by ``factor`` and ``2 ln factor`` is added to
    the log-variance bias; ``post_quant_conv`` (the decoder's first map, linear in z) takes ``z'`` with its weights
    divided by ``factor``. Used to bring a VAE trained from scratch to SD1.5's latent scale (``0.18215 · z`` of unit
    spread), which the pack's ComfyUI latent conversions assume.
    """
    if not factor > 0:
        raise ValueError(f"latent scale factor must be positive, got {factor}")
    channels = vae.config.latent_channels
    vae.quant_conv.weight[:channels] *= factor
    vae.quant_conv.bias[:channels] *= factor
    vae.quant_conv.bias[channels:] += 2.0 * float(torch.log(torch.tensor(factor, dtype=torch.float64)))
    vae.post_quant_conv.weight /= factor


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str | Path | None = None) -> dict[str, Any]:
    """The ``manifest.json`` of a weights folder (default: the shipped one)."""
    path = Path(folder or weights_dir()) / MANIFEST_FILE
    if not path.is_file():
        raise TinyWorldError(f"{path}: missing; the built-in backbone's weights are not installed "
                             "(re-clone the pack, or train them with scripts/train_tiny_world.py)")
    return json.loads(path.read_text(encoding="utf-8"))


def verify_weights(folder: str | Path | None = None) -> dict[str, Any]:
    """Check every file the manifest lists against its SHA-256; returns the manifest.

    Raises:
        TinyWorldError: a file is missing or differs, naming it (a Git LFS pointer is named as such).
    """
    folder = Path(folder or weights_dir())
    manifest = read_manifest(folder)
    for name in manifest["files"]:
        _verify_file(folder, manifest, name)
    return manifest


def _verify_file(folder: Path, manifest: dict[str, Any], name: str) -> Path:
    entry = manifest["files"].get(name)
    path = folder / name
    if entry is None:
        raise TinyWorldError(f"{path}: not listed in {folder / MANIFEST_FILE}; the weights folder is from an older "
                             "training run (re-train, or use the shipped folder)")
    if not path.is_file():
        raise TinyWorldError(f"{path}: missing (listed in {folder / MANIFEST_FILE})")
    if file_sha256(path) != entry["sha256"]:
        head = path.read_bytes()[:64]
        hint = (" (a Git LFS pointer: run 'git lfs pull', or clone without LFS filters)"
                if head.startswith(b"version https://git-lfs") else "")
        raise TinyWorldError(f"{path}: SHA-256 differs from {folder / MANIFEST_FILE}{hint}; the file is "
                             "damaged or from another training run")
    return path


def load_tiny_world(*, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                    folder: str | Path | None = None, verify: bool = True) -> Backbone:
    """The built-in trained backbone, read through the real single-file loaders.

    Args:
        dtype: floating dtype of the modules (the files hold float16; float32 is needed for training a
            customization).
        device: where the weights go.
        folder: a weights folder of the same layout (default: the shipped one).
        verify: check the files' SHA-256 against the manifest first.

    Returns:
        :class:`~mvcustom_core.backbone.loading.Backbone` (UNet input ``[B, 4, F, 8, 8]`` for 64x64 frames, text
        states ``[B·F, 77, 64]``); dense spatio-temporal attention is installed when the motion-module file's
        header (``mvcustom.attention_window``) says its modules were trained with it.
    """
    folder = Path(folder or weights_dir())
    if verify:
        verify_weights(folder)
    config = {part: tiny_world_config(part) for part in ("unet", "vae", "text_encoder")}
    components = load_sd15_checkpoint(folder / CHECKPOINT_FILE, dtype=dtype, device=device, config=config)
    adapter = load_motion_module(folder / MOTION_FILE, dtype=dtype, device=device,
                                 config=tiny_world_config("motion_adapter"))
    unet = build_backbone(components, adapter)
    set_motion_attention(unet, trained_attention_window(folder / MOTION_FILE))
    return Backbone(unet=unet, vae=components.vae, text_encoder=components.text_encoder,
                    tokenizer=tiny_world_tokenizer())


def load_tiny_world_pose_prior(folder: str | Path | None = None, *, verify: bool = True):
    """The built-in backbone's pose prior (:mod:`mvcustom_core.customization.pose_prior`): pose-block weights trained
    across the training worlds' subjects, where the demo's and the ablation's customizations start.

    Returns a :class:`~mvcustom_core.customization.pose_prior.PosePrior`.
    """
    from mvcustom_core.customization.pose_prior import load_pose_prior

    folder = Path(folder or weights_dir())
    path = _verify_file(folder, read_manifest(folder), POSE_PRIOR_FILE) if verify else folder / POSE_PRIOR_FILE
    return load_pose_prior(path)


# ------------------------------------------------------------------------------------------ depth
def tiny_world_depth_model(seed: int = 0) -> nn.Module:
    """A randomly initialised built-in depth model (transformers ``DepthAnythingForDepthEstimation``)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        model = DepthAnythingForDepthEstimation(DepthAnythingConfig(**tiny_world_config("depth")))
        # PyTorch's default layer initialization (transformers' zero biases and std 0.02 give a near-zero map that
        # the head's final ReLU turns into a constant 0 with no gradient), and a positive output bias so the
        # ReLU starts open.
        for layer in model.modules():
            if layer is not model and hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        with torch.no_grad():
            model.head.conv3.bias.fill_(0.5)
    return model.eval()


def save_depth_model(source: str | Path, folder: str | Path) -> list[str]:
    """Write a trained depth model (a ``save_pretrained`` folder) as float16 with its preprocessor config.

    Returns the written file names (each written atomically).
    """
    from transformers import DepthAnythingForDepthEstimation

    from mvcustom_core.files import atomic_write_bytes, atomic_write_text

    folder = Path(folder)
    model = DepthAnythingForDepthEstimation.from_pretrained(str(source), local_files_only=True).half()
    staging = folder.parent / f".{folder.name}.staging"
    model.save_pretrained(str(staging), safe_serialization=True)
    names = []
    for path in sorted(staging.iterdir()):
        atomic_write_bytes(folder / path.name, path.read_bytes())
        path.unlink()
        names.append(path.name)
    staging.rmdir()
    atomic_write_text(folder / "preprocessor_config.json", json.dumps(_DEPTH_PREPROCESSOR, indent=2) + "\n")
    return sorted(names + ["preprocessor_config.json"])


def load_tiny_world_depth(folder: str | Path | None = None, *, dtype: torch.dtype = torch.float32):
    """The built-in depth model through the pack's depth loader (:func:`mvcustom_core.depth.load_depth_model`).

    Returns a :class:`~mvcustom_core.depth.DepthModel` (family ``depth_anything``, kind ``disparity``). Run it with
    :func:`estimate_disparity`: it was trained on 64x64 frames as they are, not through Depth Anything's 518-pixel
    input resize that :func:`mvcustom_core.depth.estimate_depth` applies to released models.
    """
    from mvcustom_core.depth import load_depth_model

    path = Path(folder or weights_dir() / DEPTH_FOLDER)
    return load_depth_model(path / "model.safetensors", dtype=dtype)


@torch.no_grad()
def estimate_disparity(model, images: torch.Tensor) -> torch.Tensor:
    """Inverse depth up to scale ``[N, H, W]`` of images ``[N, 3, H, W]`` in [0, 1] (near is large; the sky ~0).

    ``model``: a :class:`~mvcustom_core.depth.DepthModel` or its transformers module. The scale is unknown (the
    model was trained with a scale-invariant loss); the shift is 0, so one scale fitted anywhere (e.g. on the
    subject) places every pixel.
    """
    module = getattr(model, "module", model)
    param = next(module.parameters())
    pixels = (images * 2 - 1).to(param)  # the processor's mean and std of 0.5
    return module(pixel_values=pixels).predicted_depth.float().clamp_min(0)
