"""A small stand-in for the parts of ComfyUI that ``nodes/_host.py`` imports.

Signatures follow ComfyUI v0.3.64 (``comfy_api/latest/_io.py``, ``_ui.py``, ``folder_paths.py``) for
the arguments the pack uses, and unknown keyword arguments fail just as they do there, so a schema
that passes here does not break at load time in the real host (tier 3 checks that too).
"""

from __future__ import annotations

import importlib.machinery
import os
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch


# ---------------------------------------------------------------------------- comfy_api.latest.io
class _Input:
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,
                 lazy: bool = None, extra_dict=None):
        self.id, self.display_name, self.optional = id, display_name, optional
        self.tooltip, self.lazy = tooltip, lazy
        self.default = None

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


class _Output:
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None,
                 is_output_list=False):
        self.id, self.display_name, self.tooltip = id, display_name, tooltip
        self.is_output_list = is_output_list

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


class _WidgetInput(_Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy)
        self.default, self.socketless, self.force_input = default, socketless, force_input


class _IntInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 min=None, max=None, step=None, control_after_generate=None, display_mode=None,
                 socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, force_input)
        self.min, self.max, self.step = min, max, step
        self.control_after_generate = control_after_generate


class _FloatInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 min=None, max=None, step=None, round=None, display_mode=None, socketless=None,
                 force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, force_input)
        self.min, self.max, self.step, self.round = min, max, step, round


class _StringInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False,
                 placeholder=None, default=None, dynamic_prompts=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, force_input)
        self.multiline, self.placeholder = multiline, placeholder


class _BooleanInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 label_on=None, label_off=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, force_input)
        self.label_on, self.label_off = label_on, label_off


class _ComboInput(_WidgetInput):
    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None,
                 default=None, control_after_generate=None, upload=None, image_folder=None, remote=None,
                 socketless=None):
        if isinstance(options, type) and issubclass(options, Enum):
            options = [v.value for v in options]
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.options = options


def _comfytype(io_type: str, input_base=_Input):
    cls = type(io_type.title(), (), {"io_type": io_type})
    cls.Input = type("Input", (input_base,), {"Parent": cls})
    cls.Output = type("Output", (_Output,), {"Parent": cls})
    return cls


def Custom(io_type: str):
    return _comfytype(io_type)


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self):
        ids = [i.id for i in self.inputs or []] + [o.id for o in self.outputs or []]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.node_id}: input and output ids must be unique, got {ids}")


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand=None, block_execution=None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index):
        return self.args[index]


class ComfyNode:
    hidden = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.validate()
        return schema


def _build_io() -> types.ModuleType:
    io = types.ModuleType("comfy_api.latest.io")
    io.Custom, io.Hidden, io.Schema, io.NodeOutput, io.ComfyNode = Custom, Hidden, Schema, NodeOutput, ComfyNode
    io.UploadType = UploadType
    io.Int = _comfytype("INT", _IntInput)
    io.Float = _comfytype("FLOAT", _FloatInput)
    io.String = _comfytype("STRING", _StringInput)
    io.Boolean = _comfytype("BOOLEAN", _BooleanInput)
    io.Combo = _comfytype("COMBO", _ComboInput)
    for name, io_type in [("Image", "IMAGE"), ("Mask", "MASK"), ("Latent", "LATENT"), ("Model", "MODEL"),
                          ("Vae", "VAE"), ("Clip", "CLIP"), ("Conditioning", "CONDITIONING"),
                          ("AnyType", "*")]:
        setattr(io, name, _comfytype(io_type))
    return io


# ---------------------------------------------------------------------------- comfy_api.latest.ui
class PreviewImage:
    """Keeps the tensor instead of writing temp PNGs; ``as_dict`` has the real key."""

    def __init__(self, image, animated: bool = False, cls=None, **kwargs):
        self.image, self.animated = image, animated

    def as_dict(self):
        return {"images": [f"preview_{i}.png" for i in range(self.image.shape[0])],
                "animated": (self.animated,)}


class PreviewText:
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self):
        return {"text": (self.value,)}


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        return None

    @abstractmethod
    async def get_node_list(self) -> list:
        ...


# ---------------------------------------------------------------------------- folder_paths, comfy.*
@dataclass
class FolderState:
    input_dir: str
    output_dir: str
    temp_dir: str
    saved_prefixes: list = field(default_factory=list)


def _build_folder_paths(state: FolderState) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.get_input_directory = lambda: state.input_dir
    fp.get_output_directory = lambda: state.output_dir
    fp.get_temp_directory = lambda: state.temp_dir

    def get_annotated_filepath(name, default_dir=None):
        for tag, base in (("[output]", state.output_dir), ("[input]", state.input_dir),
                          ("[temp]", state.temp_dir)):
            if name.endswith(tag):
                return os.path.join(base, name[: -len(tag) - 1])
        return os.path.join(default_dir or state.input_dir, name)

    def get_save_image_path(filename_prefix, output_dir, image_width=0, image_height=0):
        subfolder = os.path.dirname(os.path.normpath(filename_prefix))
        filename = os.path.basename(os.path.normpath(filename_prefix))
        full = os.path.join(output_dir, subfolder)
        if os.path.commonpath((output_dir, os.path.abspath(full))) != output_dir:
            raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")
        os.makedirs(full, exist_ok=True)
        counters = [int(f[len(filename) + 1:].split("_")[0]) for f in os.listdir(full)
                    if f.startswith(filename + "_") and f[len(filename) + 1:].split("_")[0].isdigit()]
        state.saved_prefixes.append(filename_prefix)
        return full, filename, max(counters, default=0) + 1, subfolder, filename_prefix

    fp.get_annotated_filepath = get_annotated_filepath
    fp.exists_annotated_filepath = lambda name: os.path.exists(get_annotated_filepath(name))
    fp.get_save_image_path = get_save_image_path
    return fp


class InterruptProcessingException(Exception):
    pass


class ProgressBar:
    instances: list = []

    def __init__(self, total, node_id=None):
        self.total, self.current, self.previews = total, 0, []
        ProgressBar.instances.append(self)

    def update(self, value):
        self.current += value

    def update_absolute(self, value, total=None, preview=None):
        self.current = value
        if total is not None:
            self.total = total
        self.previews.append(preview)


class LatentPreviewer:
    """Stands in for ComfyUI's Latent2RGB / TAESD previewer: keeps the latents it was given."""

    def __init__(self, latent_format):
        self.latent_format, self.latents = latent_format, []

    def decode_latent_to_preview_image(self, preview_format, x0):
        self.latents.append(x0)
        return (preview_format, f"preview of {tuple(x0.shape)}", 512)


def _build_latent_preview() -> types.ModuleType:
    """``latent_preview.get_previewer``: a previewer when ``enabled`` (ComfyUI: ``--preview-method``), else None."""
    lp = types.ModuleType("latent_preview")
    lp.enabled, lp.made = False, []

    def get_previewer(device, latent_format):
        if not lp.enabled:
            return None
        lp.made.append(LatentPreviewer(latent_format))
        return lp.made[-1]

    lp.get_previewer = get_previewer
    return lp


class ModelPatcher:
    """Records its arguments and, like ComfyUI's, assigns ``model.device`` (at init and when loaded).

    ``clone()`` shares the model, as ComfyUI's does; ``load`` re-creates every tensor, as a move to another device
    (or ComfyUI's weight patching) does, so code that kept tensors from before a load would see stale ones.
    """

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
        self.parent = None
        if not hasattr(model, "device") or model.device is None:
            model.device = offload_device

    def load(self, device_to):
        self.model._apply(lambda t: t.to(device_to, copy=True))  # new tensors, as a move to another device makes
        self.model.device = device_to

    def clone(self):
        clone = ModelPatcher(self.model, self.load_device, self.offload_device, self.size)
        clone.parent = self
        return clone

    def model_dtype(self):
        return self.model.get_dtype()


class LowVramPatch:
    """Stands for ``comfy.model_patcher.LowVramPatch``: a weight patch ComfyUI applies per layer call (--novram)."""


class StateModule(torch.nn.Module):
    """Tensors registered under dotted names, as ComfyUI's own module trees name them (``input_blocks.1.0...``)."""

    def __init__(self, state: dict):
        super().__init__()
        for name, tensor in state.items():
            *path, leaf = name.split(".")
            owner = self
            for part in path:
                if part not in owner._modules:
                    owner.add_module(part, torch.nn.Module())
                owner = owner._modules[part]
            owner.register_parameter(leaf, torch.nn.Parameter(tensor.detach().clone(), requires_grad=False))


class SD15:
    """Stands for ``comfy.supported_models.SD15`` (what Load Checkpoint detects for SD1.x files); the pack reads
    only the class name."""


class ModelType(Enum):  # comfy.model_base.ModelType
    EPS = 1
    V_PREDICTION = 2


class BaseModel(torch.nn.Module):
    """What ``ModelPatcher.model`` is after Load Checkpoint: ``diffusion_model`` (LDM names), the detected family."""

    def __init__(self, diffusion_state: dict, model_config=None, model_type=ModelType.EPS):
        super().__init__()
        self.diffusion_model = StateModule(diffusion_state)
        self.model_config = model_config if model_config is not None else SD15()
        self.model_type = model_type
        self.manual_cast_dtype = None

    def get_dtype(self):
        return next(self.diffusion_model.parameters()).dtype


class CLIP:
    """Load Checkpoint's CLIP for SD1.x: ``cond_stage_model.clip_l.transformer.text_model.*`` and its patcher."""

    def __init__(self, text_state: dict, layer_idx=None):
        self.cond_stage_model = StateModule({f"clip_l.transformer.text_model.{k}": v for k, v in text_state.items()})
        self.patcher = ModelPatcher(self.cond_stage_model, torch.device("cpu"), torch.device("cpu"))
        self.layer_idx = layer_idx


class VAE:
    """Load Checkpoint's VAE: ``first_stage_model`` with LDM names, and its patcher."""

    def __init__(self, ldm_state: dict):
        self.first_stage_model = StateModule(ldm_state)
        self.patcher = ModelPatcher(self.first_stage_model, torch.device("cpu"), torch.device("cpu"))


def _build_comfy() -> dict[str, types.ModuleType]:
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.interrupt_requested = False

    def throw_exception_if_processing_interrupted():
        if mm.interrupt_requested:
            mm.interrupt_requested = False
            raise InterruptProcessingException()

    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.unet_dtype = lambda *args, **kwargs: torch.float32
    mm.vae_dtype = lambda *args, **kwargs: torch.float32

    def load_models_gpu(models, memory_required=0, **kwargs):
        for patcher in models:
            patcher.load(patcher.load_device)

    mm.load_models_gpu = load_models_gpu
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    patcher = types.ModuleType("comfy.model_patcher")
    patcher.ModelPatcher = ModelPatcher
    patcher.LowVramPatch = LowVramPatch
    formats = types.ModuleType("comfy.latent_formats")
    formats.SD15 = type("SD15", (), {"latent_channels": 4, "taesd_decoder_name": "taesd_decoder"})
    comfy.model_management, comfy.utils, comfy.model_patcher, comfy.latent_formats = mm, utils, patcher, formats
    return {"comfy": comfy, "comfy.model_management": mm, "comfy.utils": utils, "comfy.model_patcher": patcher,
            "comfy.latent_formats": formats}


def build_modules(state: FolderState) -> dict[str, types.ModuleType]:
    """All fake modules keyed by their import name, ready for ``sys.modules``."""
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.__path__ = []
    latest = types.ModuleType("comfy_api.latest")
    latest.__path__ = []
    latest.io = _build_io()
    latest.ui = types.ModuleType("comfy_api.latest.ui")
    latest.ui.PreviewImage, latest.ui.PreviewText = PreviewImage, PreviewText
    latest.ComfyExtension = ComfyExtension
    comfy_api.latest = latest
    modules = {"comfy_api": comfy_api, "comfy_api.latest": latest,
               "folder_paths": _build_folder_paths(state), "latent_preview": _build_latent_preview(), **_build_comfy()}
    for name, module in modules.items():
        # importlib.util.find_spec() on a module in sys.modules reads its __spec__.
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=hasattr(module, "__path__"))
    return modules

