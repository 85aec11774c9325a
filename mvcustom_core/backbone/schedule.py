"""Schedules: fractions of a sampling schedule, and the progressive window of Stage-0 training.

**Fractions of a sampling schedule** (:func:`leading_steps`). Step-limited features (pose blocks, DFR, CLC) are set
as a fraction f of the S sampling steps and act on the steps ``i < n(f, S) = ⌊f · S + ½⌋`` (0-based; halves round
up, not to even). The fraction means the same part of the schedule at any step count: DFR's f = 0.7 is the paper's
"first 35 of 50 DDIM steps" and gives 14 of 20, 21 of 30, 70 of 100.

**Progressive spatial window** for Stage-0 training of dense spatio-temporal attention.

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

__all__ = ["WindowSchedule", "leading_steps", "check_fraction"]


def check_fraction(fraction: float, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` unless ``fraction`` is a number in [0, 1]."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"{what} must be a fraction of the schedule in [0, 1], got {fraction!r}")


def leading_steps(fraction: float, steps: int) -> int:
    """How many leading steps of an ``steps``-step schedule a ``fraction`` covers: ``⌊fraction · steps + ½⌋``.

    The feature acts on steps ``i < leading_steps(fraction, steps)``. The product is rounded to 9 decimals before
    the half is added, so a decimal fraction lands on the half it means: 0.7 · 45 is 31.499999999999996 in binary
    and gives 32, as 0.25 · 50 = 12.5 gives 13.

    Example:
        >>> [leading_steps(0.7, s) for s in (20, 30, 45, 50, 100)]
        [14, 21, 32, 35, 70]
    """
    check_fraction(fraction, "fraction")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    return math.floor(round(float(fraction) * steps, 9) + 0.5)


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
