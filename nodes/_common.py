"""Helpers shared by every node adapter: error wording, ComfyUI tensor layouts, atomic writes, progress.

Kept generic on purpose: later node files (backbone, customization, inference) use the same helpers, so
errors read alike across the pack and no node re-implements a layout conversion.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from torch import Tensor

from mvcustom_core.files import atomic_write as write_atomically  # noqa: F401  (the node layer's name for it)
from mvcustom_core.files import image_grid, is_inside

from ._host import comfy_utils, folder_paths, latent_formats, latent_preview, model_management

__all__ = [
    "NodeInputError",
    "redact_server_paths",
    "node_name",
    "blame",
    "input_for",
    "require",
    "queue_check",
    "with_warnings",
    "input_named_in",
    "to_output",
    "image_from_chw",
    "image_from_hwc",
    "image_to_chw",
    "mask_from_core",
    "write_atomically",
    "numbered_output",
    "Progress",
    "check_interrupted",
    "relaying_warnings",
]

log = logging.getLogger("mvcustom")


def node_name(node: type | str) -> str:
    """The display name of a node class (what the user sees on the canvas), or ``node`` if a string."""
    if isinstance(node, str):
        return node
    return node.define_schema().display_name or node.__name__


class NodeInputError(ValueError):
    """Bad user input, worded ``<node display name>: input '<name>' <what is wrong>``.

    Example: ``MVCustom Orbit Trajectory: input 'frames' must be ≥ 1, got 0``. The server's own folders
    are never shown (see :func:`redact_server_paths`): the message goes to whoever queued the prompt.
    """

    def __init__(self, node: type | str, input_name: str, message: str):
        self.node, self.input_name = node_name(node), input_name
        super().__init__(f"{self.node}: input '{input_name}' {redact_server_paths(message)}")


def _server_folders() -> list[tuple[str, str]]:
    """``(absolute folder, how messages name it)`` for ComfyUI's folders, longest first (both spellings of a
    linked folder)."""
    named = []
    for kind in ("input", "output", "temp"):
        getter = getattr(folder_paths, f"get_{kind}_directory", None)
        if getter is not None:
            named.append((getter(), kind))
    for key, (paths, _) in dict(getattr(folder_paths, "folder_names_and_paths", {})).items():
        named += [(p, f"models/{key}") for p in paths]
    for attr, label in (("models_dir", "models"), ("base_path", "ComfyUI")):
        if getattr(folder_paths, attr, None):
            named.append((getattr(folder_paths, attr), label))
    spelled = {(os.path.normpath(spelling), label) for folder, label in named if folder
               for spelling in (str(folder), os.path.realpath(folder))}
    return sorted(spelled, key=lambda item: -len(item[0]))


def redact_server_paths(message: str) -> str:
    """``message`` with every absolute path inside a ComfyUI folder written relative to it (``input/x.txt``,
    ``models/mvcustom/x.safetensors``), so an error tells a remote client nothing about the server's layout."""
    for folder, label in _server_folders():
        if len(folder) > 1:
            message = message.replace(folder, label)
    return message


def input_for(error: BaseException, arguments: Mapping[str, str]) -> str | None:
    """The node input ``arguments`` maps the error's core argument to (set with ``mvcustom_core.checks.about``):
    ``"dfr.layers"`` is looked up as itself, then as ``"dfr"``; None when unmarked or unmapped."""
    argument = getattr(error, "argument", None)
    while isinstance(argument, str) and argument:
        if argument in arguments:
            return arguments[argument]
        argument = argument.rpartition(".")[0]
    return None


MEMORY_BUDGET_TOOLTIP = ("Memory this node may use on the model's device, in GB; 0 = 85 % of what is free when it "
                         "starts (free GPU memory, or available RAM on the CPU). Chunk sizes follow from it; a run "
                         "that cannot fit stops before any work, naming the inputs to change.")


@contextlib.contextmanager
def blame(node: type | str, input_name: str | Callable[[str], str] | None,
          arguments: Mapping[str, str] | None = None) -> Iterator[None]:
    """Re-raise a core ``ValueError`` (bad pose file, broken cameras, bad shape) naming node and input.

    The input is the one ``arguments`` maps the error's core argument to (see :func:`input_for`), else
    ``input_name``, which may be a function of the core message, for nodes whose core call takes several
    inputs and whose errors say which one was wrong. With ``input_name=None`` an error the mapping does not
    place passes unchanged: a wrong name is worse than none (ComfyUI still shows which node failed).
    """
    try:
        yield
    except NodeInputError:
        raise
    except ValueError as e:
        name = input_for(e, arguments or {})
        if name is None:
            name = input_name(str(e)) if callable(input_name) else input_name
        if name is None:
            raise
        raise NodeInputError(node, name, f"is invalid: {e}") from e


def require(node: type | str, input_name: str, ok: bool, message: str) -> None:
    """Raise :class:`NodeInputError` with ``message`` (e.g. ``"must be ≥ 1, got 0"``) unless ``ok``."""
    if not ok:
        raise NodeInputError(node, input_name, message)


def queue_check(check: Callable[[], object]) -> bool | str:
    """A ``validate_inputs`` answer: True when ``check()`` passes, else the message of the
    :class:`NodeInputError` it raised (ComfyUI shows it before the prompt runs)."""
    try:
        check()
    except NodeInputError as e:
        return str(e)
    return True


def input_named_in(names: list[str], fallback: str | None) -> Callable[[str], str | None]:
    """For :func:`blame`: the input a core error message names first (as a whole word), else ``fallback``."""

    def pick(message: str) -> str | None:
        hits = [(m.start(), n) for n in names if (m := re.search(rf"\b{re.escape(n)}\b", message))]
        return min(hits)[1] if hits else fallback

    return pick


# ------------------------------------------------------------------------------------------ tensors
def to_output(x: Tensor) -> Tensor:
    """A float32 tensor on ComfyUI's intermediate device, where node outputs live."""
    return x.to(device=model_management.intermediate_device(), dtype=torch.float32)


def image_from_chw(x: Tensor) -> Tensor:
    """Core ``[B, C, H, W]`` in [0, 1] -> ComfyUI IMAGE ``[B, H, W, C]`` float32."""
    if x.ndim != 4:
        raise ValueError(f"expected a [B, C, H, W] image batch, got shape {tuple(x.shape)}")
    return to_output(x.clamp(0, 1).permute(0, 2, 3, 1).contiguous())


def image_from_hwc(x: Tensor) -> Tensor:
    """One ``[H, W, C]`` picture -> an IMAGE batch of one ``[1, H, W, C]``."""
    if x.ndim != 3:
        raise ValueError(f"expected an [H, W, C] image, got shape {tuple(x.shape)}")
    return to_output(x.clamp(0, 1)[None].contiguous())


def image_to_chw(node: type | str, input_name: str, image: Tensor, channels: int = 3) -> Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` -> core ``[B, channels, H, W]`` float32 (extra channels, e.g. alpha, dropped)."""
    require(node, input_name, isinstance(image, Tensor) and image.ndim == 4,
            f"must be an IMAGE batch [B, H, W, C], got {getattr(image, 'shape', type(image).__name__)}")
    require(node, input_name, image.shape[-1] >= channels,
            f"must have at least {channels} channels, got {image.shape[-1]}")
    return image[..., :channels].permute(0, 3, 1, 2).to(torch.float32).contiguous()


def mask_from_core(x: Tensor) -> Tensor:
    """Core ``[B, 1, H, W]`` or ``[B, H, W]`` in [0, 1] -> ComfyUI MASK ``[B, H, W]`` float32."""
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected a [B, 1, H, W] or [B, H, W] mask, got shape {tuple(x.shape)}")
    return to_output(x.clamp(0, 1).contiguous())


def numbered_output(node: type | str, input_name: str, prefix: str) -> tuple[Path, str, str]:
    """Where an output node writes: ``(folder, "<stem>_<counter:05>", subfolder)`` inside ComfyUI's output folder,
    numbered the way SaveImage numbers files; the error for a bad ``prefix`` names node and input.

    The prefix may hold subfolders but must stay inside the output folder, also once linked subfolders are
    followed (ComfyUI checks the spelling only); one message for every way it does not."""
    require(node, input_name, isinstance(prefix, str) and prefix.strip() != "", "must not be empty")
    output = folder_paths.get_output_directory()
    refused = NodeInputError(node, input_name, f"must be a path inside ComfyUI's output folder, such as "
                                               f"'mvcustom/views'; got {prefix[:120]!r}")
    # Checked before ComfyUI creates the subfolder: a linked subfolder must not get a folder made inside it.
    subfolder = os.path.dirname(os.path.normpath(prefix))
    if any(ord(c) < 32 for c in prefix) or os.path.isabs(subfolder) or not is_inside(os.path.join(output, subfolder),
                                                                                    output):
        raise refused
    try:
        folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, output)
    except Exception as e:  # ComfyUI raises a bare Exception for a prefix that leaves the output folder
        raise refused from e
    return Path(folder), f"{stem}_{counter:05}", subfolder


@contextlib.contextmanager
def relaying_warnings(node: type | str) -> Iterator[list[str]]:
    """Log every Python warning raised inside (a core ``DFRWarning``, ...) as ``<node>: <warning>``, each time it
    happens: Python's own filter would show a warning once per process, and a server runs many prompts.

    Yields the list the messages are appended to when the block ends, for the node's UI text (a user of the
    frontend does not read the server's log)."""
    relayed: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield relayed
        finally:
            for item in caught:
                relayed.append(redact_server_paths(str(item.message)))
                log.warning("%s: %s", node_name(node), relayed[-1])


def with_warnings(note: str | None, warned: list[str]) -> str | None:
    """A node's UI text ``note`` followed by one ``warning: ...`` line per relayed warning."""
    lines = ([note] if note else []) + [f"warning: {w}" for w in warned]
    return "\n".join(lines) or None


# ---------------------------------------------------------------------------------------- progress
def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (never catch it)."""
    model_management.throw_exception_if_processing_interrupted()


class Progress:
    """ComfyUI's progress bar for ``total`` steps; every step is also an interrupt checkpoint.

    ``callback`` has the ``(done, total)`` signature core loops take, so a core function with a
    progress callback reports to the UI and stops on Cancel without knowing ComfyUI. With
    ``latent_previews=True`` (a sampler), :meth:`preview` also sends a picture of the predicted latents
    through ComfyUI's previewer, as KSampler does (Latent2RGB or TAESD, per ComfyUI's ``--preview-method``).
    """

    def __init__(self, total: int, latent_previews: bool = False):
        self.total = int(total)
        self._bar = comfy_utils.ProgressBar(self.total)
        self._previewer = _sd_latent_previewer() if latent_previews else None

    def step(self, n: int = 1) -> None:
        check_interrupted()
        self._bar.update(n)

    def callback(self, done: int, total: int | None = None) -> None:
        check_interrupted()
        self._bar.update_absolute(done, total if total is not None else self.total)

    def preview(self, done: int, total: int, latents: Tensor) -> None:
        """Progress ``done`` of ``total`` with a preview of ``latents`` ``[F, 4, h, w]`` (diffusion space, as the
        core sampler's ``x0`` prediction): up to 16 frames tiled into one picture."""
        check_interrupted()
        image = None
        if self._previewer is not None:
            frames = latents[:PREVIEW_FRAMES].detach().float()
            tiled = image_grid(frames, columns=math.ceil(math.sqrt(frames.shape[0])), pad=0, value=0.0)[None]
            image = self._previewer.decode_latent_to_preview_image("JPEG", tiled)
        self._bar.update_absolute(done, total, image)


PREVIEW_FRAMES = 16


def _sd_latent_previewer():
    """ComfyUI's previewer for SD1.x latents (None when previews are off), as ``latent_preview.prepare_callback``
    makes it for KSampler."""
    return latent_preview.get_previewer(model_management.get_torch_device(), latent_formats.SD15())
