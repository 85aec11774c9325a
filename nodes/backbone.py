"""Backbone nodes: SD1.5 checkpoint + AnimateDiff motion module (or the tiny random backbone) -> ``MVC_BACKBONE``.

Files come from ComfyUI's model folders: ``checkpoints`` for SD1.x single files, ``animatediff_models`` for motion
modules (registered here as AnimateDiff-Evolved does when it is not installed), and the pack's own ``mvcustom``
folder (customizations, and motion modules trained with ``scripts/train_backbone.py``). The ``mvcustom`` folder is
not added to ``animatediff_models``, so customization files never show up in AnimateDiff-Evolved's motion-model
list; Load Backbone and Apply Motion Module list the motion modules of both folders. The modules are wrapped in
ComfyUI ``ModelPatcher`` objects, so ComfyUI's model management loads and offloads them; nodes run on per-run views
of them (:func:`nodes.bridge.prepare_backbone`), so the loaded modules are never patched. A MODEL from Load
Checkpoint becomes an ``MVC_BACKBONE`` through ``MVC_ApplyMotionModule`` (``nodes/bridge.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mvcustom_core.backbone.dense_attention import set_motion_attention
from mvcustom_core.backbone.loading import Backbone, build_backbone, load_sd15_checkpoint
from mvcustom_core.backbone.module_view import module_view
from mvcustom_core.backbone.motion_module import load_motion_module, trained_attention_window
from mvcustom_core.backbone.text import load_tokenizer
from mvcustom_core.backbone.tiny import tiny_backbone
from mvcustom_core.customization.file_format import is_customization_file

from ._common import Progress, blame, queue_check, require
from ._files import folder_label, model_roots, read_path, reading
from ._host import comfy_utils, folder_paths, io, model_management, model_patcher
from .types import Backbone as BackboneType

__all__ = ["BACKBONE_NODES", "MVCBackbone", "HostedModule", "LoadBackbone", "TinyBackbone", "register_model_folders",
           "model_files", "motion_module_files", "resolve_model_file", "comfy_tokenizer", "attention_window",
           "MOTION_FOLDER", "PACK_FOLDER", "MOTION_FOLDERS", "DTYPES", "CATEGORY", "AUTO_WINDOW", "WINDOW_TOOLTIP"]

CATEGORY = "MVCustom/backbone"
MOTION_FOLDER = "animatediff_models"
PACK_FOLDER = "mvcustom"
MOTION_FOLDERS = (MOTION_FOLDER, PACK_FOLDER)  # where motion modules are looked for, in this order
DTYPES = {"auto": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
AUTO_WINDOW, FULL_WINDOW = -1, 0  # the window input's two special values (0 = full, as saved workflows store it)
_WINDOW_CHOICES = (
    "1 = temporal: each pixel attends to the same pixel in every frame (AnimateDiff). Odd k >= 3 = window k: dense "
    "spatio-temporal attention over all frames within a k x k spatial window (MVCustom Sec. 3.3, trained "
    "progressively in stage 0). 0 = full: dense attention over all frames and positions. Dense attention (0 or "
    "k >= 3) on a stock AnimateDiff module is untrained and changes its output: MVCustom trains it first.")
WINDOW_TOOLTIP = ("Attention of the motion modules. -1 = auto (default): what the motion-module file was trained "
                   "with (the window scripts/train_backbone.py records in it); stock AnimateDiff v1/v2/v3 files: "
                   "their own temporal attention. " + _WINDOW_CHOICES)
TINY_WINDOW_TOOLTIP = ("Attention of the random motion modules. -1 = auto (default): temporal, as for a stock "
                        "AnimateDiff module. " + _WINDOW_CHOICES)


@dataclass
class MVCBackbone:
    """What an ``MVC_BACKBONE`` socket carries from the pack's own loaders (Load Backbone, Tiny Backbone).

    The modules are never patched: each node run works on views of them (:meth:`modules`) after ComfyUI's model
    management has placed the ones it needs (:meth:`patchers`); see :func:`nodes.bridge.prepare_backbone`.

    Attributes:
        backbone: the core :class:`~mvcustom_core.backbone.loading.Backbone` (``unet`` is a plain
            ``UNetMotionModel``: the motion modules' own temporal attention).
        patchers_by_part: ComfyUI ``ModelPatcher`` per module (``"unet"``, ``"vae"``, ``"text_encoder"``), each
            holding a :class:`HostedModule` around the module.
        window: the attention each run's UNet view gets: 1 = temporal (the modules' own processors), k > 1 = dense
            attention in a k x k window, ``None`` = full dense attention.
        dtype: floating dtype of the UNet.
        source: what it was loaded from, for display.
    """

    backbone: Backbone
    patchers_by_part: dict[str, Any]
    window: int | None
    dtype: torch.dtype
    source: str = ""

    @property
    def tokenizer(self) -> Any:
        return self.backbone.tokenizer

    def patchers(self, parts) -> list[Any]:
        """The ``ModelPatcher`` s to load before :meth:`modules` (only the parts a node runs)."""
        return [self.patchers_by_part[p] for p in parts]

    def modules(self, node: type, input_name: str, parts, dtype: torch.dtype | None) -> dict[str, Any]:
        """Per-run views of the asked modules (cast to ``dtype`` when given), the motion attention on the UNet's."""
        out: dict[str, Any] = {"tokenizer": self.backbone.tokenizer}
        for part in parts:
            out[part] = module_view(getattr(self.backbone, part), dtype)
        if "unet" in out:
            set_motion_attention(out["unet"], self.window)
        return out


class HostedModule(torch.nn.Module):
    """One diffusers / transformers module as ComfyUI's ``ModelPatcher`` wants it.

    The patcher records placement by assigning ``model.device``, a read-only property on diffusers and transformers
    models; this holder keeps a plain ``device`` attribute and the module as its only child (``.module``).
    """

    def __init__(self, module: torch.nn.Module, device: torch.device):
        super().__init__()
        self.module = module
        self.device = device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


def attention_window(node: type, choice: int, trained: int | None) -> int | None:
    """The node's ``window`` input as a motion-module window: -1 = ``trained`` (the file's), 0 = full (None)."""
    choice = int(choice)
    require(node, "window", choice >= AUTO_WINDOW,
            f"must be -1 (auto), 0 (full), 1 (temporal) or a window k >= 2, got {choice}")
    if choice == AUTO_WINDOW:
        return trained
    return None if choice == FULL_WINDOW else choice


def _wrap(backbone: Backbone, window: int | None, dtype: torch.dtype, source: str) -> MVCBackbone:
    patcher = model_patcher.ModelPatcher
    load_device, offload_device = model_management.get_torch_device(), model_management.unet_offload_device()
    patchers = {name: patcher(HostedModule(getattr(backbone, name), offload_device), load_device=load_device,
                              offload_device=offload_device)
                for name in ("unet", "vae", "text_encoder")}
    return MVCBackbone(backbone, patchers, window, dtype, source)


def register_model_folders() -> None:
    """Register ``animatediff_models`` (``models/animatediff_models``, as AnimateDiff-Evolved does) and the pack's
    own ``mvcustom`` folder (``models/mvcustom``, safetensors only), each only where not registered yet.

    Existing registrations (AnimateDiff-Evolved's, extra_model_paths.yaml entries) are kept, and neither folder
    is added to the other's key.
    """
    names = getattr(folder_paths, "folder_names_and_paths", None)
    if names is None:  # a host without model folders (the tier-2 fake)
        return
    models_dir = folder_paths.models_dir
    folders = {MOTION_FOLDER: set(folder_paths.supported_pt_extensions), PACK_FOLDER: {".safetensors"}}
    for key, extensions in folders.items():
        if key not in names:
            names[key] = ([os.path.join(models_dir, key)], extensions)


def model_files(key: str) -> list[str]:
    register_model_folders()
    lister = getattr(folder_paths, "get_filename_list", None)
    if lister is None:  # a host without model folders (the tier-2 fake)
        return []
    try:
        return list(lister(key))
    except KeyError:
        return []


def motion_module_files() -> list[str]:
    """Motion modules to offer: ``animatediff_models``'s files, then the ``mvcustom`` folder's that are not
    customizations (a name in both resolves to the ``animatediff_models`` file, as :data:`MOTION_FOLDERS` orders
    them for :func:`resolve_model_file`)."""
    listed = model_files(MOTION_FOLDER)
    own = [name for name in model_files(PACK_FOLDER) if name not in listed]
    roots = model_roots(PACK_FOLDER)
    return listed + [name for name in own
                     if not any(is_customization_file(os.path.join(root, name)) for root in roots)]


def resolve_model_file(node: type, input_name: str, key: str | tuple[str, ...], name: str) -> Path:
    register_model_folders()
    return read_path(node, input_name, name, key, what="model file",
                     hint=f"pick one from the list; files go into ComfyUI's {folder_label(key)} folder")


def _dtype(choice: str, default) -> torch.dtype:
    return DTYPES[choice] if DTYPES[choice] is not None else default()


def comfy_tokenizer():
    """ComfyUI's own SD1.x CLIP tokenizer files (``comfy/sd1_tokenizer``), if present."""
    source = getattr(comfy_utils, "__file__", None)
    if not source:
        return None
    folder = Path(source).parent / "sd1_tokenizer"
    return load_tokenizer(folder) if (folder / "vocab.json").is_file() else None


class LoadBackbone(io.ComfyNode):
    """SD1.5 checkpoint + AnimateDiff motion module -> a UNetMotionModel with dense attention."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        checkpoints = model_files("checkpoints")
        motions = motion_module_files()
        return io.Schema(
            node_id="MVC_LoadBackbone",
            display_name="MVCustom Load Backbone",
            category=CATEGORY,
            description=("Loads an SD1.x single-file checkpoint (models/checkpoints) and an AnimateDiff motion module "
                         "(models/animatediff_models or models/mvcustom; v1/v2/v3, original or diffusers layout, "
                         "or a module trained with scripts/train_backbone.py) into one video UNet. Its motion modules "
                         "run the attention they were trained with unless 'window' says otherwise."),
            inputs=[
                io.Combo.Input("checkpoint", options=checkpoints, default=checkpoints[0] if checkpoints else None,
                               tooltip="SD1.x single-file checkpoint (.safetensors or .ckpt) in models/checkpoints."),
                io.Combo.Input("motion_module", options=motions, default=motions[0] if motions else None,
                               tooltip="AnimateDiff motion module in models/animatediff_models or models/mvcustom "
                                       "(e.g. mm_sd_v15_v2.ckpt, v3_sd15_mm.ckpt)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Weight dtype; auto = ComfyUI's choice for this device (UNet/text encoder "
                                       "as for a diffusion model, VAE as for a VAE)."),
                io.Int.Input("window", default=AUTO_WINDOW, min=AUTO_WINDOW, max=256, tooltip=WINDOW_TOOLTIP),
            ],
            outputs=[BackboneType.Output("backbone", tooltip="The loaded backbone (MVC_BACKBONE).")],
        )

    @classmethod
    def validate_inputs(cls, checkpoint: str, motion_module: str) -> bool | str:
        """Queue-time check of both names (ComfyUI does not check V3 combo values against the list)."""
        return queue_check(lambda: (resolve_model_file(cls, "checkpoint", "checkpoints", checkpoint),
                                    resolve_model_file(cls, "motion_module", MOTION_FOLDERS, motion_module)))

    @classmethod
    def execute(cls, checkpoint: str, motion_module: str, dtype: str, window: int) -> io.NodeOutput:
        require(cls, "dtype", dtype in DTYPES, f"must be one of {list(DTYPES)}, got {dtype!r}")
        attention_window(cls, window, None)  # a bad choice is refused before any file is read
        checkpoint_path = resolve_model_file(cls, "checkpoint", "checkpoints", checkpoint)
        motion_path = resolve_model_file(cls, "motion_module", MOTION_FOLDERS, motion_module)
        unet_dtype = _dtype(dtype, model_management.unet_dtype)
        vae_dtype = _dtype(dtype, model_management.vae_dtype)
        # One bar per file (tensors read); each update is also an interrupt checkpoint. Weights made under ComfyUI's
        # inference mode still train: runs work on views whose tensors are ordinary aliases (nodes/bridge.py).
        with reading(cls, "checkpoint", checkpoint, checkpoint_path, "checkpoints", what="an SD1.x checkpoint"):
            components = load_sd15_checkpoint(checkpoint_path, dtype=unet_dtype, progress=Progress(1).callback)
        with reading(cls, "motion_module", motion_module, motion_path, MOTION_FOLDERS, what="a motion module"):
            adapter = load_motion_module(motion_path, dtype=unet_dtype, progress=Progress(1).callback)
            k = attention_window(cls, window, trained_attention_window(motion_path))
        with blame(cls, "motion_module"):
            unet = build_backbone(components, adapter)
        components.vae.to(vae_dtype)
        backbone = Backbone(unet=unet, vae=components.vae, text_encoder=components.text_encoder,
                            tokenizer=comfy_tokenizer())
        return io.NodeOutput(_wrap(backbone, k, unet_dtype, f"{checkpoint} + {motion_module}"))


class TinyBackbone(io.ComfyNode):
    """The tiny random backbone: a complete, weight-free stand-in for demos and tests."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_TinyBackbone",
            display_name="MVCustom Tiny Backbone (random)",
            category=CATEGORY,
            description=("A tiny randomly initialised SD1.x-shaped backbone (UNet, motion module, VAE, CLIP text "
                         "encoder and tokenizer) that needs no weight files. Its pictures are noise: it is for "
                         "trying graphs and tests, not for results."),
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seeds every weight; equal seeds give identical models."),
                io.Int.Input("window", default=AUTO_WINDOW, min=AUTO_WINDOW, max=256, tooltip=TINY_WINDOW_TOOLTIP),
            ],
            outputs=[BackboneType.Output("backbone", tooltip="The tiny backbone (MVC_BACKBONE), float32.")],
        )

    @classmethod
    def execute(cls, seed: int, window: int) -> io.NodeOutput:
        k = attention_window(cls, window, 1)  # the random module stands for a stock one: temporal
        backbone = tiny_backbone(seed=int(seed))
        return io.NodeOutput(_wrap(backbone, k, torch.float32, f"tiny (seed {int(seed)})"))


BACKBONE_NODES: list[type[io.ComfyNode]] = [LoadBackbone, TinyBackbone]
