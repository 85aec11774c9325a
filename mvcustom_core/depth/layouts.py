"""Key layouts of monocular depth weights files, and the one conversion between them.

Two layouts are read (names as they are in the files, never the installed transformers' module names):

* **Depth Anything V2, original** (``DepthAnything/Depth-Anything-V2`` ``dpt.py``; the single files ComfyUI users
  have, e.g. ``depth_anything_v2_vitl_fp32.safetensors`` in ``models/depthanything`` from
  ``Kijai/DepthAnythingV2-safetensors``): a DINOv2 ViT under ``pretrained.*`` (fused ``attn.qkv``, layer scales
  ``ls1/ls2.gamma``) and a DPT head under ``depth_head.*`` (``projects``, ``resize_layers``, ``scratch.layerN_rn``,
  ``scratch.refinenet1..4``, ``scratch.output_conv1/2``).
* **transformers** (the Hugging Face folders ``depth-anything/Depth-Anything-V2-*-hf``,
  ``LiheYoung/depth-anything-*-hf``, ``Intel/zoedepth-*``): ``backbone.*`` / ``neck.*`` / ``head.*`` (Depth
  Anything) or ``relative_head.*`` / ``metric_head.*`` (ZoeDepth), as saved by transformers 4.x. Loading goes
  through transformers' own ``from_pretrained``, which maps these names onto its current module names.

The original → transformers renaming is the one of transformers' ``convert_depth_anything_to_hf.py`` (facts: the
fused qkv rows are ``[query; key; value]``; the DPT fusion blocks run deepest first, so ``refinenet4`` is the first
fusion layer, ``refinenet1`` the last; ``resize_layers.2`` is an identity without weights).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

__all__ = ["detect_depth_layout", "original_depth_anything_shapes", "original_to_transformers",
           "depth_anything_size", "LAYOUT_HINTS"]

# Head layout of the original DPT head: output_conv2 is Sequential(conv 3x3, ReLU, conv 1x1, ReLU | Sigmoid).
_HEAD_RENAMES = {
    "depth_head.scratch.output_conv1.": "head.conv1.",
    "depth_head.scratch.output_conv2.0.": "head.conv2.",
    "depth_head.scratch.output_conv2.2.": "head.conv3.",
}
_BLOCK_RENAMES = {
    "norm1.": "norm1.", "norm2.": "norm2.", "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2.",
    "attn.proj.": "attention.output.dense.", "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1",
}
_STEM_RENAMES = {
    "pretrained.cls_token": "backbone.embeddings.cls_token",
    "pretrained.mask_token": "backbone.embeddings.mask_token",
    "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
    "pretrained.patch_embed.proj.weight": "backbone.embeddings.patch_embeddings.projection.weight",
    "pretrained.patch_embed.proj.bias": "backbone.embeddings.patch_embeddings.projection.bias",
    "pretrained.norm.weight": "backbone.layernorm.weight",
    "pretrained.norm.bias": "backbone.layernorm.bias",
}
_FUSION_RENAMES = {"out_conv.": "projection.", "resConfUnit1.conv1.": "residual_layer1.convolution1.",
                   "resConfUnit1.conv2.": "residual_layer1.convolution2.",
                   "resConfUnit2.conv1.": "residual_layer2.convolution1.",
                   "resConfUnit2.conv2.": "residual_layer2.convolution2."}

# Why a file is not a depth model, by the keys it has (for the loader's error message).
LAYOUT_HINTS = {
    "sd_checkpoint": "a Stable Diffusion checkpoint ('model.diffusion_model.*'); pick a depth model",
    "controlnet": "a ControlNet ('control_model.*' / 'controlnet_*'), not a depth estimator",
    "zoedepth_original": "an original-layout ZoeDepth file ('core.core.pretrained.*'); use the transformers folder "
                         "Intel/zoedepth-nyu-kitti (config.json + model.safetensors) instead",
    "depth_anything_v2_giant": "Depth Anything V2 Giant (ViT-g, SwiGLU MLPs), which has no transformers class",
    "unknown": "no known depth-model keys ('pretrained.blocks.*' + 'depth_head.*' for Depth Anything V2, "
               "'backbone.*' + 'head.*' / 'metric_head.*' for transformers Depth Anything / ZoeDepth)",
}


def detect_depth_layout(keys: Iterable[str]) -> str:
    """Name a weights file's layout from its key names.

    Returns:
        ``"depth_anything_original"``, ``"depth_anything"`` (transformers), ``"zoedepth"`` (transformers), or a key of
        :data:`LAYOUT_HINTS` for files that are something else.
    """
    keys = set(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("pretrained.blocks.") and has("depth_head."):
        if any(".mlp.w12." in k for k in keys):
            return "depth_anything_v2_giant"
        return "depth_anything_original"
    if has("backbone.") and has("metric_head.") and has("relative_head."):
        return "zoedepth"
    if has("backbone.") and has("neck.fusion_stage.") and has("head.conv3."):
        return "depth_anything"
    if has("core.core.pretrained."):
        return "zoedepth_original"
    if has("model.diffusion_model."):
        return "sd_checkpoint"
    if has("control_model.") or has("controlnet_"):
        return "controlnet"
    return "unknown"


def depth_anything_size(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
    """``(width C, depth L)`` of the ViT in an original-layout Depth Anything file (qkv is ``[3C, C]``)."""
    width = shapes["pretrained.blocks.0.attn.qkv.weight"][1]
    depth = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k)))
    return width, depth


def original_depth_anything_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of an original-layout Depth Anything V2 file for a transformers ``DepthAnythingConfig`` dict.

    The original module tree (``dpt.py``: ``DINOv2`` + ``DPTHead(features, out_channels, use_bn=False,
    use_clstoken=False)``), written from its constructor arguments: C = ViT width, F = ``features``
    (= ``fusion_hidden_size``), o_i = ``out_channels`` (= ``neck_hidden_sizes``).

    Example:
        >>> from mvcustom_core.depth.loading import shipped_depth_config
        >>> shapes = original_depth_anything_shapes(shipped_depth_config("depth_anything_v2_small"))
        >>> shapes["pretrained.blocks.0.attn.qkv.weight"], shapes["depth_head.resize_layers.0.weight"]
        ((1152, 384), (48, 48, 4, 4))
    """
    vit = config["backbone_config"]
    c, layers, patch = vit["hidden_size"], vit["num_hidden_layers"], vit["patch_size"]
    hidden = int(c * vit.get("mlp_ratio", 4))
    grid = vit["image_size"] // patch
    f, outs = config["fusion_hidden_size"], list(config["neck_hidden_sizes"])
    head = config.get("head_hidden_size", 32)
    shapes: dict[str, tuple[int, ...]] = {
        "pretrained.cls_token": (1, 1, c),
        "pretrained.mask_token": (1, c),
        "pretrained.pos_embed": (1, grid * grid + 1, c),
        "pretrained.patch_embed.proj.weight": (c, 3, patch, patch),
        "pretrained.patch_embed.proj.bias": (c,),
        "pretrained.norm.weight": (c,),
        "pretrained.norm.bias": (c,),
    }
    for i in range(layers):
        p = f"pretrained.blocks.{i}."
        shapes.update({p + "norm1.weight": (c,), p + "norm1.bias": (c,), p + "attn.qkv.weight": (3 * c, c),
                       p + "attn.qkv.bias": (3 * c,), p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                       p + "ls1.gamma": (c,), p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                       p + "mlp.fc1.weight": (hidden, c), p + "mlp.fc1.bias": (hidden,),
                       p + "mlp.fc2.weight": (c, hidden), p + "mlp.fc2.bias": (c,), p + "ls2.gamma": (c,)})
    for i, o in enumerate(outs):
        shapes[f"depth_head.projects.{i}.weight"] = (o, c, 1, 1)
        shapes[f"depth_head.projects.{i}.bias"] = (o,)
        shapes[f"depth_head.scratch.layer{i + 1}_rn.weight"] = (f, o, 3, 3)
    # resize_layers: ConvTranspose2d(o0, o0, 4, stride 4), ConvTranspose2d(o1, o1, 2, stride 2), Identity,
    # Conv2d(o3, o3, 3, stride 2); transposed convolutions store [in, out, k, k].
    for i, k in ((0, 4), (1, 2), (3, 3)):
        shapes[f"depth_head.resize_layers.{i}.weight"] = (outs[i], outs[i], k, k)
        shapes[f"depth_head.resize_layers.{i}.bias"] = (outs[i],)
    for n in range(1, 5):
        p = f"depth_head.scratch.refinenet{n}."
        shapes[p + "out_conv.weight"], shapes[p + "out_conv.bias"] = (f, f, 1, 1), (f,)
        for unit in ("resConfUnit1", "resConfUnit2"):
            for conv in ("conv1", "conv2"):
                shapes[f"{p}{unit}.{conv}.weight"], shapes[f"{p}{unit}.{conv}.bias"] = (f, f, 3, 3), (f,)
    shapes.update({"depth_head.scratch.output_conv1.weight": (f // 2, f, 3, 3),
                   "depth_head.scratch.output_conv1.bias": (f // 2,),
                   "depth_head.scratch.output_conv2.0.weight": (head, f // 2, 3, 3),
                   "depth_head.scratch.output_conv2.0.bias": (head,),
                   "depth_head.scratch.output_conv2.2.weight": (1, head, 1, 1),
                   "depth_head.scratch.output_conv2.2.bias": (1,)})
    return shapes


def _transformers_name(name: str) -> str | None:
    """The transformers (4.x file) name of one original-layout tensor other than a fused qkv; None = no counterpart."""
    if name in _STEM_RENAMES:
        return _STEM_RENAMES[name]
    if m := re.fullmatch(r"pretrained\.blocks\.(\d+)\.(.+)", name):
        for old, new in _BLOCK_RENAMES.items():
            if m.group(2).startswith(old):
                return f"backbone.encoder.layer.{m.group(1)}.{new}{m.group(2)[len(old):]}"
        return None
    if m := re.fullmatch(r"depth_head\.projects\.(\d)\.(weight|bias)", name):
        return f"neck.reassemble_stage.layers.{m.group(1)}.projection.{m.group(2)}"
    if m := re.fullmatch(r"depth_head\.resize_layers\.([013])\.(weight|bias)", name):
        return f"neck.reassemble_stage.layers.{m.group(1)}.resize.{m.group(2)}"
    if m := re.fullmatch(r"depth_head\.scratch\.layer([1-4])_rn\.weight", name):
        return f"neck.convs.{int(m.group(1)) - 1}.weight"
    if m := re.fullmatch(r"depth_head\.scratch\.refinenet([1-4])\.(.+)", name):
        # DPT fuses the deepest features first: refinenet4 is transformers' fusion layer 0.
        for old, new in _FUSION_RENAMES.items():
            if m.group(2).startswith(old):
                return f"neck.fusion_stage.layers.{4 - int(m.group(1))}.{new}{m.group(2)[len(old):]}"
        return None
    for old, new in _HEAD_RENAMES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return None


def original_to_transformers(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an original-layout Depth Anything state dict to the transformers file layout.

    Each fused ``attn.qkv`` ``[3C, ...]`` is split in row thirds into ``attention.attention.{query,key,value}``.

    Returns:
        the renamed tensors (views of the inputs, no copies) and the original names that have no counterpart
        (e.g. ``readout_projects`` of a ``use_clstoken`` head), for the caller to report.
    """
    out: dict[str, Tensor] = {}
    unused: list[str] = []
    for name, tensor in state.items():
        if m := re.fullmatch(r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", name):
            prefix = f"backbone.encoder.layer.{m.group(1)}.attention.attention."
            for part, chunk in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                out[f"{prefix}{part}.{m.group(2)}"] = chunk
            continue
        new = _transformers_name(name)
        if new is None:
            unused.append(name)
        else:
            out[new] = tensor
    return out, unused
