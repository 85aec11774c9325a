"""Positional encodings used by FeatureNeRF (CustomDiffusion360, method.md §4.5)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["positional_encoding", "encoding_width", "plucker_of_rays"]


def positional_encoding(x: Tensor, num_freqs: int) -> Tensor:
    """γ_n(v) = [sin(2^k π v), cos(2^k π v)] for k = −n/2 … n/2 − 1, applied per coordinate.

    The frequency range is centred on 1 (2^−n/2 … 2^(n/2−1)), so both coarse and fine structure of
    normalized scene coordinates (|v| ≲ 2) are represented.

    Args:
        x: ``[..., D]``.
        num_freqs: n (even).

    Returns:
        ``[..., 2·n·D]``, laid out as [sin for all (k, d)] ‖ [cos for all (k, d)] with d fastest.
    """
    if num_freqs % 2:
        raise ValueError(f"num_freqs must be even, got {num_freqs}")
    k = torch.arange(-num_freqs // 2, num_freqs // 2, dtype=x.dtype, device=x.device)
    angles = (x.unsqueeze(-2) * (math.pi * torch.exp2(k)).unsqueeze(-1)).flatten(-2)  # [..., n·D]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def encoding_width(num_freqs: int, dim: int) -> int:
    return 2 * num_freqs * dim


def plucker_of_rays(origins: Tensor, dirs: Tensor) -> Tensor:
    """``[..., 6]`` Plücker coordinates (d, o × d), direction first (CustomDiffusion360, SEVA)."""
    return torch.cat([dirs, torch.linalg.cross(origins, dirs, dim=-1)], dim=-1)
