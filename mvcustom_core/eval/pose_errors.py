"""Camera pose errors after similarity alignment, and accuracy under thresholds.

Convention: poses are camera-to-world ``[F, 4, 4]`` in the pack's OpenCV convention
(:mod:`mvcustom_core.cameras.camera_set`); angles are in degrees; a translation error is the distance
between aligned and target camera centres divided by the *scene scale*, the mean distance of the target
centres from their centroid (so 0.1 means "a tenth of the camera path's radius").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mvcustom_core.cameras import CameraSet
from mvcustom_core.checks import check_finite, check_shape
from mvcustom_core.eval.alignment import Similarity, align_cameras

__all__ = [
    "rotation_angle_deg",
    "scene_scale",
    "AbsolutePoseErrors",
    "absolute_pose_errors",
    "relative_pose_errors",
    "accuracy_under_thresholds",
    "accuracy_auc",
    "DEFAULT_ROT_THRESHOLD_DEG",
    "DEFAULT_TRANS_THRESHOLD",
    "DEFAULT_POINT_THRESHOLD_PX",
    "target_reprojection_errors",
    "points_consistent_with_targets",
]

DEFAULT_ROT_THRESHOLD_DEG = 15.0
DEFAULT_TRANS_THRESHOLD = 0.1
# COLMAP's own outlier limit for an observation (mapper filter_max_reproj_error, 4 px).
DEFAULT_POINT_THRESHOLD_PX = 4.0


def rotation_angle_deg(r_a: Tensor, r_b: Tensor) -> Tensor:
    """Geodesic angle between rotations, ``‖log(R_aᵀ R_b)‖`` in degrees.

    Computed as ``atan2(‖vee(M − Mᵀ)‖ / 2, (tr M − 1) / 2)`` with ``M = R_aᵀ R_b`` so that angles near 0
    and near 180° keep full precision (the plain ``arccos`` form loses half the digits near 0).

    Args:
        r_a: ``[*, 3, 3]``.
        r_b: ``[*, 3, 3]``.

    Returns:
        ``[*]`` angles in [0, 180].
    """
    m = r_a.transpose(-1, -2) @ r_b
    cos = (m.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    skew = torch.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1)
    return torch.rad2deg(torch.atan2(skew.norm(dim=-1) / 2, cos))


def scene_scale(centers: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean distance of ``centers: [F, 3]`` from their centroid (a scalar; ``eps`` when they coincide)."""
    return (centers - centers.mean(0)).norm(dim=-1).mean().clamp_min(eps)


@dataclass(frozen=True)
class AbsolutePoseErrors:
    """Per-frame errors of an estimate against targets after Sim(3) alignment.

    Attributes:
        rotation_deg: ``[F]`` geodesic rotation error; ``inf`` for unregistered frames.
        translation: ``[F]`` centre distance / scene scale; ``inf`` for unregistered frames.
        registered: ``[F]`` bool.
        alignment: the similarity that maps the estimate onto the targets (None if < 2 registered).
    """

    rotation_deg: Tensor
    translation: Tensor
    registered: Tensor
    alignment: Similarity | None


def absolute_pose_errors(est_c2w: Tensor, target_c2w: Tensor, registered: Tensor | None = None) -> AbsolutePoseErrors:
    """Align the registered estimates to their targets, then measure rotation and centre errors.

    Args:
        est_c2w: ``[F, 4, 4]`` estimated camera-to-world (rows of unregistered frames are ignored).
        target_c2w: ``[F, 4, 4]`` target camera-to-world.
        registered: ``[F]`` bool; default all True.

    Returns:
        :class:`AbsolutePoseErrors`. With fewer than 2 registered frames no similarity is defined and
        every error is ``inf`` (a failure, as the paper scores a failed COLMAP run).
    """
    dims = check_shape(est_c2w, "F 4 4", "est_c2w")
    check_shape(target_c2w, "F 4 4", "target_c2w", dims)
    check_finite(target_c2w, "target_c2w")
    f = dims["F"]
    if registered is None:
        registered = torch.ones(f, dtype=torch.bool, device=est_c2w.device)
    check_shape(registered, "F", "registered", dims)
    registered = registered.bool()
    est = est_c2w.to(torch.float64)
    tgt = target_c2w.to(torch.float64)
    rot = torch.full((f,), float("inf"), dtype=torch.float64)
    trans = torch.full((f,), float("inf"), dtype=torch.float64)
    idx = torch.nonzero(registered).flatten()
    if len(idx) < 2:
        return AbsolutePoseErrors(rot, trans, registered, None)
    check_finite(est[idx], "est_c2w (registered frames)")
    sim = align_cameras(est[idx], tgt[idx])
    aligned = sim.apply_c2w(est[idx])
    rot[idx] = rotation_angle_deg(aligned[:, :3, :3], tgt[idx, :3, :3])
    # Scale from all target cameras, so dropping frames does not change the yardstick.
    trans[idx] = (aligned[:, :3, 3] - tgt[idx, :3, 3]).norm(dim=-1) / scene_scale(tgt[:, :3, 3])
    return AbsolutePoseErrors(rot, trans, registered, sim)


def relative_pose_errors(est_c2w: Tensor, target_c2w: Tensor, registered: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Similarity-free errors over all frame pairs (the RelPose/PoseDiffusion RRA/RTA form).

    For each pair i < j: the angle between the estimated and target relative rotations ``R_iᵀ R_j``, and
    the angle between the directions of the relative translations (camera j's centre seen from camera i,
    which is scale-free). Pairs touching an unregistered frame get ``inf``.

    Args:
        est_c2w: ``[F, 4, 4]``.
        target_c2w: ``[F, 4, 4]``.
        registered: ``[F]`` bool; default all True.

    Returns:
        (rotation_deg ``[P]``, translation_direction_deg ``[P]``) with P = F (F − 1) / 2, pairs in
        ``torch.triu_indices(F, F, 1)`` order.
    """
    dims = check_shape(est_c2w, "F 4 4", "est_c2w")
    check_shape(target_c2w, "F 4 4", "target_c2w", dims)
    f = dims["F"]
    if registered is None:
        registered = torch.ones(f, dtype=torch.bool)
    check_shape(registered, "F", "registered", dims)
    i, j = torch.triu_indices(f, f, 1)
    est = torch.where(registered.bool()[:, None, None], est_c2w.to(torch.float64), torch.eye(4, dtype=torch.float64))
    tgt = target_c2w.to(torch.float64)

    def rel(c2w: Tensor) -> tuple[Tensor, Tensor]:
        r_i, r_j = c2w[i, :3, :3], c2w[j, :3, :3]
        t = ((c2w[j, :3, 3] - c2w[i, :3, 3]).unsqueeze(-2) @ r_i).squeeze(-2)  # R_iᵀ (c_j − c_i)
        return r_i.transpose(-1, -2) @ r_j, t

    r_est, t_est = rel(est)
    r_tgt, t_tgt = rel(tgt)
    rot = rotation_angle_deg(r_est, r_tgt)
    # atan2(|a x b|, a . b): full precision near 0 and 180 degrees, where arccos of the cosine is not.
    trans = torch.rad2deg(torch.atan2(torch.linalg.cross(t_est, t_tgt).norm(dim=-1), (t_est * t_tgt).sum(-1)))
    ok = registered.bool()[i] & registered.bool()[j]
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    return torch.where(ok, rot, inf), torch.where(ok, trans, inf)


def accuracy_under_thresholds(rotation_deg: Tensor, translation: Tensor, rot_threshold_deg: float = DEFAULT_ROT_THRESHOLD_DEG,
                              trans_threshold: float = DEFAULT_TRANS_THRESHOLD) -> float:
    """Fraction of entries with ``rotation_deg < rot_threshold_deg`` and ``translation < trans_threshold``.

    ``inf`` entries (unregistered frames) count in the denominator as failures.

    Args:
        rotation_deg: ``[F]``.
        translation: ``[F]``.
    """
    dims = check_shape(rotation_deg, "F", "rotation_deg")
    check_shape(translation, "F", "translation", dims)
    if dims["F"] == 0:
        return 0.0
    ok = (rotation_deg < rot_threshold_deg) & (translation < trans_threshold)
    return float(ok.double().mean())


def accuracy_auc(rotation_deg: Tensor, translation: Tensor, max_rot_threshold_deg: float = 2 * DEFAULT_ROT_THRESHOLD_DEG,
                 max_trans_threshold: float = 2 * DEFAULT_TRANS_THRESHOLD, steps: int = 30) -> float:
    """Area under the accuracy curve when both thresholds grow together from 0 to their maxima.

    ``AUC = (1/K) Σ_{k=1..K} accuracy(k/K · max_rot, k/K · max_trans)``, K = ``steps``; in [0, 1], 1 only
    if every frame is below ``max/K`` on both errors. Rewards small errors continuously where the
    single-threshold accuracy is a step.
    """
    ks = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    return float(sum(accuracy_under_thresholds(rotation_deg, translation, float(k) * max_rot_threshold_deg,
                                               float(k) * max_trans_threshold) for k in ks) / steps)


def target_reprojection_errors(points: Tensor, obs_point: Tensor, obs_frame: Tensor, obs_uv: Tensor,
                               alignment: Similarity, targets: CameraSet) -> Tensor:
    """Pixel error of every SfM observation when its 3D point is seen through the *target* camera.

    The reconstruction's points are moved into the target world by ``alignment`` (the Sim(3) of
    :func:`absolute_pose_errors`) and projected with the target camera of the observing frame; the error
    is the distance to the keypoint SfM matched. Small errors mean the generated frames' content is
    consistent with the target poses pixel by pixel, not only in their centres and orientations.

    Args:
        points: ``[P, 3]`` reconstruction-frame points.
        obs_point: ``[M]`` index into ``points`` per observation.
        obs_frame: ``[M]`` observing frame (index into ``targets``).
        obs_uv: ``[M, 2]`` keypoint pixels (centres at +0.5).
        alignment: reconstruction -> target world.
        targets: the F target cameras.

    Returns:
        ``[M]`` float64 pixel errors; ``inf`` where the point lands behind the target camera.
    """
    dims = check_shape(points, "P 3", "points")
    m = check_shape(obs_point, "M", "obs_point")
    check_shape(obs_frame, "M", "obs_frame", m)
    check_shape(obs_uv, "M 2", "obs_uv", m)
    if obs_point.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    if int(obs_point.max()) >= dims["P"] or int(obs_frame.max()) >= targets.num_frames:
        raise ValueError("obs_point / obs_frame index past the points or the target cameras")
    world = alignment.apply_points(points.to(torch.float64))[obs_point]  # [M, 3]
    uv, z = targets.to(dtype=torch.float64)[obs_frame].project(world[:, None, :])  # [M, 1, 2], [M, 1]
    err = (uv[:, 0] - obs_uv.to(torch.float64)).norm(dim=-1)
    return torch.where(z[:, 0] > 0, err, torch.full_like(err, float("inf")))


def points_consistent_with_targets(errors: Tensor, obs_point: Tensor, num_points: int,
                                   threshold_px: float = DEFAULT_POINT_THRESHOLD_PX) -> int:
    """Number of points whose every observation reprojects within ``threshold_px`` through the targets.

    Args:
        errors: ``[M]`` from :func:`target_reprojection_errors`.
        obs_point: ``[M]`` point index per observation.
        num_points: P.
    """
    m = check_shape(errors, "M", "errors")
    check_shape(obs_point, "M", "obs_point", m)
    if num_points == 0:
        return 0
    worst = torch.zeros(num_points, dtype=torch.float64).scatter_reduce(0, obs_point, errors.to(torch.float64),
                                                                         reduce="amax", include_self=True)
    seen = torch.zeros(num_points, dtype=torch.bool).index_fill_(0, obs_point, True)
    return int((seen & (worst < threshold_px)).sum())
