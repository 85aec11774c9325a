"""A tiny random SD1.x-shaped backbone for tests and the demo (no weights, about a second on CPU).

Same module classes and key layout as the real thing, from ``configs/tiny/*.json``: UNet blocks (32, 64) with one
cross-attention down/up block, VAE with four blocks (downsampling 8x like SD1.x, 8-16 channels), a 2-layer CLIP
text tower of width 32 and the 585-entry tokenizer in ``configs/tiny/tokenizer/``, and an AnimateDiff-v2-like
motion adapter (mid-block module, encoding length 32).

Example:
    >>> import torch
    >>> from mvcustom_core.backbone.tiny import tiny_backbone
    >>> backbone = tiny_backbone(seed=0)
    >>> latents = torch.zeros(1, 4, 2, 8, 8)                                  # [B, C, F, h, w]
    >>> text = torch.zeros(2, 77, 32)      # [B*F, 77, C]: diffusers >= 0.30 wants text states repeated per frame
    >>> backbone.unet(latents, 10, encoder_hidden_states=text).sample.shape
    torch.Size([1, 4, 2, 8, 8])
"""

from __future__ import annotations

from importlib import resources

import torch

from .loading import Backbone, SD15Components, build_backbone, build_sd15_modules, shipped_config
from .text import load_tokenizer

__all__ = ["tiny_components", "tiny_motion_adapter", "tiny_backbone", "TINY_CONFIGS"]

TINY_CONFIGS = {"unet": "tiny/unet", "vae": "tiny/vae", "text_encoder": "tiny/text_encoder"}


def tiny_components(seed: int = 0, *, dtype: torch.dtype = torch.float32) -> SD15Components:
    """Random tiny UNet2DConditionModel, AutoencoderKL and CLIPTextModel; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = build_sd15_modules(
            shipped_config(TINY_CONFIGS["unet"]),
            shipped_config(TINY_CONFIGS["vae"]),
            shipped_config(TINY_CONFIGS["text_encoder"]),
        )
    for module in (components.unet, components.vae, components.text_encoder):
        if dtype != torch.float32:
            module.to(dtype)
    return components


def tiny_motion_adapter(seed: int = 0, *, mid_block: bool = True, dtype: torch.dtype = torch.float32):
    """A random tiny diffusers ``MotionAdapter`` matching :func:`tiny_components` (v2-like, or v3-like without mid)."""
    from diffusers import MotionAdapter

    config = shipped_config("tiny/motion_adapter")
    config["use_motion_mid_block"] = mid_block
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        adapter = MotionAdapter.from_config(config)
    return (adapter if dtype == torch.float32 else adapter.to(dtype)).eval()


def tiny_backbone(seed: int = 0, *, dtype: torch.dtype = torch.float32) -> Backbone:
    """Tiny random backbone: ``UNetMotionModel`` + VAE + CLIP text encoder + CLIP tokenizer, all offline.

    Args:
        seed: seeds every weight; equal seeds give bit-identical models.
        dtype: floating dtype of all modules.

    Returns:
        :class:`~mvcustom_core.backbone.loading.Backbone` (``unet`` input ``[B, 4, F, h, w]``, text states
        ``[B*F, 77, 32]`` (repeated per frame, frame-major within each batch item), VAE factor 8).
    """
    components = tiny_components(seed, dtype=dtype)
    unet = build_backbone(components, tiny_motion_adapter(seed, dtype=dtype))
    tokenizer = load_tokenizer(resources.files("mvcustom_core").joinpath("configs", "tiny", "tokenizer"))
    return Backbone(unet=unet, vae=components.vae, text_encoder=components.text_encoder, tokenizer=tokenizer)
