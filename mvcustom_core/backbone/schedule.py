"""Progressive spatial window for Stage-0 training of dense spatio-temporal attention.

MVCustom (§3.3, Fig. 2b) "gradually broaden[s] the spatial attention field" so that training starts
from AnimateDiff's temporal attention (k = 1) and keeps its pretrained behaviour; the exact schedule is
not stated (method.md §3.1, open choice). ``WindowSchedule`` maps a training step to k:

    p(s)  = clamp((s - warmup) / steps, 0, 1)
    raw   = start + (end - start) · ramp(p),   ramp = p (linear) or (1 - cos πp) / 2 (cosine)
    k(s)  = floor(raw), lowered to the next odd value when ``odd`` (centred windows), k(s >= warmup + steps) = end

k is non-decreasing in s. ``end=None`` means full attention at the end of the ramp (returned as None);
the ramp then runs to ``full_at`` (e.g. the largest latent side, 64 for 512² images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["WindowSchedule"]


@dataclass(frozen=True)
class WindowSchedule:
    """k as a function of the training step.

    Args:
        start: k at and before ``warmup`` (1 = AnimateDiff temporal attention).
        end: k after ``warmup + steps``; None = full attention.
        steps: length of the ramp in steps (> 0).
        warmup: steps held at ``start`` before the ramp.
        shape: ``"linear"`` or ``"cosine"`` ramp.
        odd: keep k odd during the ramp (centred windows).
        full_at: k the ramp aims at when ``end`` is None.

    Example:
        >>> s = WindowSchedule(start=1, end=9, steps=8)
        >>> [s(i) for i in (0, 2, 4, 8, 100)]
        [1, 3, 5, 9, 9]
    """

    start: int = 1
    end: int | None = None
    steps: int = 1000
    warmup: int = 0
    shape: Literal["linear", "cosine"] = "linear"
    odd: bool = True
    full_at: int = 64

    def __post_init__(self) -> None:
        target = self.full_at if self.end is None else self.end
        if not (isinstance(self.start, int) and self.start >= 1):
            raise ValueError(f"WindowSchedule: start must be an int >= 1, got {self.start!r}")
        if not (isinstance(target, int) and target >= self.start):
            raise ValueError(f"WindowSchedule: end (or full_at when end is None) must be an int >= start "
                             f"= {self.start}, got {target!r}")
        if self.odd and self.start % 2 == 0:
            raise ValueError(f"WindowSchedule: odd=True needs an odd start, got {self.start}")
        if self.steps < 1 or self.warmup < 0:
            raise ValueError(f"WindowSchedule: steps must be >= 1 and warmup >= 0, got {self.steps}, {self.warmup}")
        if self.shape not in ("linear", "cosine"):
            raise ValueError(f"WindowSchedule: shape must be 'linear' or 'cosine', got {self.shape!r}")

    def __call__(self, step: int) -> int | None:
        """k at ``step`` (None = full attention)."""
        p = min(max((step - self.warmup) / self.steps, 0.0), 1.0)
        if p >= 1.0:
            return self.end
        target = self.full_at if self.end is None else self.end
        ramp = p if self.shape == "linear" else (1.0 - math.cos(math.pi * p)) / 2.0
        k = int(math.floor(self.start + (target - self.start) * ramp + 1e-9))
        if self.odd and k % 2 == 0:
            k -= 1
        return max(self.start, k)
