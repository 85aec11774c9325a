"""Key tables between the original (LDM / CompVis) SD1.x checkpoint layout and diffusers / transformers modules.

A table is built from the *target module's own key list* (``model.state_dict().keys()``, free on the ``meta``
device) and the module's config, so it is exact for any SD1.x-shaped config and invertible by construction:
the loader reads ``ldm_key`` for every ``diffusers_key``; the tests write ``diffusers_key -> ldm_key`` to make a
file in the original layout.

Convention:
    - LDM keys carry their full file prefix: ``model.diffusion_model.`` (UNet), ``first_stage_model.`` (VAE),
      ``cond_stage_model.transformer.text_model.`` (CLIP text tower).
    - ``conv1x1`` marks VAE mid-block attention projections stored as 1x1 convolutions ``[C, C, 1, 1]`` in LDM and as
      linear layers ``[C, C]`` in diffusers.

The renames follow diffusers' own converters (``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``), which the tests use as the independent reference.
We keep an explicit table rather than calling them because they fill missing keys with ``None`` silently, have no
inverse, and (for CLIP) emit the transformers-4 ``text_model.`` prefix that transformers 5 no longer has.

Example:
    >>> from mvcustom_core.backbone.ldm_keys import unet_key_table
    >>> table = unet_key_table(["conv_in.weight", "down_blocks.0.resnets.1.conv1.weight"], {"layers_per_block": 2})
    >>> [m.ldm for m in table]
    ['model.diffusion_model.input_blocks.0.0.weight', 'model.diffusion_model.input_blocks.2.0.in_layers.2.weight']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KeyMapping",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "CLIP_PREFIX",
    "unet_key_table",
    "vae_key_table",
    "clip_key_table",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."


@dataclass(frozen=True)
class KeyMapping:
    """One tensor: its name in the diffusers/transformers module and in the LDM file."""

    diffusers: str
    ldm: str
    conv1x1: bool = False


# ResnetBlock2D (diffusers) <- ResBlock (LDM openaimodel.py); order matters: no name is a prefix of a later one.
_UNET_RESNET_RENAMES = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)

_UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


def _rename_prefix(rest: str, renames: Iterable[tuple[str, str]], key: str) -> str:
    for new, old in renames:
        if rest.startswith(new):
            return old + rest[len(new):]
    raise KeyError(f"no LDM name known for resnet tensor {key!r}")


def _unet_ldm_name(key: str, layers: int, up_has_attention: Mapping[int, bool]) -> str:
    for new, old in _UNET_FIXED.items():
        if key.startswith(new):
            return old + key[len(new):]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * (layers + 1) + layer
        if kind == "resnets":
            return f"input_blocks.{index}.0." + _rename_prefix(rest, _UNET_RESNET_RENAMES, key)
        return f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}." + _rename_prefix(m[2], _UNET_RESNET_RENAMES, key)
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    # Up blocks hold layers + 1 resnets each (they also consume the skip of each downsampler).
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * (layers + 1) + layer
        if kind == "resnets":
            return f"output_blocks.{index}.0." + _rename_prefix(rest, _UNET_RESNET_RENAMES, key)
        return f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        slot = 2 if up_has_attention.get(block, False) else 1
        return f"output_blocks.{block * (layers + 1) + layers}.{slot}.conv.{m[2]}"
    raise KeyError(f"no LDM name known for UNet tensor {key!r} (config outside the SD1.x layout?)")


def unet_key_table(diffusers_keys: Iterable[str], config: Mapping[str, Any]) -> list[KeyMapping]:
    """Table for ``UNet2DConditionModel`` keys of an SD1.x-layout config (``layers_per_block`` an int).

    Args:
        diffusers_keys: the module's ``state_dict()`` keys.
        config: the UNet config (needs ``layers_per_block``).
    """
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError(f"the LDM UNet layout needs one int layers_per_block, got {layers!r}")
    keys = list(diffusers_keys)
    up_has_attention = {
        int(m[1]): True for k in keys if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))
    }
    return [KeyMapping(k, UNET_PREFIX + _unet_ldm_name(k, layers, up_has_attention)) for k in keys]


_VAE_ATTENTION_RENAMES = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)
_VAE_RESNET_RENAMES = (
    ("norm1.", "norm1."),
    ("conv1.", "conv1."),
    ("norm2.", "norm2."),
    ("conv2.", "conv2."),
    ("conv_shortcut.", "nin_shortcut."),
)


def _vae_ldm_name(key: str, num_blocks: int) -> tuple[str, bool]:
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key, False
    if m := re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.(.+)", key):
        return key, False
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{m[1]}.norm_out.{m[2]}", False
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}." + _rename_prefix(m[3], _VAE_RESNET_RENAMES, key), False
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", False
    # The decoder's up blocks are stored deepest-first in LDM (``up.{n-1}`` runs first).
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        block = num_blocks - 1 - int(m[1])
        return f"decoder.up.{block}.block.{m[2]}." + _rename_prefix(m[3], _VAE_RESNET_RENAMES, key), False
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}", False
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        rest = _rename_prefix(m[3], _VAE_RESNET_RENAMES, key)
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{rest}", False
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        rest = _rename_prefix(m[2], _VAE_ATTENTION_RENAMES, key)
        is_projection_weight = m[2].endswith(".weight") and not m[2].startswith("group_norm.")
        return f"{m[1]}.mid.attn_1.{rest}", is_projection_weight
    raise KeyError(f"no LDM name known for VAE tensor {key!r} (config outside the SD1.x layout?)")


def vae_key_table(diffusers_keys: Iterable[str], config: Mapping[str, Any]) -> list[KeyMapping]:
    """Table for ``AutoencoderKL`` keys; ``conv1x1`` set on the mid-block attention projection weights."""
    num_blocks = len(config["up_block_types"])
    table = []
    for key in diffusers_keys:
        ldm, conv1x1 = _vae_ldm_name(key, num_blocks)
        table.append(KeyMapping(key, VAE_PREFIX + ldm, conv1x1))
    return table


def clip_key_table(diffusers_keys: Iterable[str]) -> list[KeyMapping]:
    """Table for transformers ``CLIPTextModel`` keys (with or without the transformers-4 ``text_model.`` level)."""
    return [KeyMapping(k, CLIP_PREFIX + k.removeprefix("text_model.")) for k in diffusers_keys]
