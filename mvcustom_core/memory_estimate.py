"""Peak-memory estimate of an MVCustom sampling run, made before any work starts (see :mod:`mvcustom_core.memory`).

Everything is counted per UNet call, in bytes of the UNet's dtype (FeatureNeRF runs in float32):

* **UNet activations** of one model call of ``R = branches · frames`` rows at latent size h × w. With
  memory-efficient attention (SDPA's flash kernels on CPU and CUDA) every activation is linear in R·h·w, and the
  peak sits at the top level (width C₀): the GEGLU feed-forward of a transformer block holds its projection (8 C₀),
  the gated half through GELU (4 C₀) and their product (4 C₀) with the block's input, its LayerNorm output and the
  transformer's residual (~6 C₀), beside the skip connections the decoder still needs (summed from the UNet's
  config), ~23 C₀ in all. Measured (tests, docs/performance.md): 25.0–25.1 C₀ floats per row and latent pixel on
  two small configs whose skips are 3 C₀ (estimate 26 C₀), ~26.6 C₀ on SD1.5 (skips 5.1 C₀, estimate 28.1 C₀).
* **Pose blocks**: the Fy cache, one ``W_y·Fy`` map per pose block, CFG branch and frame (at the block's grid),
  and during the first step the fixed part of one FeatureNeRF render (:meth:`FeatureNeRF.fixed_bytes`) plus one
  chunk's workspace.
* **DFR**: the render plans per hooked layer size (vertex ids and weights of three vertices per pixel); each
  step's replacement is chunked to the workspace.
* **Chunked ops** (FeatureNeRF rays, DFR apply, CLC, dense attention) run one at a time, each within the
  workspace, so the run needs one workspace on top of the resident parts.
* **One pass** (a DFR plan with a depth model): between two UNet calls, the anchor's x̂0 is decoded (one frame)
  and its depth estimated, a phase of its own (:func:`~mvcustom_core.inference.one_pass.one_pass_bytes`).

The estimate drives two choices: both CFG branches in one call when that fits, else one after the other (half the
activations), and the workspace (:func:`~mvcustom_core.memory.workspace_bytes`). When even sequential CFG with the
smallest workspace does not fit, :class:`~mvcustom_core.memory.MemoryBudgetError` names the inputs to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mvcustom_core.checks import about
from mvcustom_core.memory import (GiB, MIN_WORKSPACE, MemoryBudget, MemoryBudgetError, dtype_bytes,
                                  workspace_bytes)

__all__ = ["unet_activation_bytes", "vae_decode_frame_bytes", "RunMemory", "plan_run_memory",
           "pose_block_grids", "UNET_TOP_LEVEL_FLOATS"]

UNET_TOP_LEVEL_FLOATS = 23  # per row, latent pixel and top-level channel, besides the skips (module docstring)


def _config(unet: nn.Module):
    inner = getattr(unet, "unet", unet)  # WindowedUNet wraps the UNet
    return inner.config


def unet_activation_bytes(unet: nn.Module, rows: int, latent_size: tuple[int, int], dtype: torch.dtype) -> int:
    """Estimated activation peak of one forward of ``rows`` rows (CFG branches × frames) at latent h × w.

    Counts ``UNET_TOP_LEVEL_FLOATS · C₀`` per row and latent pixel for the top level's transient, plus the skip
    connections of the down path (``conv_in``, every resnet/attention output, every downsampler output). On the
    CPU one more copy of the largest convolution weight: oneDNN reorders a convolution's weight into its blocked
    layout on every call (measured on SD1.5: a ~118 MB constant, the 2560 → 1280 3×3 decoder convolution).
    """
    cfg = _config(unet)
    channels = list(cfg.block_out_channels)
    layers = cfg.layers_per_block
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    h, w = latent_size
    skips = channels[0] * h * w  # conv_in
    for level, (c, n) in enumerate(zip(channels, layers)):
        pixels = (h >> level) * (w >> level)
        skips += n * c * pixels
        if level < len(channels) - 1:
            skips += c * (h >> (level + 1)) * (w >> (level + 1))
    per_row = UNET_TOP_LEVEL_FLOATS * channels[0] * h * w + skips
    inner = getattr(unet, "unet", unet)
    convs = [m.weight for m in inner.modules() if isinstance(m, nn.Conv2d)] if isinstance(inner, nn.Module) else []
    scratch = max((w.numel() for w in convs if w.device.type == "cpu"), default=0)
    return (rows * per_row + scratch) * dtype_bytes(dtype)


def vae_decode_frame_bytes(vae: nn.Module, image_size: tuple[int, int], dtype: torch.dtype) -> int:
    """Estimated activation peak of decoding one frame with a diffusers ``AutoencoderKL`` at ``image_size``.

    The largest tensors are at full resolution: the last upsampler's output (the widest channel count that
    reaches full resolution) and the last block's ResNets. A ResNet holds its input, its GroupNorm output and
    their SiLU at once before the first convolution, and the upsampler its interpolated input and convolution
    output: five full-resolution maps of the widest full-resolution width (measured: 5.01 on a small VAE), and
    one more for the convolutions' scratch.
    """
    channels = list(reversed(vae.config.block_out_channels))  # decoder order: 512, 512, 256, 128 for SD
    widest = max(channels[-2:]) if len(channels) > 1 else channels[0]
    return 6 * widest * image_size[0] * image_size[1] * dtype_bytes(dtype)


def pose_block_grids(unet: nn.Module, latent_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
    """``name -> (h, w, C)`` of every installed pose block's token grid at latent size h × w."""
    from mvcustom_core.customization.pose_block import block_grid, pose_blocks

    inner = getattr(unet, "unet", unet)
    return {b.name: (*block_grid(inner, b.name, latent_size), b.featurenerf.config.channels) for b in pose_blocks(inner)}


@dataclass
class RunMemory:
    """The estimate of one run and the choices made from it.

    The peak is ``Σ resident + workspace + max(phases)``: what stays allocated through the run, one chunk's
    scratch, and the larger of the phases that never overlap (the pose blocks' pre-render happens before the
    UNet call builds its activations, :func:`~mvcustom_core.customization.pose_block.install_prerender`).

    Attributes:
        budget: the budget it was checked against.
        resident: bytes allocated through the run, by name.
        phases: bytes of each non-overlapping phase, by name.
        workspace: scratch bytes of one chunk of every chunked op.
        cfg_batch: both CFG branches in one UNet call (else one after the other).
    """

    budget: MemoryBudget
    resident: dict[str, int] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)
    workspace: int = 0
    cfg_batch: bool = True

    @property
    def peak(self) -> int:
        return sum(self.resident.values()) + self.workspace + max(self.phases.values(), default=0)

    def describe(self) -> str:
        gb = lambda n: f"{n / GiB:.2f}"  # noqa: E731
        resident = ", ".join(f"{name} {gb(size)}" for name, size in self.resident.items() if size)
        phases = " / ".join(f"{name} {gb(size)}" for name, size in self.phases.items())
        return (f"~{gb(self.peak)} GB ({resident}; workspace {gb(self.workspace)}; the larger of {phases} GB)")


def plan_run_memory(
    unet: nn.Module,
    frames: int,
    image_size: tuple[int, int],
    budget: MemoryBudget,
    *,
    guided: bool = True,
    window: int | None = None,
    windows_total_frames: int | None = None,
    pose_context=None,
    dfr_layers: int = 0,
    dtype: torch.dtype | None = None,
    cache_dtype: torch.dtype | None = None,
    one_pass: int = 0,
) -> RunMemory:
    """Estimate the peak of an MVCustom run and choose CFG batching and the workspace (module docstring).

    Args:
        unet: the UNet (with pose blocks installed when ``pose_context`` has references).
        frames: F, frames of the trajectory; ``window``: frames per model call (default all).
        windows_total_frames: Σ frames over all windows (the Fy cache holds one map per window frame).
        image_size: output (H, W) in pixels.
        budget: the memory budget.
        guided: CFG (two branches) or the conditional branch only.
        pose_context: the customization's context (None or no references: no pose blocks).
        dfr_layers: number of DFR hooked layers.
        dtype: the UNet's dtype (default: its parameters'); cache_dtype: the Fy cache's (default ``dtype``).
        one_pass: bytes of the one-pass step's decode and depth estimate (0: no one pass).

    Raises:
        MemoryBudgetError: the run cannot fit (names the inputs to change).
    """
    dtype = dtype or next(unet.parameters()).dtype
    per_call = min(frames, window or frames)
    cached_frames = windows_total_frames or frames
    latent = (image_size[0] // 8, image_size[1] // 8)
    branches = 2 if guided else 1
    resident: dict[str, int] = {"latents": 6 * frames * 4 * latent[0] * latent[1] * 4}  # x, ε, x̂0, noise, …
    render = 0
    if pose_context is not None and pose_context.references:
        from mvcustom_core.customization.pose_block import pose_blocks

        grids = pose_block_grids(unet, latent)
        resident["Fy cache"] = (branches * cached_frames * sum(h * w * c for h, w, c in grids.values())
                                * dtype_bytes(cache_dtype or dtype))
        n_views = pose_context.ref_cams.num_frames
        nerfs = {b.name: b.featurenerf for b in pose_blocks(getattr(unet, "unet", unet))}
        for name, (h, w, _c) in grids.items():
            ref_hw = tuple(pose_context.references[name].shape[-2:]) if name in pose_context.references else (h, w)
            render = max(render, nerfs[name].fixed_bytes(n_views, ref_hw, per_call * h * w,
                                                         nerfs[name].config.num_samples, branches=branches))
    if dfr_layers:
        resident["DFR plans"] = dfr_layers * frames * latent[0] * latent[1] * 3 * (8 + 4 + 12)
    for batch in ((True, False) if guided else (False,)):
        rows = (2 if batch else 1) * per_call
        phases = {"UNet activations": unet_activation_bytes(unet, rows, latent, dtype)}
        if render:
            phases["FeatureNeRF pre-render"] = render
        if one_pass:
            phases["one-pass depth"] = one_pass
        run = RunMemory(budget, resident, phases, 0, batch)
        if budget.bytes - run.peak >= MIN_WORKSPACE:
            run.workspace = workspace_bytes(budget, run.peak)
            return run
    run.workspace = MIN_WORKSPACE
    raise about("memory_budget", MemoryBudgetError(
        f"this run needs {run.describe()} at {frames} frames of {image_size[1]}x{image_size[0]} px "
        f"({per_call} frames per model call{', CFG branches one after the other' if guided else ''}), more than "
        f"the memory budget of {budget.gb:.2f} GB ({budget.source}). Lower the trajectory's frame count or image "
        "size, lower 'window' (frames per model call), or raise 'memory_budget_gb' if the device has more free "
        "memory"))
