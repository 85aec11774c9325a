"""AnimateDiff motion modules (original v1/v2/v3 layout, or diffusers ``MotionAdapter`` layout) -> ``MotionAdapter``.

Original keys (guoyww/AnimateDiff ``animatediff/models/motion_module.py``; renames as in diffusers'
``convert_animatediff_checkpoint_to_diffusers`` and ``scripts/convert_animatediff_motion_module_to_diffusers.py``)::

    down_blocks.{i}.motion_modules.{j}.temporal_transformer.{norm,proj_in,proj_out}.*        -> ...{j}.{same}
    ...temporal_transformer.transformer_blocks.{t}.attention_blocks.{0,1}.{to_q,to_k,to_v,to_out.0}.*
                                                                                            -> ...{t}.attn{1,2}.*
    ...transformer_blocks.{t}.norms.{0,1}.*  -> norm{1,2}.*      ...ff_norm.* -> norm3.*     ...ff.* -> ff.*
    ...attention_blocks.{0,1}.pos_encoder.pe  [1, L, C]          -> ...{t}.pos_embed.pe (one per block in diffusers)

``up_blocks.{i}.motion_modules.{j}`` likewise (``layers_per_block + 1`` per up block) and, in v2 only,
``mid_block.motion_modules.0``.

Convention:
    - Version from the keys: a mid-block module means v2; without it, positional-encoding length 24 means v1 and
      32 means v3. The shipped ``configs/animatediff/v2.json`` / ``v3.json`` give the rest (8 heads, 32 groups).
    - The positional encoding is the fixed sinusoid of "Attention Is All You Need" (Vaswani et al. 2017, §3.5;
      diffusers ``SinusoidalPositionalEmbedding``): ``pe[p, 2i] = sin(p / 10000^(2i/C))``,
      ``pe[p, 2i+1] = cos(p / 10000^(2i/C))``. It is read from the file. v2/v3 store ``L = 32`` rows but were
      trained on 16-frame clips.
    - Sequences longer than ``L``: a ``UNetMotionModel`` cannot run them (it adds ``pe[:, :F]``). Either the sampler
      runs overlapping windows of at most ``L`` frames, or ``load_motion_module(..., max_seq_length=N)`` extends the
      encoding by the same formula (allowed only when the file's rows equal the formula); positions past 16 are out
      of the training distribution either way. :func:`check_num_frames` raises a clear error before a forward pass.
    - Trained attention: a module trained by ``scripts/train_backbone.py`` (:mod:`.training`) records the dense
      attention window its weights were trained with in the safetensors metadata, key
      ``mvcustom.attention_window``: ``"full"`` or a window k (``"1"`` = AnimateDiff's temporal attention).
      Files without the key (stock AnimateDiff v1/v2/v3, ``.ckpt``) were trained with temporal attention (k = 1).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .ldm_keys import KeyMapping
from .loading import (
    CheckpointError,
    StateFile,
    _ensure_materialized,
    _LAYOUT_HINTS,
    _progress_counter,
    _read_config,
    detect_layout,
    load_mapped_state,
    open_state_file,
)

__all__ = [
    "MotionModuleInfo",
    "motion_key_table",
    "inspect_motion_module",
    "motion_adapter_config",
    "sinusoidal_positions",
    "load_motion_module",
    "check_num_frames",
    "export_motion_module_state_dict",
    "ATTENTION_WINDOW_KEY",
    "attention_window_metadata",
    "trained_attention_window",
]

ATTENTION_WINDOW_KEY = "mvcustom.attention_window"

_ORIGINAL_RENAMES = (
    (".norm1.", ".norms.0."),
    (".norm2.", ".norms.1."),
    (".norm3.", ".ff_norm."),
    (".attn1.", ".attention_blocks.0."),
    (".attn2.", ".attention_blocks.1."),
    (".pos_embed.pe", ".attention_blocks.0.pos_encoder.pe"),
)


@dataclass(frozen=True)
class MotionModuleInfo:
    """What the key names and shapes of a motion-module file say.

    Attributes:
        layout: ``"animatediff_motion_module"`` (original) or ``"diffusers_motion_adapter"``.
        version: ``"v1"``, ``"v2"`` or ``"v3"`` (original layout; a best guess for diffusers files).
        has_mid_block: whether ``mid_block.motion_modules.0`` is present.
        max_seq_length: rows ``L`` of the stored positional encoding.
        block_out_channels: channels of each down block's motion modules.
        attention_window: the attention the weights were trained with, from the file's metadata: a window k
            (1 = AnimateDiff's temporal attention, the value for files without the metadata) or None (full).
    """

    layout: str
    version: str
    has_mid_block: bool
    max_seq_length: int
    block_out_channels: tuple[int, ...]
    attention_window: int | None = 1


def motion_key_table(diffusers_keys: Iterable[str], *, original: bool = True) -> list[KeyMapping]:
    """Map ``MotionAdapter`` keys to the original AnimateDiff names (identity for diffusers-layout files)."""
    table = []
    for key in diffusers_keys:
        if not original:
            table.append(KeyMapping(key, key))
            continue
        m = re.fullmatch(r"((?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(\d+)\.(.+)", key)
        if m is None:
            raise KeyError(f"no AnimateDiff name known for MotionAdapter tensor {key!r}")
        rest = "." + m[3]
        for new, old in _ORIGINAL_RENAMES:
            rest = rest.replace(new, old)
        table.append(KeyMapping(key, f"{m[1]}.motion_modules.{m[2]}.temporal_transformer{rest}"))
    return table


def inspect_motion_module(source: StateFile) -> MotionModuleInfo:
    """Read layout, version, mid block, encoding length and channels from a file's header.

    Raises:
        CheckpointError: the file is no motion module (e.g. an SD checkpoint), naming what it looks like.
    """
    layout = detect_layout(source.keys)
    if layout not in ("animatediff_motion_module", "diffusers_motion_adapter"):
        if layout == "sd15_checkpoint":
            hint = "an SD1.x checkpoint, not a motion module; load it with load_sd15_checkpoint"
        else:
            hint = _LAYOUT_HINTS.get(layout, "no '*.motion_modules.*' keys found")
        raise CheckpointError(f"{source.path}: not an AnimateDiff motion module: looks like {hint}")
    pe_keys = [k for k in source.keys if k.endswith(("pos_encoder.pe", "pos_embed.pe"))]
    if not pe_keys:
        raise CheckpointError(f"{source.path}: AnimateDiff motion module without positional encodings ('*.pe')")
    lengths = {source.shape(k)[1] for k in pe_keys}
    if len(lengths) != 1:
        raise CheckpointError(f"{source.path}: positional encodings of different lengths {sorted(lengths)}")
    length = lengths.pop()
    has_mid = any(k.startswith("mid_block.motion_modules.") for k in source.keys)
    channels = []
    block = 0
    while (key := _proj_in_key(source, block)) is not None:
        channels.append(source.shape(key)[0])
        block += 1
    version = "v2" if has_mid else ("v1" if length == 24 else "v3")
    window = _read_attention_window(source)
    return MotionModuleInfo(layout, version, has_mid, length, tuple(channels), window)


def attention_window_metadata(window: int | None) -> dict[str, str]:
    """The safetensors metadata entry recording the attention a motion module was trained with.

    Args:
        window: window k (1 = temporal attention) or None (full dense attention).
    """
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"attention window must be an int >= 1 or None (full), got {window!r}")
    return {ATTENTION_WINDOW_KEY: "full" if window is None else str(window)}


def _read_attention_window(source: StateFile) -> int | None:
    text = source.metadata.get(ATTENTION_WINDOW_KEY)
    if text is None:
        return 1
    if text == "full":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise CheckpointError(f"{source.path}: metadata {ATTENTION_WINDOW_KEY}={text!r} is neither 'full' nor a window "
                          "k >= 1")


def trained_attention_window(path: str | os.PathLike) -> int | None:
    """The attention a motion-module file was trained with, from its header: a window k (1 = temporal, also for
    stock AnimateDiff files, which carry no such metadata) or None (full dense attention).

    Raises:
        CheckpointError: not a motion module, or unreadable metadata.
    """
    return inspect_motion_module(open_state_file(path)).attention_window


def _proj_in_key(source: StateFile, block: int) -> str | None:
    for key in (
        f"down_blocks.{block}.motion_modules.0.temporal_transformer.proj_in.weight",
        f"down_blocks.{block}.motion_modules.0.proj_in.weight",
    ):
        if key in source:
            return key
    return None


def sinusoidal_positions(length: int, channels: int) -> Tensor:
    """The fixed temporal positional encoding ``[1, length, channels]`` (Vaswani et al. 2017, §3.5).

    Same formula and float32 arithmetic as diffusers ``SinusoidalPositionalEmbedding`` and AnimateDiff's
    ``PositionalEncoding``, so it matches stored encodings to float32 rounding.
    """
    position = torch.arange(length).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, channels, 2) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, length, channels)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


def motion_adapter_config(
    info: MotionModuleInfo, config: Mapping[str, Any] | str | os.PathLike | None = None
) -> dict[str, Any]:
    """The ``MotionAdapter`` config for a file: ``config`` as given, else the shipped v2 (mid block) or v3 config
    with the file's encoding length.

    Raises:
        CheckpointError: without ``config``, channels other than SD1.5's (e.g. a 3-level SDXL / HotShot-XL module).
    """
    adapter_config = _read_config(config, "animatediff/v2" if info.has_mid_block else "animatediff/v3")
    if config is None:
        expected = tuple(adapter_config["block_out_channels"])
        if info.block_out_channels != expected:
            raise CheckpointError(
                f"motion module channels {list(info.block_out_channels)} are not SD1.5's {list(expected)} "
                f"(an SDXL / HotShot-XL motion module?); pass config= for another backbone"
            )
        adapter_config["motion_max_seq_length"] = info.max_seq_length
    return adapter_config


def load_motion_module(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    max_seq_length: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """Load an AnimateDiff motion module file into a diffusers ``MotionAdapter``.

    Args:
        path: ``.safetensors`` or ``.ckpt`` (``torch.load(weights_only=True)``), original AnimateDiff layout
            (``mm_sd_v15_v2.ckpt``, ``v3_sd15_mm.ckpt``, ...) or a diffusers ``MotionAdapter`` state dict.
        dtype: floating dtype of the result.
        device: where the weights are placed.
        config: optional MotionAdapter config (dict or JSON path); default: shipped ``animatediff/v2`` when the
            file has a mid-block module, ``animatediff/v3`` otherwise, with ``motion_max_seq_length`` taken from the
            file (SD1.5 channels required).
        max_seq_length: extend the positional encoding to this many frames (sinusoid formula). Must be at least
            the file's length; refused when the stored encoding is not the formula's.
        progress: called as ``progress(done, total)`` after each tensor; raise from it to interrupt.

    Returns:
        ``MotionAdapter`` in eval mode.

    Raises:
        CheckpointError: not a motion module (an SD checkpoint is named as such), missing keys, wrong shapes, or an
            encoding that cannot be extended.
    """
    from diffusers import MotionAdapter

    source = open_state_file(path)
    info = inspect_motion_module(source)
    try:
        adapter_config = motion_adapter_config(info, config)
    except CheckpointError as error:
        raise CheckpointError(f"{source.path}: {error}") from None
    file_length = int(adapter_config["motion_max_seq_length"])
    if file_length != info.max_seq_length:
        raise CheckpointError(
            f"{source.path}: positional encoding has {info.max_seq_length} rows, config says {file_length}"
        )

    with torch.device("meta"):
        adapter = MotionAdapter.from_config(adapter_config)
    table = motion_key_table(adapter.state_dict().keys(), original=info.layout == "animatediff_motion_module")
    load_mapped_state(adapter, table, source, what="AnimateDiff motion module", dtype=dtype, device=device,
                      on_tensor=_progress_counter(progress, len(table)))
    _ensure_materialized(adapter, "MotionAdapter", source.path)
    if max_seq_length is not None and max_seq_length != file_length:
        _extend_positions(adapter, max_seq_length, file_length, source)
    return adapter.eval()


def _extend_positions(adapter: nn.Module, length: int, file_length: int, source: StateFile) -> None:
    if length < file_length:
        raise CheckpointError(f"max_seq_length {length} is below the file's encoding length {file_length}")
    for name, module in adapter.named_modules():
        pe = getattr(module, "pe", None)
        if not isinstance(pe, Tensor) or not name.endswith("pos_embed"):
            continue
        formula = sinusoidal_positions(file_length, pe.shape[-1])
        # Tolerance covers fp16/bf16 storage of values in [-1, 1].
        if not torch.allclose(pe.float().cpu(), formula, atol=1e-2):
            raise CheckpointError(
                f"{source.path}: the encoding at {name!r} is not the sinusoid formula; cannot extend it to "
                f"{length} frames (run windows of at most {file_length} frames instead)"
            )
        module.register_buffer("pe", sinusoidal_positions(length, pe.shape[-1]).to(pe), persistent=True)
    adapter.register_to_config(motion_max_seq_length=length)


def check_num_frames(model: nn.Module, num_frames: int) -> None:
    """Raise a clear error when ``num_frames`` exceeds a ``MotionAdapter``/``UNetMotionModel``'s encoding length.

    Raises:
        ValueError: naming both numbers and the two ways out (windows, or ``max_seq_length``).
    """
    lengths = {m.pe.shape[1] for n, m in model.named_modules() if n.endswith("pos_embed") and hasattr(m, "pe")}
    if not lengths:
        raise ValueError("model has no temporal positional encodings (not a motion model?)")
    limit = min(lengths)
    if num_frames > limit:
        raise ValueError(
            f"{num_frames} frames exceed the motion module's positional encoding length {limit}: sample in windows "
            f"of at most {limit} frames, or load it with load_motion_module(..., max_seq_length={num_frames})"
        )


def export_motion_module_state_dict(adapter: nn.Module) -> dict[str, Tensor]:
    """The inverse of :func:`load_motion_module`: a ``MotionAdapter``'s tensors in the original AnimateDiff layout.

    Both attention blocks of a temporal transformer block carry the (shared) positional encoding, as in the
    original files.
    """
    state = adapter.state_dict()
    out: dict[str, Tensor] = {}
    for m in motion_key_table(state):
        out[m.ldm] = state[m.diffusers].detach().contiguous()
        if m.ldm.endswith("attention_blocks.0.pos_encoder.pe"):
            out[m.ldm.replace("attention_blocks.0.", "attention_blocks.1.")] = out[m.ldm].clone()
    return out
