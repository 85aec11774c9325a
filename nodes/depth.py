"""Depth nodes: monocular depth models from ComfyUI's model folders and their estimates as ``MVC_DEPTH``.

Files: the ``depth`` model key, registered here with ``models/depth`` and ``models/depthanything`` (the folder
kijai/ComfyUI-DepthAnythingV2 downloads its ``depth_anything_v2_*.safetensors`` to, so those files are listed
without copying), ``.safetensors`` only. A transformers folder (``config.json`` + ``model.safetensors``, e.g.
``models/depth/zoedepth-nyu-kitti/``) is listed by its weights file. The module is wrapped in a ComfyUI
``ModelPatcher``, so ComfyUI's model management places and offloads it.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mvcustom_core.depth import (DEPTH_SUFFIXES, DEPTH_VARIANTS, DepthModel, depth_preview, estimate_depth,
                                 load_depth_model, tiny_depth_model)

from ._common import Progress, blame, image_from_chw, image_to_chw, queue_check, require
from ._files import reading
from ._host import folder_paths, io, model_management, model_patcher, ui
from .backbone import HostedModule, model_files, resolve_model_file
from .types import Depth, DepthModelType

__all__ = ["DEPTH_NODES", "LoadDepthModel", "TinyDepthModel", "EstimateDepth", "register_depth_folder",
           "load_depth_module", "DEPTH_FOLDER", "KIND_TOOLTIP"]

CATEGORY = "MVCustom/depth"
DEPTH_FOLDER = "depth"
_SHARED_FOLDERS = ("depth", "depthanything")  # ours, and kijai/ComfyUI-DepthAnythingV2's download folder
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
KIND_TOOLTIP = ("Depth kinds: Depth Anything (V1, V2) gives disparity (relative inverse depth); ZoeDepth and the "
                "metric Depth Anything V2 (Hypersim, VKITTI) give metric depth in metres. Either is aligned to the "
                "scene by the DFR node (scale for metric, scale and shift for disparity).")


def register_depth_folder() -> None:
    """Register the ``depth`` model key (``models/depth``, ``models/depthanything``; safetensors only).

    An existing registration (another pack's, extra_model_paths.yaml entries) is kept and gets our folders added.
    """
    names = getattr(folder_paths, "folder_names_and_paths", None)
    if names is None:  # a host without model folders
        return
    models_dir = folder_paths.models_dir
    if DEPTH_FOLDER not in names:
        names[DEPTH_FOLDER] = ([], set(DEPTH_SUFFIXES))
    for sub in _SHARED_FOLDERS:
        path = os.path.join(models_dir, sub)
        if path not in folder_paths.get_folder_paths(DEPTH_FOLDER):
            folder_paths.add_model_folder_path(DEPTH_FOLDER, path)


def _hosted(model: DepthModel) -> DepthModel:
    """``model`` with a ComfyUI ``ModelPatcher`` in ``host`` (placement and offloading by ComfyUI)."""
    load_device, offload_device = model_management.get_torch_device(), model_management.unet_offload_device()
    model.host = model_patcher.ModelPatcher(HostedModule(model.module, offload_device), load_device=load_device,
                                            offload_device=offload_device)
    return model


def load_depth_module(node: type, input_name: str, model: Any) -> DepthModel:
    """The ``MVC_DEPTH_MODEL`` value, its module placed by ComfyUI's model management."""
    require(node, input_name, isinstance(model, DepthModel),
            f"must be an MVC_DEPTH_MODEL (MVCustom Load Depth Model), got {type(model).__name__}")
    if model.host is not None:
        model_management.load_models_gpu([model.host])
    return model


class LoadDepthModel(io.ComfyNode):
    """A depth model file from models/depth or models/depthanything."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        register_depth_folder()
        files = model_files(DEPTH_FOLDER)
        return io.Schema(
            node_id="MVC_LoadDepthModel",
            display_name="MVCustom Load Depth Model",
            category=CATEGORY,
            description=("Loads a monocular depth model, offline, into transformers' own classes: Depth Anything V2 "
                         "single files (depth_anything_v2_vits/vitb/vitl_fp32.safetensors, as kijai's "
                         "DepthAnythingV2 nodes keep them in models/depthanything; metric ones named 'hypersim' or "
                         "'vkitti'), or a transformers folder in models/depth (config.json + model.safetensors) of "
                         "ZoeDepth (Intel/zoedepth-nyu-kitti: the paper's model) or Depth Anything. "
                         ".safetensors only. " + KIND_TOOLTIP),
            inputs=[
                io.Combo.Input("model", options=files, default=files[0] if files else None,
                               tooltip=("Weights file in models/depth or models/depthanything; for a transformers "
                                        "folder pick its model.safetensors (its config.json is read beside it).")),
                io.Combo.Input("dtype", options=list(DTYPES), default="fp32",
                               tooltip="Weight dtype; fp16 visibly degrades Depth Anything (fp32 recommended)."),
                io.Combo.Input("variant", options=list(DEPTH_VARIANTS), default="auto", optional=True,
                               tooltip=("Which head a Depth Anything single file has; its tensors do not say. 'auto': "
                                        "the file name (metric with hypersim/indoor or vkitti/outdoor, as released; "
                                        "else relative). A renamed metric file read as relative gives inverted "
                                        "depth. Folders with config.json and ZoeDepth: 'auto'.")),
            ],
            outputs=[DepthModelType.Output("depth_model", tooltip="The depth model (MVC_DEPTH_MODEL). " + KIND_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(cls, model: str) -> bool | str:
        """Queue-time check of the name (ComfyUI does not check V3 combo values against the list)."""
        return queue_check(lambda: cls._path(model))

    @classmethod
    def _path(cls, model: str):
        register_depth_folder()
        return resolve_model_file(cls, "model", DEPTH_FOLDER, model)

    @classmethod
    def execute(cls, model: str, dtype: str, variant: str = "auto") -> io.NodeOutput:
        require(cls, "dtype", dtype in DTYPES, f"must be one of {list(DTYPES)}, got {dtype!r}")
        require(cls, "variant", variant in DEPTH_VARIANTS, f"must be one of {list(DEPTH_VARIANTS)}, got {variant!r}")
        path = cls._path(model)
        with reading(cls, "model", model, path, DEPTH_FOLDER, what="a depth model", arguments={"variant": "variant"}):
            loaded = load_depth_model(path, dtype=DTYPES[dtype], variant=variant, progress=Progress(1).callback)
        return io.NodeOutput(_hosted(loaded), ui=ui.PreviewText(f"{loaded.name}: gives {loaded.kind}"))


class TinyDepthModel(io.ComfyNode):
    """A tiny random depth model: weight-free, for trying graphs and tests."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_TinyDepthModel",
            display_name="MVCustom Tiny Depth Model (random)",
            category=CATEGORY,
            description=("A tiny randomly initialised Depth Anything (metric head) that needs no weight files. Its "
                         "'depth' is a smooth positive function of the picture, not depth: it is for trying graphs "
                         "and tests, not for results."),
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                                 tooltip="Seeds every weight; equal seeds give identical models.")],
            outputs=[DepthModelType.Output("depth_model", tooltip="The tiny depth model (gives metric depth).")],
        )

    @classmethod
    def execute(cls, seed: int) -> io.NodeOutput:
        return io.NodeOutput(_hosted(tiny_depth_model(int(seed))))


class EstimateDepth(io.ComfyNode):
    """Depth of each picture, with its kind."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_EstimateDepth",
            display_name="MVCustom Estimate Depth",
            category=CATEGORY,
            description=("Estimates the depth of each picture with a depth model. The MVC_DEPTH output keeps the "
                         "model's values and their kind (metric depth or disparity) for the DFR node, which aligns "
                         "them to the scene; the preview is the usual normalized near = bright picture. For DFR "
                         "give it the anchor frame (e.g. Image From Batch) to spare the other frames. " + KIND_TOOLTIP),
            inputs=[
                DepthModelType.Input("depth_model", tooltip="MVCustom Load Depth Model (or the tiny one)."),
                io.Image.Input("images", tooltip="Pictures (a batch: one depth each)."),
            ],
            outputs=[
                Depth.Output("depth", tooltip="Depth values with their kind (MVC_DEPTH), for the DFR node."),
                io.Image.Output("preview", tooltip=("Normalized depth picture, near = bright (the preprocessors' look; "
                                                    "black = no depth).")),
            ],
        )

    @classmethod
    def execute(cls, depth_model: Any, images: torch.Tensor) -> io.NodeOutput:
        model = load_depth_module(cls, "depth_model", depth_model)
        pictures = image_to_chw(cls, "images", images)
        with blame(cls, "images"):
            depth = estimate_depth(model, pictures, progress=Progress(pictures.shape[0]).callback)
        return io.NodeOutput(depth, image_from_chw(depth_preview(depth)),
                             ui=ui.PreviewText(f"{depth.kind} from {model.name}, {depth.batch} picture(s)"))


DEPTH_NODES: list[type[io.ComfyNode]] = [LoadDepthModel, TinyDepthModel, EstimateDepth]
