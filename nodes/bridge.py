"""ComfyUI's MODEL / CLIP / VAE as MVCustom modules, and the per-run modules every node runs on.

Load Checkpoint (and any LoRA Loader after it) leaves the weights in ComfyUI's own classes (LDM ``UNetModel``,
``comfy.clip_model.CLIPTextModel``, LDM ``AutoencoderKL``). After ComfyUI's model management has loaded them
(weight patches such as LoRAs applied to the tensors), this module builds the core's diffusers /
transformers modules *over those tensors*: the core's LDM key tables name every tensor, shapes agree, and
nothing is copied unless a dtype must change (see docs/architecture.md, "ComfyUI's models as core modules").
The method's code (pose blocks, dense attention, DFR hooks, the sampler, training) then runs unchanged.

Every run gets views (:func:`mvcustom_core.backbone.module_view.module_view`): pose blocks, the subject token,
dense attention and gradient flags are installed on the run's own module tree, never on a model that other
graphs share.

Nodes: ``MVC_ApplyMotionModule`` (MODEL + an AnimateDiff motion module from ``animatediff_models`` ->
``MVC_BACKBONE``). Everything else here serves the nodes in ``backbone_codecs``, ``customization`` and
``inference`` through :func:`prepare_backbone`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Iterable

import torch
from torch import nn

from mvcustom_core.backbone.dense_attention import set_motion_attention
from mvcustom_core.backbone.ldm_keys import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX
from mvcustom_core.backbone.loading import (Backbone, SD15Components, build_backbone, sd15_modules_from_state,
                                            shipped_config)
from mvcustom_core.backbone.module_view import module_view
from mvcustom_core.backbone.motion_module import load_motion_module, trained_attention_window
from mvcustom_core.memory import MAX_WORKSPACE
from mvcustom_core.memory_estimate import unet_activation_bytes, vae_decode_frame_bytes

from ._common import NodeInputError, Progress, blame, queue_check, require
from ._files import reading
from ._host import io, model_management, model_patcher
from .backbone import (AUTO_WINDOW, CATEGORY, MOTION_FOLDERS, WINDOW_TOOLTIP, HostedModule, MVCBackbone,
                       attention_window, comfy_tokenizer, motion_module_files, resolve_model_file)
from .types import Backbone as BackboneType

__all__ = ["BRIDGE_NODES", "ApplyMotionModule", "ModelBackbone", "prepare_backbone", "unet_view",
           "text_encoder_view", "vae_view", "unet_memory", "decode_memory", "warn_ignored_conditioning", "PARTS"]

log = logging.getLogger(__name__)
PARTS = ("unet", "vae", "text_encoder")
_CLIP_L = "clip_l.transformer.text_model."  # comfy/sd1_clip.py: SD1ClipModel.clip_l -> SDClipModel.transformer


# ------------------------------------------------------------------------------ ComfyUI objects -> modules
def unet_view(model: Any, dtype: torch.dtype | None = None) -> nn.Module:
    """diffusers ``UNet2DConditionModel`` over a loaded MODEL's (LoRA-patched) UNet tensors.

    ``model`` is a ComfyUI ``ModelPatcher`` already loaded by ``load_models_gpu``; its LDM
    ``diffusion_model`` state names are the checkpoint's minus ``model.diffusion_model.``.
    """
    state = {UNET_PREFIX + k: v for k, v in model.model.diffusion_model.state_dict().items()}
    return sd15_modules_from_state(state, parts=["unet"], name="MODEL", dtype=dtype).unet


def text_encoder_view(clip: Any, dtype: torch.dtype | None = None) -> nn.Module:
    """transformers ``CLIPTextModel`` over a loaded CLIP's text tower (ComfyUI names it like transformers)."""
    state = {CLIP_PREFIX + k[len(_CLIP_L):]: v for k, v in clip.cond_stage_model.state_dict().items()
             if k.startswith(_CLIP_L)}
    return sd15_modules_from_state(state, parts=["text_encoder"], name="CLIP", dtype=dtype).text_encoder


def vae_view(vae: Any, dtype: torch.dtype | None = None) -> nn.Module:
    """diffusers ``AutoencoderKL`` over a loaded VAE (LDM names; 1x1-conv attention projections as views)."""
    state = {VAE_PREFIX + k: v for k, v in vae.first_stage_model.state_dict().items()}
    return sd15_modules_from_state(state, parts=["vae"], name="VAE", dtype=dtype).vae


def _compute_dtype(model: Any) -> torch.dtype:
    """The dtype ComfyUI computes the UNet in (weights stored in fp8 are cast to it per layer)."""
    base = model.model
    return getattr(base, "manual_cast_dtype", None) or model.model_dtype()


_OPTION_PATCHES = ("model_function_wrapper", "sampler_cfg_function", "sampler_pre_cfg_function",
                   "sampler_post_cfg_function", "sampler_calc_cond_batch_function")


def _patches_outside_weights(model: Any) -> list[str]:
    """Patches of a MODEL that change ComfyUI's own forward or sampling, not its weights (the bridge reads the
    weights only): object patches, attention / block patches, CFG functions, wrappers, weight wrappers."""
    options = getattr(model, "model_options", {}) or {}
    transformer = options.get("transformer_options", {}) or {}
    found = [f"object patch {name}" for name in getattr(model, "object_patches", {}) or {}]
    found += [f"transformer_options['{k}']" for k in ("patches", "patches_replace") if transformer.get(k)]
    found += [k for k in _OPTION_PATCHES if options.get(k)]
    found += [f"{kind} wrapper" for kind, by_key in (getattr(model, "wrappers", {}) or {}).items()
              if any(by_key.values())]
    wrapped = [key for key, functions in (getattr(model, "weight_wrapper_patches", {}) or {}).items() if functions]
    if wrapped:  # functions of the weights at call time, e.g. the adapters of ComfyUI's Train LoRA node
        found.append(f"weight wrappers on {len(wrapped)} weight{'s' if len(wrapped) > 1 else ''}")
    return found


# What CLIP Text Encode puts beside SD1.5's text states without an instruction in it (the pooled output).
_INERT_CONDITIONING = ("pooled_output",)


def warn_ignored_conditioning(node: type, input_name: str, conditioning: Any) -> None:
    """Name in a warning the options of a CONDITIONING the MVCustom nodes do not apply (ControlNet, hooks, area,
    mask, strength, timestep range ...): they read the prompt's text states only."""
    entry = conditioning[0] if isinstance(conditioning, (list, tuple)) and conditioning else None
    options = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 and isinstance(entry[1], dict) else {}
    ignored = sorted(k for k, v in options.items() if k not in _INERT_CONDITIONING and v is not None)
    if ignored:
        log.warning("%s: input '%s' carries %s, which the MVCustom nodes do not apply (they read the prompt's text "
                    "states only)", node.define_schema().display_name, input_name, ", ".join(ignored))


def _check_sd15_model(node: type, input_name: str, model: Any) -> None:
    base = getattr(model, "model", None)
    require(node, input_name, base is not None and hasattr(base, "diffusion_model"),
            f"must be a MODEL (from Load Checkpoint), got {type(model).__name__}")
    family = type(getattr(base, "model_config", None)).__name__
    require(node, input_name, family == "SD15",
            f"is a {family} model; AnimateDiff motion modules and MVCustom need an SD1.5 checkpoint (or a "
            "fine-tune of it)")
    kind = getattr(getattr(base, "model_type", None), "name", "EPS")
    require(node, input_name, kind == "EPS", f"predicts {kind}; MVCustom samples epsilon-prediction SD1.5 models")


# ------------------------------------------------------------------------------ the MVC_BACKBONE of a MODEL
@dataclass
class ModelBackbone:
    """What ``MVC_ApplyMotionModule`` puts on an ``MVC_BACKBONE`` socket.

    Attributes:
        model: a clone of the MODEL input (ComfyUI ``ModelPatcher``; its weight patches, e.g. LoRAs, are applied
            by ComfyUI whenever it is loaded).
        motion: ``ModelPatcher`` holding the ``MotionAdapter`` (:class:`~nodes.backbone.HostedModule`).
        window: the attention each run's UNet view gets: 1 = temporal (the motion modules' own), k > 1 = dense
            attention in a k x k window, ``None`` = full dense attention.
        dtype: the UNet's compute dtype (the motion adapter's dtype).
        source: what it was made from, for display.
    """

    model: Any
    motion: Any
    window: int | None
    dtype: torch.dtype
    source: str = ""

    def patchers(self, parts: Iterable[str]) -> list[Any]:
        return [self.model, self.motion] if "unet" in parts else []

    def modules(self, node: type, input_name: str, parts: Iterable[str], dtype: torch.dtype | None) -> dict:
        with blame(node, input_name):
            unet = unet_view(self.model, dtype or self.dtype)
            adapter = module_view(self.motion.model.module, dtype)
            video = build_backbone(SD15Components(unet, None, None), adapter)
        set_motion_attention(video, self.window)
        return {"unet": video}


class _PlainBackbone:
    """A core :class:`Backbone` (scripts, tests): its modules as they are, viewed per run, nothing to load."""

    def __init__(self, backbone: Any):
        self.backbone = backbone

    def patchers(self, parts: Iterable[str]) -> list[Any]:
        return []

    def modules(self, node: type, input_name: str, parts: Iterable[str], dtype: torch.dtype | None) -> dict:
        out = {}
        for part in parts:
            module = getattr(self.backbone, part, None)
            require(node, input_name, isinstance(module, nn.Module), f"has no {part.replace('_', ' ')}")
            out[part] = module_view(module, dtype)
        out["tokenizer"] = getattr(self.backbone, "tokenizer", None)
        return out


def _source(node: type, input_name: str, value: Any, parts: Iterable[str]) -> Any:
    if isinstance(value, (ModelBackbone, MVCBackbone)):
        return value
    if any(isinstance(getattr(value, p, None), nn.Module) for p in parts):
        return _PlainBackbone(value)
    raise NodeInputError(node, input_name, f"must be an MVC_BACKBONE (Load Backbone, Tiny Backbone or Apply Motion "
                                           f"Module), got {type(value).__name__}")


_OWN_PART_HINTS = {"text_encoder": ("CLIP", "encode prompts with CLIP Text Encode and the checkpoint's CLIP"),
                   "vae": ("VAE", "decode with VAE Decode and the checkpoint's VAE")}


def _refuse_missing_parts(node: type, input_name: str, source: Any, parts: Iterable[str]) -> None:
    """A MODEL-made backbone has only a UNet: name the input that can supply the rest (``clip``, ``vae``) when
    the node has one, else say which standard node does the job."""
    if not isinstance(source, ModelBackbone):
        return
    for part in parts:
        if part == "unet":
            continue
        host_type, hint = _OWN_PART_HINTS[part]
        own_input = host_type.lower()
        if own_input in _inputs_of(node):
            raise NodeInputError(node, own_input, f"must be connected: the backbone is a MODEL with a motion module "
                                                  f"and has no {host_type} of its own (connect the checkpoint's)")
        raise NodeInputError(node, input_name, f"has no {host_type} of its own (it is a MODEL with a motion "
                                               f"module): {hint}")


def _inputs_of(node: type) -> set[str]:
    return {i.id for i in node.define_schema().inputs or []}


# ------------------------------------------------------------------------------ memory_required
def _held_module(value: Any, part: str) -> nn.Module | None:
    module = getattr(getattr(value, "backbone", value), part, None)
    return module if isinstance(module, nn.Module) else None


def unet_memory(value: Any, rows: int, latent_size: tuple[int, int]) -> int:
    """Bytes a UNet call of ``rows`` rows (CFG branches x frames) needs beyond the weights, before anything is
    loaded: the core's activation estimate (``memory_estimate.unet_activation_bytes``, from the UNet's config)
    plus one workspace for the chunked ops (FeatureNeRF, DFR, CLC, dense attention)."""
    if isinstance(value, ModelBackbone):  # an SD1.5 MODEL (checked by Apply Motion Module): the shipped config
        unet, dtype = SimpleNamespace(config=SimpleNamespace(**shipped_config("sd15/unet"))), value.dtype
    else:
        unet = _held_module(value, "unet")
        if unet is None:
            return 0
        dtype = next(unet.parameters()).dtype
    return unet_activation_bytes(unet, rows, latent_size, dtype) + MAX_WORKSPACE


def decode_memory(value: Any, latents: torch.Tensor) -> int:
    """Bytes decoding ``latents [F, 4, h, w]`` needs beyond the VAE's weights (every frame at once; the decode
    then chunks to what is free), from the core's per-frame estimate."""
    vae = _held_module(value, "vae")
    if vae is None:
        return 0
    h, w = latents.shape[-2:]
    return latents.shape[0] * vae_decode_frame_bytes(vae, (8 * h, 8 * w), next(vae.parameters()).dtype)


def _load_patched(node: type, patchers: list[Any], memory_required: int) -> None:
    """Place ``patchers`` with every weight patch (LoRAs) applied to the tensors the views are built over.

    ``force_full_load`` does that, except under ComfyUI's ``--novram``: it then loads nothing and leaves weight
    patches to per-layer calls (``LowVramPatch``) that a view never makes, so the views would run without the
    LoRAs. Such patchers are loaded again with ``force_patch_weights`` (as ComfyUI's checkpoint saving does), which
    patches the weights where they are (the CPU); the node then runs there.
    """
    model_management.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)
    per_call = [p for p in patchers if _patched_per_call(p)]
    if per_call:
        log.warning("%s: ComfyUI keeps the model's weights off the device (--novram) and patches them per layer; "
                    "MVCustom runs on the CPU with the patches applied to the weights",
                    node.define_schema().display_name)
        model_management.load_models_gpu(per_call, force_full_load=True, force_patch_weights=True)


def _patched_per_call(patcher: Any) -> bool:
    """Whether ComfyUI left a weight patch of ``patcher`` to be applied at call time instead of in the weights."""
    return any(isinstance(f, model_patcher.LowVramPatch) for m in patcher.model.modules()
               for f in (*getattr(m, "weight_function", ()), *getattr(m, "bias_function", ())))


def prepare_backbone(node: type, value: Any, parts: Iterable[str], *, input_name: str = "backbone",
                     clip: Any = None, vae: Any = None, dtype: torch.dtype | None = None,
                     memory_required: int = 0) -> Backbone:
    """The modules one node run needs, loaded through ComfyUI's model management, as per-run views.

    Args:
        node, input_name: for error messages (the node class and its backbone input).
        value: an ``MVC_BACKBONE`` (pack backbone or :class:`ModelBackbone`), or a core ``Backbone``.
        parts: which of ``"unet"``, ``"vae"``, ``"text_encoder"`` the node runs; only these are loaded.
        clip, vae: ComfyUI CLIP / VAE objects that replace the backbone's own text encoder / VAE.
        dtype: cast the views to this dtype (training needs float32); None keeps the loaded dtype (no copy).
        memory_required: activation memory (bytes) the node needs on top of the weights; ComfyUI frees or
            offloads other models to make room for it.

    Returns:
        a core :class:`Backbone` whose modules are this run's own (dense attention installed on the UNet);
        modules not asked for are ``None``. The tokenizer is ``None`` when none is known.
    """
    parts = tuple(parts)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; expected some of {PARTS}")
    own = [p for p in parts if not (p == "text_encoder" and clip is not None or p == "vae" and vae is not None)]
    source = _source(node, input_name, value, own) if own else _PlainBackbone(None)  # all from clip / vae
    _refuse_missing_parts(node, input_name, source, own)
    patchers = list(source.patchers(own))
    if clip is not None and "text_encoder" in parts:
        require(node, "clip", hasattr(clip, "patcher") and hasattr(clip, "cond_stage_model"),
                f"must be a CLIP (from Load Checkpoint), got {type(clip).__name__}")
        patchers.append(clip.patcher)
    if vae is not None and "vae" in parts:
        require(node, "vae", hasattr(vae, "patcher") and hasattr(vae, "first_stage_model"),
                f"must be a VAE (from Load Checkpoint), got {type(vae).__name__}")
        patchers.append(vae.patcher)
    if patchers:
        _load_patched(node, patchers, int(memory_required))
    modules = source.modules(node, input_name, own, dtype)
    tokenizer = modules.pop("tokenizer", None)
    if clip is not None and "text_encoder" in parts:
        with blame(node, "clip"):
            modules["text_encoder"] = text_encoder_view(clip, dtype)
        tokenizer = comfy_tokenizer()
    if vae is not None and "vae" in parts:
        with blame(node, "vae"):
            modules["vae"] = vae_view(vae, dtype)
    return Backbone(unet=modules.get("unet"), vae=modules.get("vae"), text_encoder=modules.get("text_encoder"),
                    tokenizer=tokenizer)


# ------------------------------------------------------------------------------ node
class ApplyMotionModule(io.ComfyNode):
    """A ComfyUI MODEL (Load Checkpoint, LoRA Loaders ...) + an AnimateDiff motion module -> ``MVC_BACKBONE``."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        motions = motion_module_files()
        return io.Schema(
            node_id="MVC_ApplyMotionModule",
            display_name="MVCustom Apply Motion Module",
            category=CATEGORY,
            description=("Adds an AnimateDiff motion module (models/animatediff_models) to an SD1.5 MODEL from "
                         "Load Checkpoint, after any LoRA Loaders, for the MVCustom Sampler, Train "
                         "Customization and Depth-Aware Feature Rendering. The MODEL's weights (LoRAs included) "
                         "are used in place, not read again or copied; encode prompts with CLIP Text Encode and "
                         "decode with VAE Decode using the same checkpoint's CLIP and VAE."),
            inputs=[
                io.Model.Input("model", tooltip="SD1.5 MODEL (Load Checkpoint, optionally through LoRA Loaders)."),
                io.Combo.Input("motion_module", options=motions, default=motions[0] if motions else None,
                               tooltip="AnimateDiff motion module in models/animatediff_models (mm_sd_v15_v2.ckpt, "
                                       "v3_sd15_mm.ckpt) or models/mvcustom (one trained with "
                                       "scripts/train_backbone.py)."),
                io.Int.Input("window", default=AUTO_WINDOW, min=AUTO_WINDOW, max=256, tooltip=WINDOW_TOOLTIP),
            ],
            outputs=[BackboneType.Output("backbone", tooltip="The MODEL with the motion module (MVC_BACKBONE).")],
        )

    @classmethod
    def validate_inputs(cls, motion_module: str) -> bool | str:
        """Queue-time check of the name (ComfyUI does not check V3 combo values against the list)."""
        return queue_check(lambda: resolve_model_file(cls, "motion_module", MOTION_FOLDERS, motion_module))

    @classmethod
    def execute(cls, model: Any, motion_module: str, window: int) -> io.NodeOutput:
        attention_window(cls, window, None)  # a bad choice is refused before the file is read
        _check_sd15_model(cls, "model", model)
        path = resolve_model_file(cls, "motion_module", MOTION_FOLDERS, motion_module)
        dtype = _compute_dtype(model)
        with reading(cls, "motion_module", motion_module, path, MOTION_FOLDERS, what="a motion module"):
            adapter = load_motion_module(path, dtype=dtype, progress=Progress(1).callback)
            k = attention_window(cls, window, trained_attention_window(path))
        ignored = _patches_outside_weights(model)
        if ignored:
            log.warning("%s: the MODEL carries patches that change ComfyUI's own sampling, not its weights; the "
                        "MVCustom nodes run without them: %s", cls.define_schema().display_name, ", ".join(ignored))
        hosted = model_patcher.ModelPatcher(HostedModule(adapter, model.offload_device), load_device=model.load_device,
                                            offload_device=model.offload_device)
        return io.NodeOutput(ModelBackbone(model.clone(), hosted, k, dtype, f"MODEL + {motion_module}"))


BRIDGE_NODES: list[type[io.ComfyNode]] = [ApplyMotionModule]
