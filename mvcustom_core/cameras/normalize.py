"""Scene normalization as in CustomDiffusion360: optical-axis intersection to the origin, cameras within a radius.

The scene centre is the point nearest, in least squares, to every camera's optical axis (the line through its
centre ``c_i`` along its viewing direction ``d_i``):

    p* = argmin_p Σ_i ‖(I − d_i d_iᵀ)(p − c_i)‖²  ⇒  [Σ_i (I − d_i d_iᵀ)] p* = Σ_i (I − d_i d_iᵀ) c_i

(Wikipedia, "Line–line intersection", *Nearest points to skew lines in more than two dimensions*; the same
closed form as ``intersect_skew_lines_high_dim`` used by CustomDiffusion360's ``sgm/data/data_co3d.py``, after
David Novotny's code). The world is then translated so ``p*`` is the origin and scaled so the farthest camera
lies at ``radius`` (CustomDiffusion360 divides by the largest camera distance: ``radius = 1``). Intrinsics are
unchanged; rotations too, unless ``align_up=True`` also turns the world so the mean camera "up" (−y column of
``c2w``) becomes the pack's world up, −y (the convention of :func:`~mvcustom_core.cameras.look_at` and the
trajectory presets; CustomDiffusion360's optional re-orientation, in our axes).
"""

from __future__ import annotations

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from torch import Tensor

from mvcustom_core.cameras.camera_set import CameraError, CameraSet

__all__ = ["optical_axes_intersection", "normalize_cameras", "up_alignment", "DegenerateCamerasError"]

# Σ(I − d dᵀ) has a zero eigenvalue along d when every axis is parallel; two axes at angle θ give θ²/2 against
# a largest eigenvalue ≤ F, so 1e-10 still accepts axes about 0.001° apart and rejects exactly parallel ones.
_RELATIVE_EIGEN_TOL = 1e-10


class DegenerateCamerasError(CameraError):
    """The cameras do not determine a scene centre (parallel optical axes, or all at the centre)."""


def optical_axes_intersection(cams: CameraSet) -> Tensor:
    """The least-squares intersection of the cameras' optical axes (see the module docstring).

    Args:
        cams: ``F >= 2`` cameras whose viewing directions are not all parallel.

    Returns:
        ``[3]`` world point, in the cameras' dtype (solved in float64).

    Raises:
        DegenerateCamerasError: fewer than two cameras or (numerically) parallel axes.

    Example:
        >>> from mvcustom_core.cameras import look_at
        >>> eye = torch.tensor([[4.0, 0, 0], [0, 0, 4.0]], dtype=torch.float64)
        >>> cams = CameraSet.from_fov(look_at(eye, torch.tensor([1.0, 2, 3])), 50.0, (8, 8))
        >>> optical_axes_intersection(cams).round(decimals=6).tolist()
        [1.0, 2.0, 3.0]
    """
    if cams.num_frames < 2:
        raise DegenerateCamerasError("optical_axes_intersection needs at least two cameras; one optical axis "
                                     "does not fix a point")
    c = cams.centers.double()  # [F, 3]
    d = cams.forward.double()
    d = d / d.norm(dim=-1, keepdim=True)
    eye = torch.eye(3, dtype=c.dtype, device=c.device)
    proj = eye - d[:, :, None] * d[:, None, :]  # [F, 3, 3] projectors orthogonal to each axis
    A = proj.sum(dim=0)  # [3, 3]
    b = (proj @ c[:, :, None]).sum(dim=0)[:, 0]  # [3]
    eig = torch.linalg.eigvalsh(A)
    if bool(eig[0] <= _RELATIVE_EIGEN_TOL * eig[-1]):
        raise DegenerateCamerasError(
            f"the {cams.num_frames} optical axes are parallel (smallest/largest eigenvalue of Σ(I − d dᵀ) = "
            f"{float(eig[0] / eig[-1]):.3g}), so they have no nearest point; pass cameras that look at a common "
            "point from different directions, or choose the centre yourself")
    return torch.linalg.solve(A, b).to(cams.c2w.dtype)


def up_alignment(cams: CameraSet) -> Tensor:
    """``[3, 3]`` rotation turning the cameras' mean up vector onto world −y (the pack's up), by the smallest angle.

    A camera's up is ``−c2w[:, :3, 1]`` (OpenCV y points down). The rotation is about ``up × (−y)`` by the angle
    between them (kornia ``axis_angle_to_rotation_matrix``); a mean up along +y turns by 180° about x.

    Raises:
        DegenerateCamerasError: the up vectors cancel out (e.g. half the cameras upside down).
    """
    up = -cams.c2w[:, :3, 1].double().mean(dim=0)
    norm = up.norm()
    if float(norm) < 1e-6:
        raise DegenerateCamerasError("the cameras' up vectors cancel out, so there is no mean up to align")
    up = up / norm
    target = torch.tensor([0.0, -1.0, 0.0], dtype=up.dtype, device=up.device)
    axis = torch.linalg.cross(up, target, dim=-1)
    sin, cos = axis.norm(), torch.dot(up, target)
    if float(sin) < 1e-12:  # already −y, or +y: the half turn about x maps +y to −y
        flip = [1.0, 1.0, 1.0] if float(cos) > 0 else [1.0, -1.0, -1.0]
        return torch.diag(torch.tensor(flip, dtype=cams.c2w.dtype, device=cams.c2w.device))
    rotvec = axis / sin * torch.atan2(sin, cos)
    return axis_angle_to_rotation_matrix(rotvec[None])[0].to(cams.c2w.dtype)


def normalize_cameras(cams: CameraSet, radius: float = 1.0, *, center: Tensor | None = None,
                      align_up: bool = False) -> tuple[CameraSet, Tensor]:
    """Move the scene centre to the origin and scale so the farthest camera is at distance ``radius``.

    Args:
        cams: ``F`` cameras.
        radius: distance of the farthest camera from the origin afterwards.
        center: ``[3]`` scene centre; default :func:`optical_axes_intersection`.
        align_up: also rotate the world by :func:`up_alignment` so the mean camera up is world −y.

    Returns:
        The normalized cameras and the ``[4, 4]`` similarity ``new_from_old`` with
        ``X_new = s R (X_old − p*)``, i.e. ``[[s R, −s R p*], [0, 1]]`` (``R = I`` without ``align_up``); apply
        it to scene points (depth maps, meshes) to keep them aligned with the cameras.

    Raises:
        DegenerateCamerasError: no centre can be found, or every camera sits at the centre.
    """
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    p = optical_axes_intersection(cams) if center is None else torch.as_tensor(center).to(cams.c2w)
    dist = (cams.centers - p).norm(dim=-1)
    far = float(dist.max())
    if far <= 1e-12 * max(1.0, float(p.abs().max())):
        raise DegenerateCamerasError("every camera sits at the scene centre, so no scale brings them to the radius")
    s = radius / far
    R = up_alignment(cams) if align_up else torch.eye(3, dtype=cams.c2w.dtype, device=cams.c2w.device)
    rigid = torch.eye(4, dtype=cams.c2w.dtype, device=cams.c2w.device)
    rigid[:3, :3] = R
    rigid[:3, 3] = -(R @ p)
    new_from_old = rigid.clone()
    new_from_old[:3, :] *= s
    return cams.transformed(rigid, scale=s), new_from_old
