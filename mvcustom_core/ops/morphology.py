"""Grey dilation and erosion of ``[B, C, h, w]`` maps by a square window, with a chosen value beyond the border.

One implementation for the masks of the pack: CLC's coverage erosion, the SSIM window erosion of the evaluation
and the dilated subject mask of the customization loss. ``max_pool2d`` over an explicitly padded map keeps
memory at one copy of the input whatever the window size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["dilate", "erode"]


def dilate(x: Tensor, size: int, *, outside: float) -> Tensor:
    """``[B, C, h, w]`` → same shape: the max over rows ``i − ⌊size/2⌋ … i + ⌈size/2⌉ − 1`` (columns alike).

    The window is centred for odd ``size``; an even size reaches one pixel further up/left. Pixels beyond the
    border count as ``outside`` (``-inf``: left out). ``size <= 1`` returns ``x`` itself.
    """
    if size <= 1:
        return x
    lo, hi = size // 2, (size - 1) // 2
    return F.max_pool2d(F.pad(x, (lo, hi, lo, hi), value=outside), size, stride=1)


def erode(x: Tensor, size: int, *, outside: float) -> Tensor:
    """:func:`dilate`'s dual: the min over the same window, pixels beyond the border counting as ``outside``."""
    return x if size <= 1 else -dilate(-x, size, outside=-outside)
