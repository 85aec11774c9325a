"""Similarity (Sim(3)) alignment of an estimated camera set to target cameras.

Structure-from-motion recovers cameras up to a similarity ``x -> s R x + t``; before comparing poses we
bring the estimate into the target frame with the least-squares similarity of Umeyama (1991).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mvcustom_core.checks import check_finite, check_shape
from mvcustom_core.eval.errors import EvalInputError

__all__ = ["Similarity", "umeyama", "align_by_rotations", "align_cameras"]


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * rotation @ x + translation``.

    Args:
        scale: positive scalar tensor.
        rotation: ``[3, 3]`` proper rotation.
        translation: ``[3]``.
    """

    scale: Tensor
    rotation: Tensor
    translation: Tensor

    def apply_points(self, points: Tensor) -> Tensor:
        """``points: [N, 3]`` -> ``[N, 3]``."""
        return self.scale * points @ self.rotation.T + self.translation

    def apply_c2w(self, c2w: Tensor) -> Tensor:
        """Move camera-to-world poses ``[F, 4, 4]`` into the aligned world (rotations turn, centres map)."""
        out = c2w.clone()
        out[:, :3, :3] = self.rotation @ c2w[:, :3, :3]
        out[:, :3, 3] = self.apply_points(c2w[:, :3, 3])
        return out


def _project_to_so3(m: Tensor) -> Tensor:
    """Nearest proper rotation (Frobenius) to ``m: [3, 3]`` via SVD with the determinant sign fixed."""
    u, _, vh = torch.linalg.svd(m)
    d = torch.ones(3, dtype=m.dtype, device=m.device)
    d[2] = torch.sign(torch.linalg.det(u @ vh))
    if d[2] == 0:
        d[2] = 1.0
    return u @ torch.diag(d) @ vh


def umeyama(src: Tensor, dst: Tensor, *, with_scale: bool = True) -> Similarity:
    """Least-squares similarity mapping ``src`` onto ``dst``.

    Formula: S. Umeyama, "Least-squares estimation of transformation parameters between two point
    patterns", IEEE TPAMI 13(4), 1991, eqs. (34)-(42): with means μx, μy, variance σx² of ``src`` and
    cross-covariance Σxy = (1/n) Σ (y−μy)(x−μx)ᵀ = U D Vᵀ, R = U S Vᵀ with S = diag(1, 1, det(U)det(V)),
    c = tr(D S) / σx² and t = μy − c R μx.

    Args:
        src: ``[N, 3]`` points, N ≥ 3 and not collinear for a unique rotation.
        dst: ``[N, 3]`` corresponding points.
        with_scale: estimate the scale (else 1).

    Returns:
        :class:`Similarity` with ``dst ≈ s R src + t``.

    Raises:
        EvalInputError: fewer than 2 points, or ``src`` collapsed to one point.
    """
    dims = check_shape(src, "N 3", "src")
    check_shape(dst, "N 3", "dst", dims)
    check_finite(src, "src")
    check_finite(dst, "dst")
    if dims["N"] < 2:
        raise EvalInputError(f"umeyama needs at least 2 point pairs, got {dims['N']}")
    mu_x, mu_y = src.mean(0), dst.mean(0)
    xc, yc = src - mu_x, dst - mu_y
    var_x = (xc * xc).sum(-1).mean()
    if var_x <= torch.finfo(src.dtype).eps:
        raise EvalInputError("src: all points coincide, the similarity is undetermined")
    sigma = yc.T @ xc / src.shape[0]
    u, d, vh = torch.linalg.svd(sigma)
    s = torch.ones(3, dtype=src.dtype, device=src.device)
    if torch.linalg.det(u) * torch.linalg.det(vh) < 0:
        s[2] = -1.0
    rotation = u @ torch.diag(s) @ vh
    scale = (d * s).sum() / var_x if with_scale else torch.ones((), dtype=src.dtype, device=src.device)
    return Similarity(scale=scale, rotation=rotation, translation=mu_y - scale * rotation @ mu_x)


def align_by_rotations(src_c2w: Tensor, dst_c2w: Tensor) -> Similarity:
    """Similarity from camera orientations, then scale and shift from centres.

    For centres on a line (a pure translation path) Umeyama leaves the roll about that line free, so the
    rotation is taken instead as the chordal L2 mean of ``R_dst_i R_src_iᵀ`` (Hartley et al., "Rotation
    averaging", IJCV 2013, §5.3: the SVD projection of the summed matrices), and the scale and
    translation then solve the linear least-squares problem ``min Σ‖s R x_i + t − y_i‖²``:
    s = Σ⟨y_i − μy, R(x_i − μx)⟩ / Σ‖x_i − μx‖² (clamped at 0), t = μy − s R μx.

    Args:
        src_c2w: ``[F, 4, 4]`` estimated camera-to-world.
        dst_c2w: ``[F, 4, 4]`` target camera-to-world.
    """
    dims = check_shape(src_c2w, "F 4 4", "src_c2w")
    check_shape(dst_c2w, "F 4 4", "dst_c2w", dims)
    rotation = _project_to_so3((dst_c2w[:, :3, :3] @ src_c2w[:, :3, :3].transpose(-1, -2)).sum(0))
    x, y = src_c2w[:, :3, 3], dst_c2w[:, :3, 3]
    mu_x, mu_y = x.mean(0), y.mean(0)
    xr = (x - mu_x) @ rotation.T
    den = (xr * xr).sum()
    num = ((y - mu_y) * xr).sum()
    scale = (num / den).clamp_min(0) if den > torch.finfo(x.dtype).eps else torch.zeros_like(den)
    return Similarity(scale=scale, rotation=rotation, translation=mu_y - scale * rotation @ mu_x)


def align_cameras(src_c2w: Tensor, dst_c2w: Tensor, *, min_planarity: float = 0.05) -> Similarity:
    """Similarity taking estimated cameras onto target cameras (Umeyama on centres when well posed).

    Umeyama on the camera centres is the standard choice (it ignores the estimated orientations, so
    they stay an independent check). When the target centres are nearly collinear or coincide
    (second singular value of the centred centres below ``min_planarity`` times the first, or fewer
    than 3 cameras) the rotation about the line is unobservable from centres and
    :func:`align_by_rotations` is used instead.

    Args:
        src_c2w: ``[F, 4, 4]`` estimated camera-to-world (registered frames only).
        dst_c2w: ``[F, 4, 4]`` target camera-to-world of the same frames.
        min_planarity: collinearity threshold on the singular-value ratio.
    """
    dims = check_shape(src_c2w, "F 4 4", "src_c2w")
    check_shape(dst_c2w, "F 4 4", "dst_c2w", dims)
    y = dst_c2w[:, :3, 3]
    x = src_c2w[:, :3, 3]
    if dims["F"] >= 3:
        sv_y = torch.linalg.svdvals(y - y.mean(0))
        sv_x = torch.linalg.svdvals(x - x.mean(0))
        if sv_y[1] > min_planarity * sv_y[0] and sv_x[1] > min_planarity * sv_x[0]:
            return umeyama(x, y)
    return align_by_rotations(src_c2w, dst_c2w)
