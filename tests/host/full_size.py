"""Full-size SD1.5 files with random weights, for the tier-3 bridge tests (ComfyUI detects SD1.5 by key names and
shapes, so tiny shapes would not load in Load Checkpoint).

- :func:`write_random_sd15_checkpoint`: the original single-file layout (UNet, VAE, CLIP: 1,131 tensors, 1.07 B
  values), fp16, ~2 GB; written tensor by tensor from the shipped configs' shapes, never holding an fp32 model.
- :func:`write_kohya_lora`: a small LoRA in the kohya layout (``lora_unet_<diffusers name>``,
  ``lora_te_text_model_encoder_layers_<i>_<module>``, each with ``lora_down``, ``lora_up``, ``alpha``).
- :func:`write_identity_motion_module`: an AnimateDiff v3-layout motion module (original key names) whose every
  ``proj_out`` is zero: its temporal transformers add nothing, so a UNetMotionModel with it computes exactly the
  per-frame UNet (AnimateDiff initialises ``proj_out`` to zero for the same reason), and ComfyUI's image model is
  a reference for the pack's video model.

Initialisation: matrices and kernels ~ N(0, 1/fan_in) (activations keep their scale through 16 blocks, so fp16 stays
finite), normalisation scales 1 + N(0, 0.1²), biases N(0, 0.02²), CLIP's token/position tables N(0, 0.02²).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from mvcustom_core.backbone.loading import build_sd15_modules, export_ldm_state_dict, shipped_config
from mvcustom_core.backbone.motion_module import motion_key_table, sinusoidal_positions

__all__ = ["write_random_sd15_checkpoint", "write_kohya_lora", "write_identity_motion_module", "LORA_UNET_MODULES",
           "LORA_CLIP_LAYERS", "LORA_RANK"]

LORA_RANK = 4
# diffusers names of the UNet modules the test LoRA patches: attention projections, a 1x1-conv proj_in and a
# 3x3 resnet conv (kohya's conv LoRA: down [r, in, 3, 3], up [out, r, 1, 1]).
LORA_UNET_MODULES = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.proj_in",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2",
    "up_blocks.3.resnets.2.conv1",
)
LORA_CLIP_LAYERS = ((0, "self_attn_q_proj"), (11, "mlp_fc1"))


def _randn(shape: tuple[int, ...], std: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * std


def _init(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if name.endswith("position_ids"):
        return torch.arange(shape[-1]).expand(shape).contiguous()
    if name.endswith(("token_embedding.weight", "position_embedding.weight")):
        return _randn(shape, 0.02, gen).half()
    if len(shape) >= 2:
        return _randn(shape, 1.0 / math.sqrt(math.prod(shape[1:])), gen).half()
    if name.endswith(".bias"):
        return _randn(shape, 0.02, gen).half()
    return (1.0 + _randn(shape, 0.1, gen)).half()


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    return path


def write_random_sd15_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """A full-size SD1.5 single file (LDM names, fp16) with random weights; ~2.1 GB."""
    meta = build_sd15_modules(shipped_config("sd15/unet"), shipped_config("sd15/vae"),
                              shipped_config("sd15/text_encoder"), device="meta")
    shapes = {k: tuple(v.shape) for k, v in export_ldm_state_dict(meta).items()}
    gen = torch.Generator().manual_seed(seed)
    return _save({k: _init(k, s, gen) for k, s in sorted(shapes.items())}, Path(path))


def write_kohya_lora(path: str | os.PathLike, seed: int = 1, scale: float = 0.5) -> Path:
    """A rank-4 LoRA on :data:`LORA_UNET_MODULES` and :data:`LORA_CLIP_LAYERS`, kohya key layout.

    ``alpha`` = rank, so ComfyUI applies ``W + up @ down``; ``scale`` sizes the change relative to ``W``.
    """
    meta = build_sd15_modules(shipped_config("sd15/unet"), shipped_config("sd15/vae"),
                              shipped_config("sd15/text_encoder"), device="meta")
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def add(key: str, weight_shape: tuple[int, ...]) -> None:
        out, fan_in = weight_shape[0], math.prod(weight_shape[1:])
        kernel = weight_shape[2:]
        down_shape = (LORA_RANK, weight_shape[1], *kernel)
        up_shape = (out, LORA_RANK) + ((1, 1) if kernel else ())
        tensors[f"{key}.lora_down.weight"] = _randn(down_shape, 1.0 / math.sqrt(fan_in), gen).half()
        tensors[f"{key}.lora_up.weight"] = _randn(up_shape, scale / math.sqrt(LORA_RANK), gen).half()
        tensors[f"{key}.alpha"] = torch.tensor(float(LORA_RANK))

    unet_shapes = {k: tuple(v.shape) for k, v in meta.unet.state_dict().items()}
    for module in LORA_UNET_MODULES:
        add("lora_unet_" + module.replace(".", "_"), unet_shapes[module + ".weight"])
    text_shapes = {k: tuple(v.shape) for k, v in meta.text_encoder.state_dict().items()}
    for layer, kohya in LORA_CLIP_LAYERS:
        module = kohya.replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
        add(f"lora_te_text_model_encoder_layers_{layer}_{kohya}",
            text_shapes[f"encoder.layers.{layer}.{module}.weight"])
    return _save(tensors, Path(path))


def write_identity_motion_module(path: str | os.PathLike, seed: int = 2) -> Path:
    """An AnimateDiff v3 motion module (original layout, fp16, ~0.8 GB) whose ``proj_out`` layers are zero."""
    from diffusers import MotionAdapter

    with torch.device("meta"):
        adapter = MotionAdapter.from_config(shipped_config("animatediff/v3"))
    state = adapter.state_dict()
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for m in motion_key_table(state):
        shape = tuple(state[m.diffusers].shape)
        if m.diffusers.endswith("pos_embed.pe"):
            value = sinusoidal_positions(shape[1], shape[2]).half()
            tensors[m.ldm] = value
            tensors[m.ldm.replace("attention_blocks.0.", "attention_blocks.1.")] = value.clone()
        elif ".proj_out." in m.diffusers:
            tensors[m.ldm] = torch.zeros(shape, dtype=torch.float16)
        else:
            tensors[m.ldm] = _init(m.ldm, shape, gen)
    return _save(tensors, Path(path))

