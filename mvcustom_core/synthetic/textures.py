"""Procedural solid textures: sums of random 3D plane waves, deterministic from a seed.

A texture is a colour field on 3D space, so every view of a surface point sees the same colour
(multi-view consistent by construction). It is random-phase spectral synthesis: ``K`` plane waves with
random unit directions ``u_k``, phases ``phi_k`` and logit-space colour vectors ``c_k``, frequencies
``f_k`` drawn log-uniformly from a fixed bank and kept only if ``f_k <= max_frequency`` (cycles per
unit of the texture coordinate):

    logit(q) = base + sum_k c_k sin(2 pi f_k <u_k, q> + phi_k),        albedo(q) = sigmoid(logit(q))

The logit field is exactly band-limited (its restriction to any line has no frequency above the cap).
Log-uniform frequencies along incommensurate random directions never repeat, which keeps feature
matching unambiguous. The sigmoid keeps colours in (0, 1) without clipping; the harmonics it adds are
weak: along a line, under 0.2 % of the albedo's variance lies above the cap for caps 2-16 (measured
by ``tests/core/test_synthetic_textures.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["WaveTexture", "make_wave_texture", "checker_texture", "color_logit"]

_CHUNK = 1 << 16


@dataclass(frozen=True)
class WaveTexture:
    """A band-limited colour field on R^3 (float64 parameters, cast on use).

    Attributes:
        directions: ``[K, 3]`` unit wave directions.
        frequencies: ``[K]`` cycles per texture unit, all ``<= max_frequency``.
        phases: ``[K]`` radians.
        colors: ``[K, 3]`` per-wave colour amplitudes in logit space.
        base: ``[3]`` mean logit colour.
    """

    directions: Tensor
    frequencies: Tensor
    phases: Tensor
    colors: Tensor
    base: Tensor

    def logit(self, q: Tensor, cutoff: Tensor | None = None) -> Tensor:
        """The band-limited field before the sigmoid.

        Args:
            q: ``[N, 3]`` texture coordinates.
            cutoff: optional ``[N]`` local frequency limit: wave ``k`` is weighted by
                ``exp(-(f_k / cutoff)^4)`` (a smooth low-pass whose strength may vary over space, e.g.
                to fade detail towards a horizon). ``None``: all waves at full amplitude.

        Returns:
            ``[N, 3]`` in the dtype and device of ``q``.
        """
        k = (self.directions * self.frequencies[:, None]).to(q) * (2 * math.pi)  # [K, 3]
        phases, colors, base = self.phases.to(q), self.colors.to(q), self.base.to(q)
        freqs = self.frequencies.to(q)
        out = torch.empty_like(q)
        for start in range(0, q.shape[0], _CHUNK):  # bounds the [N, K] wave table's memory
            waves = torch.sin(q[start:start + _CHUNK] @ k.T + phases)  # [n, K]
            if cutoff is not None:
                waves = waves * torch.exp(-(freqs / cutoff[start:start + _CHUNK, None]) ** 4)
            out[start:start + _CHUNK] = base + waves @ colors
        return out

    def albedo(self, q: Tensor, cutoff: Tensor | None = None) -> Tensor:
        """``q: [N, 3]`` -> ``[N, 3]`` colours ``sigmoid(logit(q, cutoff))`` in (0, 1)."""
        return torch.sigmoid(self.logit(q, cutoff))


def color_logit(color: tuple[float, float, float]) -> Tensor:
    """``[3]`` float64 logit of an RGB colour in (0, 1): the ``base`` that makes a texture's mean colour ``color``."""
    c = torch.tensor(color, dtype=torch.float64)
    if c.shape != (3,) or not bool(((c > 0) & (c < 1)).all()):
        raise ValueError(f"colour must be three values in (0, 1), got {color}")
    return torch.logit(c)


def checker_texture(frequency: float, color_a: tuple[float, float, float], color_b: tuple[float, float, float],
                    *, sharpness: float = 1.0) -> WaveTexture:
    """A soft checkerboard on the x-z plane: ``logit = m + h · sin(2π f x) · sin(2π f z)``.

    ``m`` and ``h`` are the mean and half difference of the two colours' logits (times ``sharpness``;
    at 1 the squares' centres have exactly ``color_a`` and ``color_b``). The product of sines is two
    plane waves, ``sin A sin B = ½ (sin(A − B + π/2) − sin(A + B + π/2))``, along (1, 0, ∓1)/√2 at
    ``f √2`` cycles per unit, so it is an ordinary band-limited :class:`WaveTexture`.
    """
    a, b = color_logit(color_a), color_logit(color_b)
    half = (a - b) / 2 * sharpness
    s = math.sqrt(0.5)
    return WaveTexture(directions=torch.tensor([[s, 0.0, -s], [s, 0.0, s]], dtype=torch.float64),
                       frequencies=torch.full((2,), frequency * math.sqrt(2), dtype=torch.float64),
                       phases=torch.full((2,), math.pi / 2, dtype=torch.float64),
                       colors=torch.stack([half / 2, -half / 2]), base=(a + b) / 2)


def make_wave_texture(generator: torch.Generator, *, max_frequency: float, min_frequency: float = 0.3,
                      bank_max_frequency: float = 64.0, num_waves: int = 96, contrast: float = 1.1,
                      spectral_slope: float = 0.5, base: Tensor | None = None, saturation: float = 1.0) -> WaveTexture:
    """Draw a texture; waves above ``max_frequency`` are dropped from a fixed bank.

    The bank (``num_waves`` waves, log-uniform in ``[min_frequency, bank_max_frequency]``) is drawn
    in full before the cap, so textures of one seed at two caps share their low-frequency waves.
    Amplitudes fall as ``f^-spectral_slope``, then the kept waves are scaled so each channel's logit
    has standard deviation ``contrast`` (a low cap gives a smooth texture, not a faint one).

    Args:
        generator: a seeded CPU ``torch.Generator``; the only source of randomness.
        max_frequency: cap in cycles per texture unit; must exceed ``min_frequency``.
        base: ``[3]`` mean logit colour (:func:`color_logit`); ``None`` draws a saturated random hue. The
            same draws are made either way, so the waves of a seed do not depend on it.
        saturation: in [0, 1]: 1 varies the channels independently (colourful), 0 varies brightness only
            (each wave's colour vector moved to its channel mean by ``1 - saturation``).
    """
    if not 0.0 <= saturation <= 1.0:
        raise ValueError(f"saturation must lie in [0, 1], got {saturation}")
    if not max_frequency > min_frequency:
        raise ValueError(f"max_frequency must exceed {min_frequency} cycles per unit, got {max_frequency}")
    opts = dict(dtype=torch.float64, generator=generator)
    log_f = torch.empty(num_waves, dtype=torch.float64).uniform_(
        math.log(min_frequency), math.log(bank_max_frequency), generator=generator)
    freqs = log_f.exp()
    dirs = torch.randn(num_waves, 3, **opts)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    phases = torch.rand(num_waves, **opts) * (2 * math.pi)
    colors = torch.randn(num_waves, 3, **opts) * freqs[:, None] ** -spectral_slope
    # Mean colour: a random hue with strong saturation so objects differ in colour, not just pattern.
    hue = float(torch.rand(1, **opts))
    if base is None:
        base = torch.tensor([math.cos(2 * math.pi * (hue - s / 3)) for s in range(3)], dtype=torch.float64)
    else:
        base = torch.as_tensor(base, dtype=torch.float64).reshape(3)

    keep = freqs <= max_frequency
    if not bool(keep.any()):  # unreachable for caps above min_frequency unless the draw is unlucky
        keep = freqs == freqs.min()
    colors = colors[keep]
    colors = saturation * colors + (1 - saturation) * colors.mean(dim=1, keepdim=True)
    # Var of sum_k c_k sin(.) with independent uniform phases is sum_k c_k^2 / 2.
    std = (0.5 * (colors ** 2).sum(dim=0)).sqrt()
    colors = colors * (contrast / std)
    return WaveTexture(directions=dirs[keep], frequencies=freqs[keep], phases=phases[keep],
                       colors=colors, base=base)
