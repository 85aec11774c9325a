"""Offline loading of monocular depth models into transformers' own classes.

Supported files (``.safetensors`` only: nothing is unpickled, nothing is downloaded):

* Depth Anything V2 single files in the original layout (``depth_anything_v2_vit{s,b,l}_fp32.safetensors``,
  metric ``depth_anything_v2_metric_{hypersim,vkitti}_vitl_fp32.safetensors``), converted into
  ``DepthAnythingForDepthEstimation`` with the pack's shipped config for their size
  (:mod:`mvcustom_core.depth.layouts`).
* transformers folders (``config.json`` + ``model.safetensors``) of Depth Anything (V1, V2, metric) and ZoeDepth
  (``Intel/zoedepth-nyu``, ``-kitti``, ``-nyu-kitti``); the file is picked, its ``config.json`` is read beside it,
  and its ``preprocessor_config.json``, if there, sets the input preparation (:func:`input_spec`).
  A lone transformers file without ``config.json`` gets a shipped config when its keys and name make it
  unambiguous (ZoeD_N / ZoeD_NK by keys; Depth Anything only with "v2" in the name).

Whatever the source, the tensors go through ``from_pretrained(None, config=..., state_dict=...)``, so transformers
maps the file's names onto its current module names; missing, unexpected or misshapen tensors raise
:class:`DepthModelError` naming the file (only the DINOv2 ``mask_token``, unused at inference, may be absent).

Kinds (:mod:`mvcustom_core.depth.maps`): Depth Anything relative -> ``"disparity"``; Depth Anything metric and
ZoeDepth -> ``"metric"`` (metres).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mvcustom_core.backbone.loading import CheckpointError, StateFile, shipped_config
from mvcustom_core.checks import about

from .layouts import LAYOUT_HINTS, depth_anything_size, detect_depth_layout, original_depth_anything_shapes
from .layouts import original_to_transformers
from .maps import DepthKind

__all__ = ["DepthModel", "DepthModelError", "InputSpec", "load_depth_model", "tiny_depth_model",
           "shipped_depth_config", "build_depth_module", "input_spec", "DEPTH_SUFFIXES", "DEPTH_VARIANTS"]

DEPTH_SUFFIXES = (".safetensors", ".sft")
Family = Literal["depth_anything", "zoedepth"]
# ViT width -> shipped Depth Anything V2 config.
_DA_SIZES = {384: "depth_anything_v2_small", 768: "depth_anything_v2_base", 1024: "depth_anything_v2_large"}
# Depth Anything V2 metric heads: sigmoid x max_depth, 20 m for Hypersim (indoor), 80 m for Virtual KITTI (outdoor)
# (transformers' convert_depth_anything_to_hf.py; kijai/ComfyUI-DepthAnythingV2 reads the same from the file name).
_METRIC_RANGES = (("hypersim", 20), ("indoor", 20), ("vkitti", 80), ("outdoor", 80))
# Which head a Depth Anything file has, when its name should not decide (see load_depth_model): max depth in
# metres of the metric head, None for the relative one.
DEPTH_VARIANTS: dict[str, int | None] = {"auto": None, "relative": None, "metric indoor (Hypersim, 20 m)": 20,
                                         "metric outdoor (Virtual KITTI, 80 m)": 80}
# Tensors the original files may lack without harm: DINOv2's mask token is used only for masked-image training.
_OPTIONAL = {"backbone.embeddings.mask_token"}
# transformers 4.45 added Depth Anything's metric head (config depth_estimation_type / max_depth); an older one
# builds the relative head from a metric config without a word (an unknown config key is just an attribute).
# ZoeDepth came earlier. requirements.txt holds the same floor.
MIN_TRANSFORMERS = (4, 45)


class DepthModelError(CheckpointError):
    """A depth weights file that cannot be loaded (format, layout, missing config, missing or misshapen tensors)."""


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its pictures (see :mod:`mvcustom_core.depth.estimate`).

    Attributes:
        size: target ``(height, width)`` of the resize; multiple: both sides rounded to multiples of it.
        keep_aspect: ``"lower_bound"`` (both sides >= target), ``"minimal"`` (the scale closest to 1) or
            ``"none"`` (each side to its target), as :func:`~mvcustom_core.depth.estimate.resize_keep_aspect`.
        mean, std: per-channel normalization of [0, 1] pixels; interpolation: ``"bicubic"`` or ``"bilinear"``.
        resize: resize at all; pad: ZoeDepth's reflect padding; flip: average with the mirrored picture.
    """

    size: tuple[int, int] = (518, 518)
    multiple: int = 14
    keep_aspect: str = "lower_bound"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    resize: bool = True
    pad: bool = False
    flip: bool = False


# Depth Anything's infer_image (ImageNet statistics, >= 518 px, multiples of 14, bicubic); ZoeDepth's infer
# (mean = std = 0.5, towards 384 x 512 with multiples of 32, bilinear, reflect padding, flip averaging).
FAMILY_INPUTS = {"depth_anything": InputSpec(),
                 "zoedepth": InputSpec(size=(384, 512), multiple=32, keep_aspect="minimal", mean=(0.5,) * 3,
                                       std=(0.5,) * 3, interpolation="bilinear", pad=True, flip=True)}
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's codes in transformers' processor configs


def input_spec(family: str, processor: Mapping[str, Any] | None = None) -> InputSpec:
    """The family's input preparation, with a transformers ``preprocessor_config.json`` dict's settings on top.

    Read (transformers' DPT / ZoeDepth processor semantics): ``do_resize``, ``size`` (``height``/``width``),
    ``keep_aspect_ratio`` (True = scale as little as possible), ``ensure_multiple_of``, ``resample``,
    ``image_mean``/``image_std``, ``do_pad`` (ZoeDepth). Flip averaging stays the family's.
    """
    spec = FAMILY_INPUTS[family]
    if not processor:
        return spec
    size = processor.get("size") or {}
    changes: dict[str, Any] = {}
    if "height" in size and "width" in size:
        changes["size"] = (int(size["height"]), int(size["width"]))
    if "keep_aspect_ratio" in processor:
        changes["keep_aspect"] = "minimal" if processor["keep_aspect_ratio"] else "none"
    if isinstance(processor.get("ensure_multiple_of"), int) and processor["ensure_multiple_of"] >= 1:
        changes["multiple"] = int(processor["ensure_multiple_of"])
    if processor.get("resample") in _RESAMPLE:
        changes["interpolation"] = _RESAMPLE[processor["resample"]]
    if processor.get("do_normalize", True) and processor.get("image_mean") and processor.get("image_std"):
        changes["mean"] = tuple(float(v) for v in processor["image_mean"])
        changes["std"] = tuple(float(v) for v in processor["image_std"])
    if "do_resize" in processor:
        changes["resize"] = bool(processor["do_resize"])
    if "do_pad" in processor and family == "zoedepth":
        changes["pad"] = bool(processor["do_pad"])
    return replace(spec, **changes)


@dataclass
class DepthModel:
    """A loaded monocular depth estimator.

    Attributes:
        module: ``DepthAnythingForDepthEstimation`` or ``ZoeDepthForDepthEstimation``, eval mode.
        family: ``"depth_anything"`` or ``"zoedepth"`` (selects the input preprocessing).
        kind: what its output is: ``"disparity"`` (Depth Anything relative) or ``"metric"`` (metres).
        name: for display, e.g. ``"Depth Anything (relative, ViT width 384)"``.
        source: the file, if any.
        host: the host application's handle on the module (ComfyUI: its ModelPatcher), None outside one.
        input: how pictures are prepared for it (the family's default, or its preprocessor config).
    """

    module: nn.Module
    family: Family
    kind: DepthKind
    name: str
    source: Path | None = None
    host: Any = None
    input: InputSpec | None = None

    def __post_init__(self) -> None:
        if self.input is None:
            self.input = FAMILY_INPUTS[self.family]


def shipped_depth_config(name: str) -> dict[str, Any]:
    """A depth config shipped in ``mvcustom_core/configs/depth`` (e.g. ``"depth_anything_v2_small"``)."""
    return shipped_config(f"depth/{name}")


def build_depth_module(config: Mapping[str, Any], state: Mapping[str, Tensor] | None = None, *,
                       what: str = "depth model") -> nn.Module:
    """transformers' depth module for a config dict (``model_type`` ``depth_anything`` or ``zoedepth``).

    Args:
        config: a config.json dict.
        state: tensors in the transformers file layout; None = random initialization (tests, the tiny model).
        what: names the source in errors.

    Raises:
        DepthModelError: unknown model type, or tensors that are missing, unexpected or misshapen.
    """
    cls, config_cls = _classes(config.get("model_type"), what)
    cfg = config_cls(**{k: v for k, v in config.items() if not k.startswith("_") and k != "model_type"})
    if state is None:
        return cls(cfg).eval()
    with _quiet_transformers():
        try:
            module, info = cls.from_pretrained(None, config=cfg, state_dict=dict(state), output_loading_info=True,
                                               local_files_only=True)
        except RuntimeError as error:  # transformers refuses tensors of another shape
            raise DepthModelError(f"{what}: tensors do not fit a {config.get('model_type')} model of this config "
                                  f"(another size or variant?): {str(error)[-400:]}") from error
    missing = sorted(set(info.get("missing_keys", ())) - _OPTIONAL)
    unexpected = sorted(info.get("unexpected_keys", ()))
    wrong = list(info.get("mismatched_keys", ()))
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (such as {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (such as {unexpected[:3]})" if unexpected else "",
                 f"{len(wrong)} of another shape (such as {wrong[:2]})" if wrong else ""]
        raise DepthModelError(f"{what}: does not fit a {config.get('model_type')} model of this config: "
                              + "; ".join(p for p in parts if p))
    return module.eval()


def _classes(model_type: Any, what: str) -> tuple[type, type]:
    import transformers

    names = {"depth_anything": ("DepthAnythingForDepthEstimation", "DepthAnythingConfig"),
             "zoedepth": ("ZoeDepthForDepthEstimation", "ZoeDepthConfig")}
    if model_type not in names:
        raise DepthModelError(f"{what}: model_type {model_type!r} is not a supported depth model "
                              f"(supported: {sorted(names)})")
    cls, config_cls = (getattr(transformers, n, None) for n in names[model_type])
    if cls is None or config_cls is None or _version(transformers.__version__) < MIN_TRANSFORMERS:
        raise DepthModelError(f"{what}: depth models need transformers >= {'.'.join(map(str, MIN_TRANSFORMERS))} "
                              f"(the pack's requirements.txt), found {transformers.__version__}")
    return cls, config_cls


def _version(text: str) -> tuple[int, ...]:
    """``(major, minor)`` of a version string such as ``"4.44.2"`` or ``"5.0.0.dev0"``."""
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No load report or progress bar from ``from_pretrained`` (the optional mask token is reported as missing)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _metric_range(name: str, path: Path, variant: str = "auto") -> int | None:
    """Depth Anything V2 metric max depth (None: relative): the ``variant`` chosen, or else from the file name."""
    if variant != "auto":
        return DEPTH_VARIANTS[variant]
    low = name.lower()
    if "metric" not in low:
        return None
    for word, max_depth in _METRIC_RANGES:
        if word in low:
            return max_depth
    raise about("variant", DepthModelError(
        f"{path}: a metric Depth Anything V2 file must say in its name whether it is the Hypersim (indoor, 20 m) "
        "or the Virtual KITTI (outdoor, 80 m) model, e.g. depth_anything_v2_metric_hypersim_vitl_fp32.safetensors; "
        "or choose the variant"))


def _as_variant(config: Mapping[str, Any], max_depth: int | None) -> dict[str, Any]:
    """A Depth Anything config with the relative head (``max_depth`` None) or the metric one up to ``max_depth``."""
    if max_depth is None:
        return {**config, "depth_estimation_type": "relative"}
    return {**config, "depth_estimation_type": "metric", "max_depth": max_depth}


def _json_beside(path: Path, name: str) -> dict[str, Any] | None:
    file = path.parent / name
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DepthModelError(f"{file}: cannot read the model's {name}: {error}") from error


def _shipped_for(layout: str, shapes: Mapping[str, tuple[int, ...]], path: Path, variant: str) -> dict[str, Any]:
    """The shipped config for a transformers-layout file without config.json, if its keys and name decide it."""
    name = path.name.lower()
    if layout == "zoedepth":
        if any(k.startswith("metric_head.mlp_classifier.") for k in shapes):
            return shipped_depth_config("zoedepth_nyu_kitti")
        if "kitti" in name:
            raise DepthModelError(f"{path}: ZoeD_K and ZoeD_N share this layout; put the model's config.json beside it")
        return shipped_depth_config("zoedepth_nyu")
    width = shapes["backbone.embeddings.patch_embeddings.projection.weight"][0]
    if "v2" not in name or width not in _DA_SIZES:
        raise DepthModelError(f"{path}: a transformers Depth Anything file without its config.json (V1 and V2 share "
                              "this layout); put the folder's config.json beside it")
    return _as_variant(shipped_depth_config(_DA_SIZES[width]), _metric_range(path.name, path, variant))


def _check_original(shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any], path: Path) -> None:
    expected = original_depth_anything_shapes(config)
    missing = [k for k in expected if k not in shapes and k != "pretrained.mask_token"]
    if missing:
        raise DepthModelError(f"{path}: not a complete Depth Anything V2 file: missing {len(missing)} of "
                              f"{len(expected)} tensors, such as {missing[:3]}")
    wrong = [(k, shapes[k], v) for k, v in expected.items() if k in shapes and tuple(shapes[k]) != v]
    if wrong:
        key, got, want = wrong[0]
        raise DepthModelError(f"{path}: tensor {key!r} has shape {list(got)}, expected {list(want)} for this "
                              "Depth Anything V2 size")


def _describe(family: str, config: Mapping[str, Any]) -> tuple[DepthKind, str]:
    if family == "zoedepth":
        heads = "+".join(b.get("name", "?") for b in config.get("bin_configurations", [{}]))
        return "metric", f"ZoeDepth ({heads}, metric)"
    metric = config.get("depth_estimation_type", "relative") == "metric"
    width = config["backbone_config"]["hidden_size"]
    label = f"metric, max {config.get('max_depth')} m" if metric else "relative"
    return ("metric" if metric else "disparity"), f"Depth Anything ({label}, ViT width {width})"


def load_depth_model(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                     config: Mapping[str, Any] | None = None, variant: str = "auto",
                     progress: Callable[[int, int], None] | None = None) -> DepthModel:
    """Load a depth model from a ``.safetensors`` file (see the module docstring for what is accepted).

    Args:
        path: the weights file; a transformers folder's ``config.json`` is read from beside it.
        dtype: floating dtype of the module (fp32 recommended: fp16 visibly degrades Depth Anything).
        config: a config dict to use instead of ``config.json`` or the shipped one (a model of another size).
        variant: a key of :data:`DEPTH_VARIANTS`: which head a Depth Anything file without ``config.json`` has.
            ``"auto"``: the file name says (``metric`` with ``hypersim``/``indoor`` or ``vkitti``/``outdoor``, as
            the released files are named; else relative). The head's tensors are the same for all three, so a
            renamed metric file would otherwise run the relative head (its output, depth, read as disparity).
            A folder's ``config.json`` decides for itself (another variant is refused).
        progress: ``progress(done, total)`` after each tensor read; it may raise to interrupt.

    Returns:
        a :class:`DepthModel` on the CPU, eval mode.

    Raises:
        DepthModelError: pickled or unknown format, truncated file, another kind of model, missing config,
            missing / misshapen tensors.
    """
    path = Path(path)
    if path.suffix.lower() not in DEPTH_SUFFIXES:
        raise DepthModelError(f"{path}: depth models are read from .safetensors files only (nothing is unpickled); "
                              "use the safetensors release of the model")
    try:
        source = StateFile(path)
    except CheckpointError as error:
        raise DepthModelError(str(error)) from error
    shapes = {k: source.shape(k) for k in source.keys}
    layout = detect_depth_layout(shapes)
    if layout not in ("depth_anything_original", "depth_anything", "zoedepth"):
        raise DepthModelError(f"{path}: not a supported depth model: looks like {LAYOUT_HINTS[layout]}")

    if variant not in DEPTH_VARIANTS:
        raise about("variant", DepthModelError(f"variant must be one of {list(DEPTH_VARIANTS)}, got {variant!r}"))
    if variant != "auto" and layout == "zoedepth":
        raise about("variant", DepthModelError(f"{path}: ZoeDepth is metric by its own heads; the variant is for "
                                               "Depth Anything files (choose 'auto')"))
    if config is not None:
        config = dict(config) if variant == "auto" else _as_variant(config, DEPTH_VARIANTS[variant])
        if layout == "depth_anything_original":
            _check_original(shapes, config, path)
    elif layout == "depth_anything_original":
        width, _ = depth_anything_size(shapes)
        if width not in _DA_SIZES:
            raise DepthModelError(f"{path}: Depth Anything V2 with ViT width {width} is not supported "
                                  f"(Small 384, Base 768, Large 1024)")
        config = _as_variant(shipped_depth_config(_DA_SIZES[width]), _metric_range(path.name, path, variant))
        _check_original(shapes, config, path)
    else:
        config = _json_beside(path, "config.json")
        if config is None:
            config = _shipped_for(layout, shapes, path, variant)
        elif variant != "auto":
            raise about("variant", DepthModelError(f"{path}: its folder's config.json says which head the model "
                                                   "has; choose variant 'auto'"))
    if layout != "depth_anything_original" and config.get("model_type") != layout:
        raise DepthModelError(f"{path}: its config.json says model_type {config.get('model_type')!r} but the "
                              f"tensors are a {layout} model")

    tensors: dict[str, Tensor] = {}
    for i, key in enumerate(source.keys):
        tensors[key] = source.get(key)
        if progress is not None:
            progress(i + 1, len(source.keys))
    if layout == "depth_anything_original":
        tensors, unused = original_to_transformers(tensors)
        if unused:
            raise DepthModelError(f"{path}: tensors this Depth Anything V2 head does not have: {unused[:3]}")
    family: Family = "zoedepth" if layout == "zoedepth" else "depth_anything"
    module = build_depth_module(config, tensors, what=str(path)).to(dtype)
    kind, name = _describe(family, config)
    processor = _json_beside(path, "preprocessor_config.json") if layout != "depth_anything_original" else None
    return DepthModel(module, family, kind, name, path, input=input_spec(family, processor))


def tiny_depth_model(seed: int = 0) -> DepthModel:
    """A tiny random metric Depth Anything (``configs/tiny/depth_anything.json``): weight-free, for tests and demos.

    Its output is a smooth positive function of the picture, not depth. Layers get PyTorch's default
    initialization: transformers' (zero biases, std 0.02) makes the metric head a constant sigmoid(0) · max_depth.
    """
    config = shipped_config("tiny/depth_anything")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_depth_module(config)
        for layer in module.modules():
            if layer is not module and hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
    kind, name = _describe("depth_anything", config)
    return DepthModel(module, "depth_anything", kind, f"tiny random {name}")
