"""Offline loading of SD1.x single-file checkpoints into diffusers/transformers modules.

Everything is built from the JSON configs shipped in ``mvcustom_core/configs`` and the given file; nothing is
fetched. Modules are instantiated on the ``meta`` device and the file's tensors are *assigned* into them, so a
checkpoint costs one copy of its weights in memory and no random initialisation.

Convention:
    - ``.safetensors`` files are inspected header-only (``safetensors.safe_open``) and read tensor by tensor;
      ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` only through ``torch.load(weights_only=True)``. A top-level
      ``"state_dict"`` entry (Lightning / AnimateDiff training output) is unwrapped.
    - Floating tensors are cast to ``dtype``; integer buffers keep theirs.
    - Errors are :class:`CheckpointError` (a ``ValueError``) naming the file and what was expected.

Example:
    >>> from mvcustom_core.backbone.loading import shipped_config
    >>> shipped_config("sd15/unet")["block_out_channels"]
    [320, 640, 1280, 1280]
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .ldm_keys import CLIP_PREFIX, UNET_PREFIX, KeyMapping, clip_key_table, unet_key_table, vae_key_table
from .module_view import shared_tensor

__all__ = [
    "CheckpointError",
    "StateFile",
    "TensorState",
    "SD15Components",
    "Backbone",
    "shipped_config",
    "open_state_file",
    "detect_layout",
    "build_sd15_modules",
    "load_sd15_checkpoint",
    "sd15_modules_from_state",
    "build_backbone",
    "load_mapped_state",
    "export_ldm_state_dict",
]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(ValueError):
    """A weights file is unreadable, of another kind, truncated, or shaped for another model."""


def shipped_config(name: str) -> dict[str, Any]:
    """A JSON config shipped in ``mvcustom_core/configs`` (``"sd15/unet"``, ``"animatediff/v3"``, ``"tiny/vae"``).

    Keys starting with ``_`` (class name, comments) are dropped.
    """
    text = resources.files("mvcustom_core").joinpath("configs", f"{name}.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _read_config(config: Mapping[str, Any] | str | os.PathLike | None, default: str) -> dict[str, Any]:
    if config is None:
        return shipped_config(default)
    if isinstance(config, Mapping):
        return {k: v for k, v in config.items() if not k.startswith("_")}
    path = Path(config)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read JSON config: {error}") from error
    return {k: v for k, v in data.items() if not k.startswith("_")}


class StateFile:
    """Names and shapes of a weights file, with tensors read on demand.

    ``keys`` and ``shape(key)`` come from the safetensors header without reading tensors; pickled files are loaded
    once with ``torch.load(weights_only=True, mmap=True)``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such file")
        suffix = self.path.suffix.lower()
        self._tensors: dict[str, Tensor] | None = None
        self._handle = None
        if suffix in SAFETENSORS_SUFFIXES:
            from safetensors import SafetensorError, safe_open

            try:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
                self._shapes = {k: tuple(self._handle.get_slice(k).get_shape()) for k in self._handle.keys()}
            except (SafetensorError, OSError, ValueError) as error:
                raise CheckpointError(f"{self.path}: not a readable safetensors file (truncated?): {error}") from error
        elif suffix in PICKLE_SUFFIXES:
            self._tensors = _torch_load_tensors(self.path)
            self._shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
        else:
            raise CheckpointError(
                f"{self.path}: unknown weights format {suffix!r}; expected one of "
                f"{SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES}"
            )

    @property
    def keys(self) -> list[str]:
        return list(self._shapes)

    @property
    def metadata(self) -> dict[str, str]:
        """The safetensors header's string metadata (``{}`` for pickled files and files without any)."""
        return dict(self._handle.metadata() or {}) if self._handle is not None else {}

    def __contains__(self, key: str) -> bool:
        return key in self._shapes

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def get(self, key: str) -> Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        try:
            return self._handle.get_tensor(key)
        except Exception as error:  # safetensors raises its own error types for short reads
            raise CheckpointError(f"{self.path}: cannot read tensor {key!r} (truncated file?): {error}") from error


class TensorState(StateFile):
    """A :class:`StateFile` over tensors already in memory (a host's loaded model), under LDM file names.

    ``name`` stands in for the file path in error messages (``"MODEL"``, ``"CLIP"``).
    """

    def __init__(self, tensors: Mapping[str, Tensor], name: str):  # noqa: D107 - no file to open
        self.path = Path(name)
        self._tensors = dict(tensors)
        self._handle = None
        self._shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}


def _torch_load_tensors(path: Path) -> dict[str, Tensor]:
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) pickle format
    except Exception as error:
        raise CheckpointError(
            f"{path}: cannot load with torch.load(weights_only=True) (truncated, or it pickles code objects; "
            f"convert it to .safetensors): {error}"
        ) from error
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return {k: v for k, v in data.items() if isinstance(v, Tensor)}


def open_state_file(path: str | os.PathLike) -> StateFile:
    """Open a ``.safetensors`` or pickled weights file for inspection and reading."""
    return StateFile(path)


def detect_layout(keys: Iterable[str]) -> str:
    """Name the layout of a weights file from its key names only.

    Returns one of ``"sd15_checkpoint"`` (LDM single file with UNet, VAE and CLIP), ``"sd2_checkpoint"``,
    ``"sdxl_checkpoint"``, ``"animatediff_motion_module"`` (original AnimateDiff layout),
    ``"diffusers_motion_adapter"``, ``"ldm_unet_only"``, ``"diffusers_unet"``, ``"unknown"``.
    """
    keys = list(keys)

    def any_key(test: Callable[[str], bool]) -> bool:
        return any(test(k) for k in keys)

    if any_key(lambda k: k.startswith("conditioner.embedders.")):
        return "sdxl_checkpoint"
    if any_key(lambda k: k.startswith(UNET_PREFIX)):
        if any_key(lambda k: k.startswith("cond_stage_model.model.")):
            return "sd2_checkpoint"
        return "sd15_checkpoint"
    if any_key(lambda k: ".motion_modules." in k):
        if any_key(lambda k: ".temporal_transformer." in k):
            return "animatediff_motion_module"
        return "diffusers_motion_adapter"
    if any_key(lambda k: k.startswith("input_blocks.")):
        return "ldm_unet_only"
    if any_key(lambda k: k.startswith("down_blocks.") and ".resnets." in k):
        return "diffusers_unet"
    return "unknown"


_LAYOUT_HINTS = {
    "sdxl_checkpoint": "an SDXL checkpoint (keys 'conditioner.embedders.*'); only SD1.x checkpoints are supported",
    "sd2_checkpoint": "an SD2.x checkpoint (OpenCLIP text encoder 'cond_stage_model.model.*'); only SD1.x is supported",
    "animatediff_motion_module": "an AnimateDiff motion module, not a checkpoint; load it with load_motion_module",
    "diffusers_motion_adapter": "a diffusers MotionAdapter, not a checkpoint; load it with load_motion_module",
    "ldm_unet_only": "a bare UNet ('input_blocks.*' without 'model.diffusion_model.'); a full SD1.x checkpoint with "
    "UNet, VAE and text encoder is needed",
    "diffusers_unet": "a diffusers UNet state dict; a full SD1.x single-file checkpoint is needed",
}


def load_mapped_state(
    module: nn.Module,
    table: Iterable[KeyMapping],
    source: StateFile,
    *,
    what: str,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    on_tensor: Callable[[], None] | None = None,
    share: bool = False,
) -> None:
    """Read every ``table`` entry from ``source`` into ``module`` (built on ``meta``) by assignment.

    ``on_tensor`` is called after each tensor is read (progress; it may raise to interrupt). With ``share``
    the module's tensors alias the source's (:func:`~mvcustom_core.backbone.module_view.shared_tensor`; no
    copy) wherever dtype and device already agree; ``dtype`` / ``device`` None keep each tensor's own.

    Raises:
        CheckpointError: missing keys (count and the first few), or a tensor whose shape differs, naming the key,
            the file's shape and the expected one.
    """
    table = list(table)
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    present = set(source.keys)
    missing = [m.ldm for m in table if m.ldm not in present]
    if missing:
        raise CheckpointError(
            f"{source.path}: not an {what}: missing {len(missing)} of {len(table)} keys, such as "
            f"{', '.join(repr(k) for k in missing[:3])}"
        )
    # All shapes are checked from the header before any tensor is read.
    wrong = []
    for m in table:
        want = expected[m.diffusers] + ((1, 1) if m.conv1x1 else ())
        if source.shape(m.ldm) != want:
            wrong.append((m.ldm, source.shape(m.ldm), want))
    if wrong:
        key, got, want = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors of other shapes)" if len(wrong) > 1 else ""
        raise CheckpointError(
            f"{source.path}: not an {what}: tensor {key!r} has shape {list(got)}, expected {list(want)}{more}"
        )
    state: dict[str, Tensor] = {}
    for m in table:
        tensor = source.get(m.ldm)
        if m.conv1x1:
            tensor = tensor[:, :, 0, 0]
        target_dtype = dtype if tensor.is_floating_point() and dtype is not None else tensor.dtype
        target_device = tensor.device if device is None else torch.device(device)
        if share and tensor.dtype == target_dtype and tensor.device == target_device:
            state[m.diffusers] = shared_tensor(tensor)
        else:
            # A fresh, aligned copy: tensors viewing a memory-mapped file can be unaligned, which changes
            # vectorised kernel paths (measured: 7e-7 differences in a UNet forward) and keeps the file mapped.
            state[m.diffusers] = tensor.to(device=target_device, dtype=target_dtype,
                                           memory_format=torch.contiguous_format, copy=True)
        if on_tensor is not None:
            on_tensor()
    module.load_state_dict(state, strict=True, assign=True)


def _ensure_materialized(module: nn.Module, what: str, path: Path | None) -> None:
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if leftover:
        raise CheckpointError(f"{path}: {what} has tensors the file did not fill: {leftover[:3]}")


@dataclass
class SD15Components:
    """The three SD1.x modules of one checkpoint, in eval mode.

    Attributes:
        unet: diffusers ``UNet2DConditionModel``; input ``[B, 4, h, w]`` latents.
        vae: diffusers ``AutoencoderKL``; ``vae.config.scaling_factor`` (0.18215 for SD1.x) scales latents.
        text_encoder: transformers ``CLIPTextModel``; SD1.x uses ``last_hidden_state`` ``[B, 77, 768]``.
        source: the file they came from (``None`` for randomly initialised ones).
    """

    unet: Any
    vae: Any
    text_encoder: Any
    source: Path | None = None


@dataclass
class Backbone:
    """What the sampler needs: the motion UNet, the VAE, the text encoder and (when known) a tokenizer.

    Attributes:
        unet: diffusers ``UNetMotionModel``; input ``[B, 4, F, h, w]``.
        vae: diffusers ``AutoencoderKL``.
        text_encoder: transformers ``CLIPTextModel``.
        tokenizer: transformers ``CLIPTokenizer`` or ``None`` (the node layer passes ComfyUI's CLIP instead).
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any = None


SD15_PARTS = ("unet", "vae", "text_encoder")


def _build_part(part: str, config: Mapping[str, Any]) -> nn.Module:
    if part == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_config(dict(config)).eval()
    if part == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_config(dict(config)).eval()
    if part == "text_encoder":
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(**config)).eval()
    raise ValueError(f"unknown SD1.x part {part!r}; expected one of {SD15_PARTS}")


def build_sd15_modules(
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
    text_config: Mapping[str, Any],
    *,
    device: torch.device | str = "cpu",
) -> SD15Components:
    """Instantiate UNet, VAE and CLIP text encoder from configs (random init on ``device``; ``"meta"`` is free)."""
    with torch.device(device):
        return SD15Components(*(_build_part(part, config) for part, config in
                                zip(SD15_PARTS, (unet_config, vae_config, text_config))))


def _key_table(part: str, module: nn.Module, config: Mapping[str, Any]) -> tuple[list[KeyMapping], str]:
    keys = module.state_dict().keys()
    if part == "unet":
        return unet_key_table(keys, config), "SD1.x UNet"
    if part == "vae":
        return vae_key_table(keys, config), "SD1.x VAE"
    return clip_key_table(keys), "SD1.x CLIP text encoder"


def load_sd15_checkpoint(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    config: Mapping[str, Mapping[str, Any] | str | os.PathLike] | None = None,
    use_ema: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SD15Components:
    """Load an SD1.x single-file checkpoint (original LDM key layout) into diffusers/transformers modules.

    Args:
        path: ``.safetensors`` or ``.ckpt`` file with ``model.diffusion_model.*``, ``first_stage_model.*`` and
            ``cond_stage_model.transformer.*`` keys (SD1.5 and its community fine-tunes). EMA copies and scheduler
            buffers in the file are ignored.
        dtype: floating dtype of the returned modules (``torch.float32``, ``float16``, ``bfloat16``).
        device: where the weights are placed.
        config: optional overrides ``{"unet": ..., "vae": ..., "text_encoder": ...}``, each a dict or a JSON path;
            defaults are the shipped ``configs/sd15/*.json``.
        use_ema: take the UNet from the EMA copy (``model_ema.*``, flattened names) that full, unpruned files such
            as ``v1-5-pruned.ckpt`` carry; pruned files hold only one copy, and then this raises.
        progress: called as ``progress(done, total)`` after each tensor; raise from it to interrupt.

    Returns:
        SD15Components with modules in eval mode.

    Raises:
        CheckpointError: unreadable or truncated file, another model family (SDXL, SD2, a motion module ...),
            missing keys or mismatching shapes.
    """
    config = dict(config or {})
    unet_config = _read_config(config.get("unet"), "sd15/unet")
    vae_config = _read_config(config.get("vae"), "sd15/vae")
    text_config = _read_config(config.get("text_encoder"), "sd15/text_encoder")

    source = open_state_file(path)
    layout = detect_layout(source.keys)
    if layout != "sd15_checkpoint":
        hint = _LAYOUT_HINTS.get(layout, "no 'model.diffusion_model.*' keys found")
        raise CheckpointError(f"{source.path}: not an SD1.x single-file checkpoint: looks like {hint}")
    source = _with_legacy_clip_prefix(source)
    _check_unet_input_channels(source, unet_config)
    if use_ema:
        source = _with_ema_unet(source)

    modules = build_sd15_modules(unet_config, vae_config, text_config, device="meta")
    configs = (unet_config, vae_config, text_config)
    parts = [(getattr(modules, part), *_key_table(part, getattr(modules, part), config))
             for part, config in zip(SD15_PARTS, configs)]
    on_tensor = _progress_counter(progress, sum(len(table) for _, table, _ in parts))
    for module, table, what in parts:
        load_mapped_state(module, table, source, what=what, dtype=dtype, device=device, on_tensor=on_tensor)
    _restore_clip_position_ids(modules.text_encoder, device)

    for module, what in ((modules.unet, "UNet"), (modules.vae, "VAE"), (modules.text_encoder, "text encoder")):
        _ensure_materialized(module, what, source.path)
    modules.source = source.path
    return modules


def sd15_modules_from_state(
    state: Mapping[str, Tensor],
    *,
    parts: Iterable[str] = SD15_PARTS,
    name: str = "state",
    config: Mapping[str, Mapping[str, Any] | str | os.PathLike] | None = None,
    dtype: torch.dtype | None = None,
) -> SD15Components:
    """diffusers/transformers modules over SD1.x weights already in memory (a host's loaded, patched model).

    The inverse direction of :func:`export_ldm_state_dict`, without copying: each module's tensors alias the
    given ones (:func:`~mvcustom_core.backbone.module_view.shared_tensor`); only tensors of another dtype than
    ``dtype`` are cast (copied). VAE attention projections stored as ``[C, C, 1, 1]`` become ``[C, C]`` views.

    Args:
        state: tensors under their LDM single-file names (``model.diffusion_model.*``, ``first_stage_model.*``,
            ``cond_stage_model.transformer.text_model.*``); keys of parts not asked for are ignored.
        parts: which of ``"unet"``, ``"vae"``, ``"text_encoder"`` to build; the others are ``None``.
        name: what ``state`` is, for error messages (``"MODEL"``).
        config: optional overrides as in :func:`load_sd15_checkpoint`.
        dtype: cast floating tensors to this dtype (None: keep each tensor's own).

    Raises:
        CheckpointError: a requested part has missing keys or tensors of other shapes (another model family).
    """
    config = dict(config or {})
    defaults = {"unet": "sd15/unet", "vae": "sd15/vae", "text_encoder": "sd15/text_encoder"}
    source = TensorState(state, name)
    wanted = list(parts)
    built: dict[str, nn.Module | None] = dict.fromkeys(SD15_PARTS)
    with torch.inference_mode(False):
        for part in wanted:
            part_config = _read_config(config.get(part), defaults[part])
            if part == "unet":
                _check_unet_input_channels(source, part_config)
            with torch.device("meta"):
                module = _build_part(part, part_config)
            table, what = _key_table(part, module, part_config)
            load_mapped_state(module, table, source, what=what, dtype=dtype, device=None, share=True)
            if part == "text_encoder":
                _restore_clip_position_ids(module, next(module.parameters()).device)
            _ensure_materialized(module, what, source.path)
            built[part] = module
    return SD15Components(built["unet"], built["vae"], built["text_encoder"], source=None)


class _RenamedView(StateFile):
    """A StateFile seen through renames ``{name in the view: name in the base file}``; opens nothing."""

    def __init__(self, base: StateFile, alias: Mapping[str, str]):  # noqa: D107 - deliberately not super()
        self.path = base.path
        self._base = base
        self._alias = dict(alias)
        self._shapes = {name: base.shape(original) for name, original in self._alias.items()}

    def get(self, key: str) -> Tensor:
        return self._base.get(self._alias[key])


def _check_unet_input_channels(source: StateFile, unet_config: Mapping[str, Any]) -> None:
    key = UNET_PREFIX + "input_blocks.0.0.weight"
    if key not in source or len(source.shape(key)) != 4:
        return
    channels, expected = source.shape(key)[1], unet_config["in_channels"]
    if channels != expected:
        kind = {9: "an inpainting UNet (latent + mask + masked image)", 8: "an instruct-pix2pix UNet"}.get(
            channels, "a UNet of another input width")
        raise CheckpointError(
            f"{source.path}: the UNet takes {channels} input channels, the config {expected}: looks like {kind}; "
            f"pass config={{'unet': {{..., 'in_channels': {channels}}}}} to load it anyway"
        )


def _progress_counter(progress: Callable[[int, int], None] | None, total: int) -> Callable[[], None] | None:
    if progress is None:
        return None
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        progress(done, total)

    return step


def _with_ema_unet(source: StateFile) -> StateFile:
    # LDM's LitEma stores "model.diffusion_model.<name>" as "model_ema.diffusion_model<name without dots>" (as
    # diffusers' convert_ldm_unet_checkpoint reads it with extract_ema).
    alias = {k: k for k in source.keys}
    unet_keys = [k for k in source.keys if k.startswith(UNET_PREFIX)]
    ema_names = {k: "model_ema." + k.removeprefix("model.").replace(".", "") for k in unet_keys}
    if not unet_keys or not all(ema in source for ema in ema_names.values()):
        raise CheckpointError(
            f"{source.path}: use_ema=True but the file has no EMA copy of the UNet ('model_ema.diffusion_model*' "
            f"keys); pruned checkpoints keep only one set of weights"
        )
    alias.update(ema_names)
    return _RenamedView(source, alias)


def _with_legacy_clip_prefix(source: StateFile) -> StateFile:
    # Checkpoints saved with transformers < 4.x lack the "text_model." level under cond_stage_model.transformer.
    legacy = "cond_stage_model.transformer."
    if any(k.startswith(CLIP_PREFIX) for k in source.keys) or not any(k.startswith(legacy) for k in source.keys):
        return source
    renamed = {(CLIP_PREFIX + k[len(legacy):] if k.startswith(legacy) else k): k for k in source.keys}
    return _RenamedView(source, renamed)


def _restore_clip_position_ids(text_encoder: nn.Module, device: torch.device | str) -> None:
    # position_ids is a non-persistent buffer in transformers >= 4.31: it is not in state_dict(), so assignment
    # leaves it on meta. Files that store it sometimes hold float-corrupted copies (merged fine-tunes); the
    # canonical value arange(max_position_embeddings) is what CLIP was trained with.
    for name, buffer in text_encoder.named_buffers():
        if name.endswith("position_ids") and buffer.is_meta:
            owner = text_encoder.get_submodule(name.rsplit(".", 1)[0])
            length = buffer.shape[-1]
            owner.register_buffer(
                "position_ids", torch.arange(length, device=device).expand((1, -1)), persistent=False
            )


def export_ldm_state_dict(components: SD15Components) -> dict[str, Tensor]:
    """The inverse of :func:`load_sd15_checkpoint`: one state dict in the original LDM single-file layout.

    Includes ``cond_stage_model.transformer.text_model.embeddings.position_ids`` (int64) as SD1.x files do.
    """
    state: dict[str, Tensor] = {}
    unet_state = components.unet.state_dict()
    for m in unet_key_table(unet_state, components.unet.config):
        state[m.ldm] = unet_state[m.diffusers]
    vae_state = components.vae.state_dict()
    for m in vae_key_table(vae_state, components.vae.config):
        tensor = vae_state[m.diffusers]
        state[m.ldm] = tensor[:, :, None, None] if m.conv1x1 else tensor
    text_state = components.text_encoder.state_dict()
    for m in clip_key_table(text_state):
        state[m.ldm] = text_state[m.diffusers]
    length = components.text_encoder.config.max_position_embeddings
    state[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(length).expand((1, -1))
    return {k: v.detach().contiguous() for k, v in state.items()}


def build_backbone(components: SD15Components, motion_adapter: nn.Module) -> Any:
    """Combine an SD1.x UNet with an AnimateDiff ``MotionAdapter`` into a diffusers ``UNetMotionModel``.

    The result's config comes from ``UNetMotionModel.from_unet2d(..., load_weights=False)`` on ``meta``; the UNet's
    and the adapter's tensors are then assigned (their key names coincide with the motion model's), so nothing is
    copied or randomly initialised. Equal, bit for bit, to ``UNetMotionModel.from_unet2d(unet, motion_adapter)``.

    .. warning:: The result *shares* its tensors with ``components.unet`` and ``motion_adapter`` (one copy of the
       weights in memory). Training or patching one changes the other; ``copy.deepcopy`` the result first when both
       must diverge. Both inputs must have the same dtype and device.

    Raises:
        CheckpointError: the adapter does not fit the UNet (block count, channels, layers per block).
    """
    from diffusers import UNetMotionModel

    unet = components.unet
    _check_adapter_fits(unet, motion_adapter)
    placements = {(t.dtype, t.device) for t in [*unet.parameters(), *motion_adapter.parameters()]}
    if len(placements) != 1:
        raise CheckpointError(
            f"UNet and motion adapter must share one dtype and device, found {sorted(map(str, placements))}"
        )
    with torch.device("meta"):
        model = UNetMotionModel.from_unet2d(unet, motion_adapter, load_weights=False)
    # Aliases, not the state dicts' own tensors: those may be inference tensors (created or moved under
    # torch.inference_mode), which autograd refuses even as frozen weights.
    state = {k: shared_tensor(v) for k, v in {**unet.state_dict(), **motion_adapter.state_dict()}.items()}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"motion adapter does not fit the UNet: missing {missing[:3]} unexpected {unexpected[:3]}"
        )
    with torch.inference_mode(False):
        model.load_state_dict(state, strict=True, assign=True)
    _ensure_materialized(model, "UNetMotionModel", None)
    return model.eval()


def _check_adapter_fits(unet: nn.Module, adapter: nn.Module) -> None:
    unet_channels = list(unet.config["block_out_channels"])
    adapter_channels = list(adapter.config["block_out_channels"])
    if unet_channels != adapter_channels:
        raise CheckpointError(
            f"motion adapter block_out_channels {adapter_channels} do not match the UNet's {unet_channels}"
        )
    def per_block(value: int | Iterable[int]) -> list[int]:
        return [value] * len(unet_channels) if isinstance(value, int) else list(value)

    layers = per_block(unet.config["layers_per_block"])
    motion_layers = per_block(adapter.config["motion_layers_per_block"])
    if layers != motion_layers:
        raise CheckpointError(
            f"motion adapter has {motion_layers} motion modules per down block, the UNet {layers} layers per block"
        )
