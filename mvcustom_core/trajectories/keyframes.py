"""Smooth camera paths through keyframe cameras: SLERP rotations, C1 spline positions, linear intrinsics.

Convention: keyframes are a :class:`~mvcustom_core.cameras.CameraSet`; keyframe ``k`` sits at time
``times[k]`` (strictly increasing; default ``0, 1, ..., K-1``). The output samples ``frames`` equally
spaced times from ``times[0]`` to ``times[-1]``, both included; a sample that falls on a keyframe's time
returns that keyframe bit for bit.
"""

from __future__ import annotations

from typing import Literal

import torch
from kornia.geometry.quaternion import Quaternion
from torch import Tensor

from mvcustom_core.cameras.camera_set import CameraSet
from mvcustom_core.checks import check_finite, check_shape
from mvcustom_core.trajectories.presets import TrajectoryError, _check_frames

__all__ = ["keyframe_trajectory", "catmull_rom", "slerp_rotations"]

PositionSpline = Literal["catmull_rom", "linear"]


def keyframe_trajectory(
    keyframes: CameraSet,
    frames: int,
    *,
    times: Tensor | None = None,
    position_spline: PositionSpline = "catmull_rom",
) -> CameraSet:
    """Interpolate ``frames`` cameras through ``keyframes``.

    Rotations: SLERP between consecutive keyframes along the shorter arc (a quaternion and its negative
    are the same rotation; kornia's ``Quaternion.slerp`` takes the principal log of the relative
    rotation). Positions: a Catmull-Rom (cubic Hermite, C1) spline through the camera centres, or
    piecewise linear. Intrinsics: linear per entry. The image size is the keyframes'.

    Args:
        keyframes: ``K >= 1`` cameras.
        frames: number of output cameras, >= 1.
        times: ``[K]`` strictly increasing keyframe times; default ``arange(K)``.
        position_spline: ``"catmull_rom"`` or ``"linear"``.

    Returns:
        ``frames`` cameras at the equally spaced times ``linspace(times[0], times[-1], frames)``.

    Example:
        >>> from mvcustom_core.trajectories.presets import make_trajectory
        >>> keys = make_trajectory("orbit", 4)
        >>> keyframe_trajectory(keys, 10).num_frames
        10
    """
    frames = _check_frames(frames)
    if position_spline not in ("catmull_rom", "linear"):
        raise TrajectoryError(f"position_spline must be 'catmull_rom' or 'linear', got {position_spline!r}")
    c2w, K = keyframes.c2w, keyframes.K
    n_keys = keyframes.num_frames
    times = _check_times(times, n_keys, c2w.dtype)
    samples = torch.linspace(float(times[0]), float(times[-1]), frames, dtype=c2w.dtype)
    if n_keys == 1:
        return CameraSet(K=K.expand(frames, 3, 3).clone(), c2w=c2w.expand(frames, 4, 4).clone(),
                         image_size=keyframes.image_size)

    # Segment k spans [times[k], times[k+1]]; u in [0, 1] is the position inside it.
    seg = (torch.searchsorted(times, samples, right=True) - 1).clamp(0, n_keys - 2)  # [F]
    u = ((samples - times[seg]) / (times[seg + 1] - times[seg])).clamp(0.0, 1.0)  # [F]

    rotations = slerp_rotations(c2w[seg, :3, :3], c2w[seg + 1, :3, :3], u)
    if position_spline == "catmull_rom":
        centres = catmull_rom(c2w[:, :3, 3], times, samples)
    else:
        centres = torch.lerp(c2w[seg, :3, 3], c2w[seg + 1, :3, 3], u[:, None])
    out_c2w = torch.zeros(frames, 4, 4, dtype=c2w.dtype, device=c2w.device)
    out_c2w[:, :3, :3], out_c2w[:, :3, 3], out_c2w[:, 3, 3] = rotations, centres, 1.0
    out_K = torch.lerp(K[seg], K[seg + 1], u[:, None, None].to(K.dtype))

    # Exact keyframes where a sample lands on a keyframe time (the formulas agree there to rounding).
    # linspace may miss a keyframe time by rounding, hence the tolerance relative to the time span.
    distance, key_index = (samples[:, None] - times[None, :]).abs().min(dim=1)
    hit = distance <= 1e-9 * float(times[-1] - times[0])
    out_c2w[hit], out_K[hit] = c2w[key_index[hit]], K[key_index[hit]]
    return CameraSet(K=out_K, c2w=out_c2w, image_size=keyframes.image_size)


def slerp_rotations(r0: Tensor, r1: Tensor, u: Tensor) -> Tensor:
    """Shortest-arc SLERP between rotation matrices.

    Args:
        r0, r1: ``[F, 3, 3]`` rotations at ``u = 0`` and ``u = 1``.
        u: ``[F]`` interpolation parameters.

    Returns:
        ``[F, 3, 3]`` rotations ``r0 · exp(u · log(r0ᵀ r1))``.
    """
    q0, q1 = Quaternion.from_matrix(r0), Quaternion.from_matrix(r1)
    return q0.slerp(q1, u.to(r0.dtype)).matrix()


def catmull_rom(points: Tensor, times: Tensor, samples: Tensor) -> Tensor:
    """Evaluate the C1 Catmull-Rom spline through ``points`` at ``samples``.

    A cubic Hermite spline whose tangent at an inner knot is the central difference
    ``m_k = (p_{k+1} - p_{k-1}) / (t_{k+1} - t_{k-1})`` and at the ends the one-sided difference (the
    non-uniform "finite difference" Catmull-Rom of Catmull & Rom 1974; Hermite basis from de Boor,
    *A Practical Guide to Splines*). It passes through every knot, and collinear knots give a path on
    their line (every tangent is a combination of knot differences).

    Args:
        points: ``[K, D]`` knots, ``K >= 2``.
        times: ``[K]`` strictly increasing knot times.
        samples: ``[F]`` times in ``[times[0], times[-1]]``.

    Returns:
        ``[F, D]``.
    """
    n = points.shape[0]
    tangents = torch.empty_like(points)
    tangents[0] = (points[1] - points[0]) / (times[1] - times[0])
    tangents[-1] = (points[-1] - points[-2]) / (times[-1] - times[-2])
    if n > 2:
        tangents[1:-1] = (points[2:] - points[:-2]) / (times[2:] - times[:-2])[:, None]
    seg = (torch.searchsorted(times, samples, right=True) - 1).clamp(0, n - 2)
    h = times[seg + 1] - times[seg]  # [F]
    s = ((samples - times[seg]) / h).clamp(0.0, 1.0)[:, None]  # [F, 1]
    s2, s3 = s * s, s * s * s
    h00, h10 = 2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s
    h01, h11 = -2 * s3 + 3 * s2, s3 - s2
    return (h00 * points[seg] + h10 * h[:, None] * tangents[seg]
            + h01 * points[seg + 1] + h11 * h[:, None] * tangents[seg + 1])


def _check_times(times: Tensor | None, n_keys: int, dtype: torch.dtype) -> Tensor:
    if times is None:
        return torch.arange(n_keys, dtype=dtype)
    times = torch.as_tensor(times, dtype=dtype)
    check_shape(times, "K", "times")
    if times.shape[0] != n_keys:
        raise TrajectoryError(f"times has {times.shape[0]} entries but keyframes has {n_keys} cameras")
    check_finite(times, "times")
    if n_keys > 1 and not bool((times[1:] > times[:-1]).all()):
        raise TrajectoryError(f"times must be strictly increasing, got {times.tolist()}")
    return times
