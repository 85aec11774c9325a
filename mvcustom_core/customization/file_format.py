"""The customization file: everything inference needs about one subject, in one safetensors file.

Layout (format ``mvcustom.customization``, version 1; all tensors float32 unless noted):

==================================  =====================================================================
tensor key                          content
==================================  =====================================================================
``pose.<block>.<param>``            FeatureNeRF and fusion weights of one pose-conditioned block, keys of
                                    :class:`~mvcustom_core.customization.pose_block.PoseConditionedBlock`
                                    without its wrapped ``block.`` (``featurenerf.point_mlp.0.weight``,
                                    ``fuse.weight`` …)
``reference.<block>``               reference token bank ``[Bb, N, C, h, w]`` of that block; ``Bb`` = 2 holds
                                    the unconditional (row 0) and conditional (row 1) CFG branches; float16
                                    (:func:`stored_reference_bank`; files written before it hold float32,
                                    rounded to float16 when read)
``cameras.K`` / ``cameras.c2w``     the N reference cameras ``[N, 3, 3]`` / ``[N, 4, 4]`` (normalized scene)
``token.embedding``                 the learned subject-token input embedding ``[1, D]``
==================================  =====================================================================

Header metadata (strings; JSON where structured): ``format``, ``version``, ``blocks`` (block names in
UNet order), ``featurenerf`` (block → :class:`FeatureNeRFConfig` dict), ``backbone`` (fingerprint, see
:func:`backbone_fingerprint`), ``image_size`` (reference cameras' ``[H, W]``), ``token``, ``class_word``,
``prompt_template``, ``training`` (the training configuration and final losses).

A customization only fits the backbone it was trained on: the fingerprint lists every spatial transformer
block with its width and the UNet's text width, and :func:`apply_customization` refuses another backbone,
naming the first difference.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mvcustom_core.cameras import CameraSet
from mvcustom_core.customization.pose_block import (
    PoseBlockError, PoseConditionedBlock, PoseContext, install_pose_blocks, pose_blocks, remove_pose_blocks)
from mvcustom_core.files import Replace, atomic_write

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CustomizationFileError", "BackboneMismatchError", "Customization",
           "backbone_fingerprint", "check_backbone", "save_customization", "load_customization",
           "is_customization_file", "customization_from_unet", "apply_customization", "stored_reference_bank"]

FORMAT_NAME = "mvcustom.customization"
FORMAT_VERSION = 1


def stored_reference_bank(bank: Tensor) -> Tensor:
    """The reference bank ``[Bb, N, C, h, w]`` as a customization keeps it: float16 when every value fits its range,
    float32 otherwise.

    The bank stays resident through every run of the customization but is read only when the pose blocks render
    (the first step; later steps reuse the cached render), and the render upcasts it to float32. Half precision
    halves the largest tensor MVCustom keeps beside plain sampling (0.37 → 0.19 GB for 8 references at 512² on
    SD1.5, docs/performance.md) for a relative rounding of at most 2^-11 per token
    (tests/core/test_customization_file_format.py bounds what it moves the output).
    """
    bank = bank.detach()
    if bank.dtype == torch.float16:
        return bank
    half = bank.to(torch.float16)  # values beyond its range become ±inf
    return half if bool(torch.isfinite(half).all()) else bank.float()


class CustomizationFileError(ValueError):
    """A customization file that is unreadable, of another format/version, or inconsistent."""


class BackboneMismatchError(CustomizationFileError):
    """A customization applied to a backbone it was not trained on."""


@dataclass
class Customization:
    """One trained subject (see the module docstring for the file layout).

    Attributes:
        blocks: pose-conditioned block names, UNet order.
        featurenerf: block → FeatureNeRF config dict (``channels`` included).
        weights: block → state dict of the block's ``featurenerf.*`` and ``fuse.weight``.
        references: block → reference bank ``[Bb, N, C, h, w]``.
        ref_cams: the N reference cameras of the bank.
        token: the subject token string (``"<mvc-subject>"``).
        class_word: the class word the token was initialised from.
        token_embedding: ``[1, D]`` learned input embedding.
        backbone: fingerprint of the backbone it was trained on.
        prompt_template: e.g. ``"photo of a {token} {class_word}"``.
        training: training configuration and results (free-form JSON).
    """

    blocks: list[str]
    featurenerf: dict[str, dict]
    weights: dict[str, dict[str, Tensor]]
    references: dict[str, Tensor]
    ref_cams: CameraSet
    token: str
    class_word: str
    token_embedding: Tensor
    backbone: dict[str, Any]
    prompt_template: str = "photo of a {token} {class_word}"
    training: dict[str, Any] = field(default_factory=dict)

    def prompt(self) -> str:
        """The training prompt with the token filled in (``"photo of a <mvc-subject> car"``)."""
        return self.prompt_template.format(token=self.token, class_word=self.class_word)


# ------------------------------------------------------------------------------------ fingerprint
def _block_width(module: nn.Module) -> int:
    block = module.block if isinstance(module, PoseConditionedBlock) else module
    return int(block.norm1.normalized_shape[0])


def backbone_fingerprint(unet: nn.Module) -> dict[str, Any]:
    """``{"blocks": [[name, width], …], "cross_attention_dim": D}`` of ``unet`` (pose blocks installed or not).

    Blocks are the spatial ``BasicTransformerBlock`` s (motion modules excluded), in module order.
    """
    blocks = []
    for name, module in unet.named_modules():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] == "transformer_blocks" and ".attentions." in f".{name}" \
                and "motion_modules" not in name and (isinstance(module, PoseConditionedBlock)
                                                      or hasattr(module, "attn2")):
            blocks.append([name, _block_width(module)])
    config = getattr(unet, "config", None)
    cross = config.get("cross_attention_dim") if hasattr(config, "get") else None
    return {"blocks": blocks, "cross_attention_dim": int(cross) if isinstance(cross, int) else cross}


def check_backbone(expected: dict[str, Any], unet: nn.Module, where: str = "customization") -> None:
    """Raise :class:`BackboneMismatchError` naming the first difference between ``expected`` and ``unet``."""
    actual = backbone_fingerprint(unet)
    if expected.get("cross_attention_dim") != actual["cross_attention_dim"]:
        raise BackboneMismatchError(
            f"{where} was trained on a backbone with text width {expected.get('cross_attention_dim')}, this "
            f"backbone has {actual['cross_attention_dim']} (a customization fits only its own backbone)")
    want = [tuple(b) for b in expected.get("blocks", [])]
    have = [tuple(b) for b in actual["blocks"]]
    if want != have:
        detail = f"{len(want)} transformer blocks expected, this backbone has {len(have)}"
        for a, b in zip(want, have):
            if a != b:
                detail = f"block {a[0]} (width {a[1]}) expected, found {b[0]} (width {b[1]})"
                break
        raise BackboneMismatchError(f"{where} was trained on another backbone: {detail}")


# ------------------------------------------------------------------------------------ save / load
def save_customization(path: str | os.PathLike, customization: Customization, *, replace: Replace = True) -> Path:
    """Write ``customization`` to ``path`` (safetensors, atomically; ``replace`` as in
    :func:`~mvcustom_core.files.atomic_write`)."""
    from safetensors.torch import save_file

    c = customization
    tensors: dict[str, Tensor] = {}
    for name in c.blocks:
        for key, value in c.weights[name].items():
            tensors[f"pose.{name}.{key}"] = value.detach().float().cpu().contiguous()
        tensors[f"reference.{name}"] = stored_reference_bank(c.references[name]).cpu().contiguous()
    tensors["cameras.K"] = c.ref_cams.K.detach().float().cpu().contiguous()
    tensors["cameras.c2w"] = c.ref_cams.c2w.detach().float().cpu().contiguous()
    tensors["token.embedding"] = c.token_embedding.detach().float().cpu().reshape(1, -1).contiguous()
    metadata = {
        "format": FORMAT_NAME,
        "version": str(FORMAT_VERSION),
        "blocks": json.dumps(c.blocks),
        "featurenerf": json.dumps(c.featurenerf),
        "backbone": json.dumps(c.backbone),
        "image_size": json.dumps(list(c.ref_cams.image_size)),
        "token": c.token,
        "class_word": c.class_word,
        "prompt_template": c.prompt_template,
        "training": json.dumps(c.training),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), replace=replace)


def _json(meta: dict[str, str], key: str, path: Path) -> Any:
    if key not in meta:
        raise CustomizationFileError(f"{path}: header has no {key!r} entry")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as error:
        raise CustomizationFileError(f"{path}: header entry {key!r} is not JSON: {error}") from error


def is_customization_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file whose header names this format (reads the header only).

    Tells customizations from motion modules and other files kept in the same model folder; an unreadable
    file is no customization.
    """
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == FORMAT_NAME
    except Exception:  # noqa: BLE001 - whatever the reader refuses is not one of ours
        return False


def load_customization(path: str | os.PathLike) -> Customization:
    """Read a customization file written by :func:`save_customization`.

    Raises:
        CustomizationFileError: missing/unreadable file, another format or a newer version, missing tensors.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CustomizationFileError(f"{path}: no such customization file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CustomizationFileError(f"{path}: not a readable safetensors file (truncated?): {error}") from error
    if meta.get("format") != FORMAT_NAME:
        raise CustomizationFileError(f"{path}: not an MVCustom customization (format {meta.get('format')!r}, "
                                     f"expected {FORMAT_NAME!r}); a ComfyUI embedding goes in models/embeddings")
    try:
        version = int(meta.get("version", ""))
    except ValueError:
        raise CustomizationFileError(f"{path}: bad version {meta.get('version')!r}") from None
    if version > FORMAT_VERSION:
        raise CustomizationFileError(f"{path}: format version {version} is newer than this pack reads "
                                     f"({FORMAT_VERSION}); update the pack")
    blocks = _json(meta, "blocks", path)
    weights: dict[str, dict[str, Tensor]] = {}
    references: dict[str, Tensor] = {}
    for name in blocks:
        prefix = f"pose.{name}."
        weights[name] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not weights[name]:
            raise CustomizationFileError(f"{path}: no weights for pose block {name!r}")
        if f"reference.{name}" not in tensors:
            raise CustomizationFileError(f"{path}: no reference bank for pose block {name!r}")
        references[name] = stored_reference_bank(tensors[f"reference.{name}"])
    for key in ("cameras.K", "cameras.c2w", "token.embedding"):
        if key not in tensors:
            raise CustomizationFileError(f"{path}: tensor {key!r} is missing")
    height, width = _json(meta, "image_size", path)
    ref_cams = CameraSet(K=tensors["cameras.K"], c2w=tensors["cameras.c2w"], image_size=(int(height), int(width)))
    return Customization(
        blocks=blocks, featurenerf=_json(meta, "featurenerf", path), weights=weights, references=references,
        ref_cams=ref_cams, token=meta.get("token", ""), class_word=meta.get("class_word", ""),
        token_embedding=tensors["token.embedding"], backbone=_json(meta, "backbone", path),
        prompt_template=meta.get("prompt_template", "photo of a {token} {class_word}"),
        training=_json(meta, "training", path) if "training" in meta else {})


# ------------------------------------------------------------------------------------ to / from a UNet
def customization_from_unet(unet: nn.Module, context: PoseContext, *, token: str, class_word: str,
                            token_embedding: Tensor, prompt_template: str = "photo of a {token} {class_word}",
                            training: dict | None = None) -> Customization:
    """Collect the installed pose blocks' weights and ``context``'s reference bank into a :class:`Customization`."""
    blocks = list(pose_blocks(unet))
    if not blocks:
        raise CustomizationFileError("the UNet has no pose-conditioned blocks installed")
    missing = [b.name for b in blocks if b.name not in context.references]
    if missing or context.ref_cams is None:
        raise CustomizationFileError(f"no reference bank captured for pose blocks {missing or '(cameras)'}")
    return Customization(
        blocks=[b.name for b in blocks],
        featurenerf={b.name: b.featurenerf.config.to_dict() for b in blocks},
        weights={b.name: b.own_state() for b in blocks},
        references={b.name: stored_reference_bank(context.references[b.name]).clone() for b in blocks},
        ref_cams=context.ref_cams, token=token, class_word=class_word,
        token_embedding=token_embedding.detach().reshape(1, -1).clone(), backbone=backbone_fingerprint(unet),
        prompt_template=prompt_template, training=dict(training or {}))


def _install_and_load(unet: nn.Module, c: Customization, ctx: PoseContext,
                       where: str) -> dict[str, PoseConditionedBlock]:
    """Install ``c``'s pose blocks on ``unet`` and load their weights; block name → installed block."""
    for name in c.blocks:
        overrides = {k: v for k, v in c.featurenerf[name].items() if k != "channels"}
        install_pose_blocks(unet, ctx, which=name, config_overrides=overrides)
    by_name = {b.name: b for b in pose_blocks(unet)}
    for name in c.blocks:
        block = by_name[name]
        if block.featurenerf.config.channels != int(c.featurenerf[name]["channels"]):
            raise BackboneMismatchError(f"{where}: block {name} has width {block.featurenerf.config.channels}, "
                                        f"the customization {c.featurenerf[name]['channels']}")
        param = next(block.featurenerf.parameters())
        state = {k: v.to(param.device, param.dtype) for k, v in c.weights[name].items()}
        try:
            result = block.load_own_state(state)
        except PoseBlockError as error:
            raise CustomizationFileError(f"{where}: pose block {name} weights are not pose weights: {error}") from error
        except RuntimeError as error:  # shapes that do not match the header's FeatureNeRF config
            raise CustomizationFileError(f"{where}: pose block {name} weights do not fit its FeatureNeRF "
                                         f"config: {error}") from error
        missing = [k for k in result.missing_keys if not k.startswith("block.")]
        if missing or result.unexpected_keys:
            raise CustomizationFileError(f"{where}: pose block {name} weights do not fit (missing {missing[:3]}, "
                                         f"unexpected {result.unexpected_keys[:3]})")
        # FeatureNeRF runs in float32 by design; the fusion acts on the block's tokens, in the block's dtype.
        block.fuse.to(block.block.norm1.weight.dtype)
    return by_name


def apply_customization(unet: nn.Module, customization: Customization, context: PoseContext | None = None,
                        *, where: str = "customization") -> PoseContext:
    """Install pose blocks on the customization's blocks of ``unet``, load their weights and the reference bank.

    Returns:
        the :class:`PoseContext` (mode ``"off"``; set ``target_cams`` and ``mode = "render"`` to use it).

    Raises:
        BackboneMismatchError: ``unet`` is not the backbone the customization was trained on.
        CustomizationFileError: pose blocks are already installed, or the weights do not fit.
    """
    c = customization
    if next(pose_blocks(unet), None) is not None:
        raise CustomizationFileError("the UNet already has pose blocks installed; remove_pose_blocks() first")
    check_backbone(c.backbone, unet, where)
    ctx = context or PoseContext()
    try:
        by_name = _install_and_load(unet, c, ctx, where)
    except BaseException:
        remove_pose_blocks(unet)  # a file that does not fit must leave the (shared) backbone plain
        raise
    ctx.references = {name: c.references[name].to(next(by_name[name].parameters()).device) for name in c.blocks}
    ctx.ref_cams = c.ref_cams
    ctx.mode = "off"
    return ctx
