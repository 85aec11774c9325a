"""Build longer or richer camera paths from simpler ones: concatenate, chain, compose, reverse, resample."""

from __future__ import annotations

from typing import Sequence

import torch

from mvcustom_core.cameras.camera_set import CameraSet
from mvcustom_core.trajectories.keyframes import keyframe_trajectory
from mvcustom_core.trajectories.presets import TrajectoryError, _check_frames

__all__ = ["concatenate", "chain", "compose", "reverse", "resample"]


def concatenate(trajectories: Sequence[CameraSet], *, drop_repeated: bool = True, atol: float = 1e-6) -> CameraSet:
    """Play ``trajectories`` one after another.

    Args:
        trajectories: camera sets sharing one image size.
        drop_repeated: drop a trajectory's first camera when it equals the previous trajectory's last
            camera (c2w and K within ``atol``), so the joint is not shown twice.
        atol: tolerance of that comparison, in world units / pixels.

    Returns:
        The frames of all sets in order.
    """
    if not trajectories:
        raise TrajectoryError("concatenate needs at least one trajectory")
    parts = [trajectories[0]]
    for i, traj in enumerate(trajectories[1:], start=1):
        if traj.image_size != parts[0].image_size:
            raise TrajectoryError(f"trajectories[{i}] has image size {traj.image_size}, "
                                  f"trajectories[0] has {parts[0].image_size}")
        previous = trajectories[i - 1]
        if drop_repeated and _same_camera(previous, -1, traj, 0, atol):
            if traj.num_frames == 1:
                continue
            traj = traj[1:]
        parts.append(traj)
    return CameraSet.concat(parts)


def chain(first: CameraSet, second: CameraSet, *, drop_repeated: bool = False, atol: float = 1e-6) -> CameraSet:
    """Play ``second`` after ``first``, continuing from ``first``'s last camera.

    ``second`` is moved rigidly so that its first camera lands on ``first``'s last one: frame ``i`` of it gets
    ``c2w = first.c2w[-1] @ inv(second.c2w[0]) @ second.c2w[i]``, and keeps its own intrinsics. For a
    CameraCtrl segment (first camera the identity, rows ``M_i`` world-to-camera) this is AnimateDiff-Evolved's
    ``prev_poses`` chaining, ``w2c'_i = M_i · w2c_last``; as there, both joint cameras are kept unless
    ``drop_repeated``. (:func:`concatenate` instead plays ``second`` where it is, e.g. back at the origin.)

    Args:
        first: ``F1`` cameras.
        second: ``F2`` cameras, same image size.
        drop_repeated: drop ``second``'s first camera, which repeats ``first``'s last (pose always; also
            the intrinsics within ``atol`` when they agree).

    Returns:
        ``F1 + F2`` cameras (``F1 + F2 - 1`` with ``drop_repeated`` when the joint cameras agree).
    """
    if second.image_size != first.image_size:
        raise TrajectoryError(f"chain: the second trajectory has image size {second.image_size}, "
                              f"the first has {first.image_size}")
    s = second.c2w.to(first.c2w)
    moved = first.c2w[-1] @ torch.linalg.solve(s[:1], s)  # last @ inv(S0) @ Si, [F2, 4, 4]
    moved[:, 3] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=s.dtype, device=s.device)
    rebased = CameraSet(K=second.K.to(first.K), c2w=moved, image_size=second.image_size)
    return concatenate([first, rebased], drop_repeated=drop_repeated, atol=atol)


def compose(base: CameraSet, motion: CameraSet) -> CameraSet:
    """Apply ``motion``'s movement relative to its first camera on top of each camera of ``base``.

    Frame ``i`` gets ``c2w = base.c2w[i] @ inv(motion.c2w[0]) @ motion.c2w[i]``: the motion is taken in
    its first camera's own frame (so a roll stays a roll about the viewing axis, a truck moves along
    the base camera's right axis), and focal lengths are scaled by ``motion``'s focal ratio to its first
    frame (so a zoom composes). The principal point and image size are ``base``'s.

    Example: ``compose(make_trajectory("orbit", 16), make_trajectory("roll", 16, angle_deg=45))`` is an
    orbit whose camera rolls to 45°.

    Args:
        base: ``F`` cameras.
        motion: ``F`` cameras (or one, which changes nothing).

    Returns:
        ``F`` cameras.
    """
    if motion.num_frames not in (1, base.num_frames):
        raise TrajectoryError(f"compose: motion has {motion.num_frames} frames but base has {base.num_frames}")
    m = motion.c2w.to(base.c2w)
    relative = torch.linalg.solve(m[:1], m)  # inv(M0) @ Mi, [F, 4, 4]
    relative[:, 3] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=m.dtype, device=m.device)
    K = base.K.clone()
    mk = motion.K.to(K)
    K[:, 0, 0] = K[:, 0, 0] * mk[:, 0, 0] / mk[0, 0, 0]
    K[:, 1, 1] = K[:, 1, 1] * mk[:, 1, 1] / mk[0, 1, 1]
    return CameraSet(K=K, c2w=base.c2w @ relative, image_size=base.image_size)


def reverse(traj: CameraSet) -> CameraSet:
    """The same cameras in reverse order."""
    return traj[torch.arange(traj.num_frames - 1, -1, -1)]


def resample(traj: CameraSet, frames: int, *, position_spline: str = "catmull_rom") -> CameraSet:
    """``frames`` cameras evenly spaced in frame index along ``traj`` (its cameras are the keyframes).

    The first and last cameras are kept exactly; see :func:`keyframe_trajectory` for the interpolation.
    """
    frames = _check_frames(frames)
    return keyframe_trajectory(traj, frames, position_spline=position_spline)


def _same_camera(a: CameraSet, i: int, b: CameraSet, j: int, atol: float) -> bool:
    return bool(torch.allclose(a.c2w[i], b.c2w[j].to(a.c2w), rtol=0.0, atol=atol)
                and torch.allclose(a.K[i], b.K[j].to(a.K), rtol=0.0, atol=atol))
