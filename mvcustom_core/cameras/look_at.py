"""Look-at camera construction in the pack's OpenCV convention."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["look_at"]


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """Camera-to-world matrices for cameras at ``eye`` looking at ``target``.

    Convention: OpenCV camera axes (x right, y down, z forward). ``up`` is the world direction that
    should appear *up* in the image, so the camera's +y (down) axis points along ``-up`` as far as the
    viewing direction allows. Default ``up`` is world ``-y``, matching OpenCV-style scenes where world
    +y points down (the RealEstate10K/COLMAP habit); pass ``(0, 0, 1)`` for z-up worlds.

    Args:
        eye: ``[F, 3]`` camera centres.
        target: ``[F, 3]`` or ``[3]`` look-at points.
        up: ``[F, 3]`` or ``[3]`` world up vectors.

    Returns:
        ``[F, 4, 4]`` camera-to-world.

    Example:
        >>> c2w = look_at(torch.tensor([[0.0, 0.0, -2.0]]), torch.zeros(3))
        >>> c2w[0, :3, 2].tolist()  # forward points from the eye to the origin
        [0.0, 0.0, 1.0]
    """
    if up is None:
        up = torch.tensor([0.0, -1.0, 0.0], dtype=eye.dtype, device=eye.device)
    target = torch.as_tensor(target, dtype=eye.dtype, device=eye.device).expand_as(eye)
    up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = target - eye
    dist = forward.norm(dim=-1, keepdim=True)
    if bool((dist < 1e-12).any()):
        raise ValueError("look_at: eye and target coincide for at least one frame")
    forward = forward / dist
    right = torch.linalg.cross(-up, forward, dim=-1)  # x = y × z with y = down ≈ -up
    rnorm = right.norm(dim=-1, keepdim=True)
    if bool((rnorm < 1e-9).any()):
        raise ValueError("look_at: viewing direction is parallel to 'up' for at least one frame")
    right = right / rnorm
    down = torch.linalg.cross(forward, right, dim=-1)
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, down, forward, eye
    c2w[..., 3, 3] = 1.0
    return c2w
