"""Trajectories longer than the backbone's window: overlapping frame windows that all contain the anchor.

The motion modules were trained on clips of at most ``size`` frames (AnimateDiff: 16), so a longer trajectory
is denoised as overlapping windows at every model call, and each frame's noise prediction is the weighted mean
over the windows holding it (the "context window" scheme of AnimateDiff-Evolved and ComfyUI's
``comfy/context_windows.py``; weights here: a linear ramp, highest in a window's middle, so seams fade).

To keep the scene put across windows, every window also holds the anchor frame: each window's DFR renders
the same anchor mesh with the same anchor features (:class:`~mvcustom_core.inference.dfr.DFRHook` caches
them per step), and the dense attention of every window sees the anchor. The anchor's own prediction is
the mean over all windows.

:class:`WindowedUNet` does this inside one ``forward``, so :func:`mvcustom_core.backbone.sampler.sample`
runs unchanged on it (its module names and parameters are the wrapped UNet's).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["plan_windows", "window_weights", "WindowedUNet", "WindowError"]


class WindowError(ValueError):
    """Bad window size / overlap."""


def plan_windows(num_frames: int, size: int = 16, overlap: int = 4, anchor: int | None = None) -> list[list[int]]:
    """Frame windows covering ``range(num_frames)``.

    Each window has ``size`` frames (the anchor, when given, is one of them and is added to every window);
    consecutive windows share ``overlap`` non-anchor frames; the last window ends at the last frame.

    Returns:
        sorted frame lists; a single window ``[0 … F−1]`` when ``num_frames <= size``.

    Example:
        >>> plan_windows(10, size=5, overlap=2, anchor=4)
        [[0, 1, 2, 3, 4], [2, 3, 4, 5, 6], [4, 5, 6, 7, 8], [4, 6, 7, 8, 9]]
    """
    if size < 2 or not 0 <= overlap:
        raise WindowError(f"window size must be >= 2 and overlap >= 0, got size {size}, overlap {overlap}")
    if num_frames <= size:
        return [list(range(num_frames))]
    others = [f for f in range(num_frames) if f != anchor]
    span = size - (1 if anchor is not None else 0)  # non-anchor frames per window
    if overlap >= span:
        raise WindowError(f"window overlap {overlap} must be smaller than the {span} non-anchor frames per window")
    stride = span - overlap
    starts = list(range(0, len(others) - span + 1, stride))
    if starts[-1] + span < len(others):
        starts.append(len(others) - span)
    windows = []
    for s in starts:
        frames = others[s:s + span]
        windows.append(sorted(frames + ([anchor] if anchor is not None else [])))
    return windows


def window_weights(window: Sequence[int], anchor: int | None = None) -> Tensor:
    """``[len(window)]`` blend weights: a linear ramp ``min(i + 1, n − i)`` over the non-anchor frames, 1 for the anchor."""
    others = [f for f in window if f != anchor]
    n = len(others)
    ramp = {f: float(min(i + 1, n - i)) for i, f in enumerate(others)}
    return torch.tensor([ramp.get(f, 1.0) for f in window], dtype=torch.float32)


class WindowedUNet(nn.Module):
    """Run a video UNet over frame windows and blend their outputs (see the module docstring).

    Args:
        unet: the diffusers ``UNetMotionModel`` (input ``[N, C, F, h, w]``, text ``[N·F, L, D]``).
        windows: from :func:`plan_windows`.
        anchor: the anchor frame (weight 1 in each window), or None.
        on_window: called with the window's frame ids ``LongTensor [Fw]`` before each window's forward
            (sets the DFR hook's frames and the pose context's target cameras).
    """

    def __init__(self, unet: nn.Module, windows: list[list[int]], anchor: int | None = None,
                 on_window: Callable[[Tensor], None] | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.windows = [torch.tensor(w, dtype=torch.long) for w in windows]
        self.weights = [window_weights(w, anchor) for w in windows]
        self.on_window = on_window

    # The sampler installs feature hooks by module path and reads device/dtype from parameters:
    # expose the wrapped UNet's names unprefixed.
    def named_modules(self, *args, **kwargs):
        return self.unet.named_modules(*args, **kwargs)

    @property
    def down_blocks(self):
        return self.unet.down_blocks

    def forward(self, sample: Tensor, timestep, encoder_hidden_states: Tensor, **kwargs) -> SimpleNamespace:
        n, c, nf, h, w = sample.shape
        text = encoder_hidden_states.reshape(n, nf, *encoder_hidden_states.shape[1:])
        total = torch.zeros(n, c, nf, h, w, dtype=torch.float32, device=sample.device)
        norm = torch.zeros(nf, dtype=torch.float32, device=sample.device)
        for frames, weights in zip(self.windows, self.weights):
            if int(frames.max()) >= nf:
                raise WindowError(f"window frames {frames.tolist()} exceed the {nf} frames of the model input")
            if self.on_window is not None:
                self.on_window(frames)
            idx = frames.to(sample.device)
            out = self.unet(sample[:, :, idx], timestep, encoder_hidden_states=text[:, idx].flatten(0, 1),
                            **kwargs).sample
            wts = weights.to(sample.device)
            total[:, :, idx] += out.float() * wts[None, None, :, None, None]
            norm[idx] += wts
        if self.on_window is not None:
            self.on_window(None)
        return SimpleNamespace(sample=(total / norm[None, None, :, None, None]).to(sample.dtype))
