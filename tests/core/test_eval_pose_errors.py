"""Sim(3) alignment and pose errors against known similarities and known perturbations (exact)."""

from __future__ import annotations

import math

import pytest
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from mvcustom_core.cameras import look_at
from mvcustom_core.eval.alignment import align_by_rotations, align_cameras, umeyama
from mvcustom_core.eval.errors import EvalInputError
from mvcustom_core.eval.pose_errors import (absolute_pose_errors, accuracy_auc, accuracy_under_thresholds,
                                            relative_pose_errors, rotation_angle_deg, scene_scale)

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _random_rotation(gen: torch.Generator, n: int | None = None) -> torch.Tensor:
    aa = torch.randn(n or 1, 3, generator=gen, dtype=DT)
    r = axis_angle_to_rotation_matrix(aa)
    return r if n else r[0]


def _circle_c2w(n: int, radius: float = 2.0, height: float = 0.0) -> torch.Tensor:
    """n cameras evenly spaced on a horizontal circle (y = height), looking at the origin."""
    a = 2 * math.pi * torch.arange(n, dtype=DT) / n
    eye = torch.stack([radius * torch.sin(a), torch.full_like(a, height), -radius * torch.cos(a)], -1)
    return look_at(eye, torch.zeros(3, dtype=DT))


def _apply_similarity(c2w: torch.Tensor, s: float, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    out = c2w.clone()
    out[:, :3, :3] = r @ c2w[:, :3, :3]
    out[:, :3, 3] = s * c2w[:, :3, 3] @ r.T + t
    return out


def test_umeyama_recovers_known_similarity(generator):
    src = torch.randn(20, 3, generator=generator, dtype=DT)
    r = _random_rotation(generator)
    t = torch.randn(3, generator=generator, dtype=DT)
    sim = umeyama(src, 2.5 * src @ r.T + t)
    torch.testing.assert_close(sim.scale, torch.tensor(2.5, dtype=DT), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sim.rotation, r, rtol=0, atol=1e-12)
    torch.testing.assert_close(sim.translation, t, rtol=0, atol=1e-12)


def test_umeyama_returns_a_proper_rotation_for_mirrored_points(generator):
    src = torch.randn(10, 3, generator=generator, dtype=DT)
    dst = src * torch.tensor([1.0, 1.0, -1.0], dtype=DT)  # a reflection: no rotation maps src onto dst
    sim = umeyama(src, dst)
    assert float(torch.linalg.det(sim.rotation)) == pytest.approx(1.0, abs=1e-12)


def test_umeyama_rejects_degenerate_input():
    with pytest.raises(EvalInputError, match="coincide"):
        umeyama(torch.ones(4, 3, dtype=DT), torch.randn(4, 3, dtype=DT))
    with pytest.raises(EvalInputError, match="at least 2"):
        umeyama(torch.ones(1, 3, dtype=DT), torch.ones(1, 3, dtype=DT))


def test_align_cameras_collinear_path_uses_orientations(generator):
    # A pure translation path: centres on a line, so centres alone leave the roll about it free.
    n = 6
    rot = _random_rotation(generator).expand(n, 3, 3)
    tgt = torch.eye(4, dtype=DT).repeat(n, 1, 1)
    tgt[:, :3, :3] = rot
    tgt[:, :3, 3] = torch.linspace(-1, 1, n, dtype=DT)[:, None] * torch.tensor([0.3, 0.1, 0.9], dtype=DT)
    r = _random_rotation(generator)
    t = torch.randn(3, generator=generator, dtype=DT)
    est = _apply_similarity(tgt, 0.7, r, t)
    sim = align_cameras(est, tgt)
    torch.testing.assert_close(sim.apply_c2w(est), tgt, rtol=0, atol=1e-12)
    sim2 = align_by_rotations(est, tgt)
    torch.testing.assert_close(sim2.scale, torch.tensor(1 / 0.7, dtype=DT), rtol=1e-12, atol=0)


def test_errors_vanish_for_a_similar_copy(generator):
    tgt = _circle_c2w(8)
    est = _apply_similarity(tgt, 3.0, _random_rotation(generator), torch.randn(3, generator=generator, dtype=DT))
    err = absolute_pose_errors(est, tgt)
    assert float(err.rotation_deg.max()) < 1e-6
    assert float(err.translation.max()) < 1e-10
    assert accuracy_under_thresholds(err.rotation_deg, err.translation) == 1.0


def test_rotation_error_equals_the_rotation_perturbation(generator):
    tgt = _circle_c2w(8)
    est = _apply_similarity(tgt, 0.5, _random_rotation(generator), torch.randn(3, generator=generator, dtype=DT))
    angles = torch.linspace(0.5, 40.0, 8, dtype=DT)
    axes = torch.nn.functional.normalize(torch.randn(8, 3, generator=generator, dtype=DT), dim=-1)
    perturbed = tgt.clone()
    # Orientations only: Umeyama uses the centres, so the alignment and translation errors are untouched.
    perturbed[:, :3, :3] = tgt[:, :3, :3] @ axis_angle_to_rotation_matrix(axes * torch.deg2rad(angles)[:, None])
    err = absolute_pose_errors(est, perturbed)
    torch.testing.assert_close(err.rotation_deg, angles, rtol=0, atol=1e-9)
    assert float(err.translation.max()) < 1e-10
    # Threshold 15 degrees: the first 3 angles (0.5, 6.2, 11.9) pass, 17.6 and above fail.
    assert accuracy_under_thresholds(err.rotation_deg, err.translation, 15.0, 0.1) == pytest.approx(3 / 8)


def test_translation_error_equals_the_centre_perturbation(generator):
    # Alternating vertical offsets on an evenly spaced circle of 8: they sum to zero and are orthogonal
    # to the centred centres, so the Umeyama alignment is unchanged and each error is |offset| / scale.
    n, radius, eps = 8, 2.0, 0.15
    tgt = _circle_c2w(n, radius)
    est = _apply_similarity(tgt, 1.7, _random_rotation(generator), torch.randn(3, generator=generator, dtype=DT))
    perturbed = tgt.clone()
    perturbed[:, 1, 3] += eps * (-1.0) ** torch.arange(n, dtype=DT)
    err = absolute_pose_errors(est, perturbed)
    expected = eps / math.hypot(radius, eps)
    torch.testing.assert_close(err.translation, torch.full((n,), expected, dtype=DT), rtol=1e-12, atol=1e-12)
    assert float(err.rotation_deg.max()) < 1e-6
    torch.testing.assert_close(scene_scale(perturbed[:, :3, 3]), torch.tensor(math.hypot(radius, eps), dtype=DT))


def test_unregistered_frames_count_as_failures():
    tgt = _circle_c2w(6)
    registered = torch.tensor([True, True, True, True, False, False])
    err = absolute_pose_errors(tgt, tgt, registered)
    assert torch.isinf(err.rotation_deg[4:]).all() and torch.isinf(err.translation[4:]).all()
    assert accuracy_under_thresholds(err.rotation_deg, err.translation) == pytest.approx(4 / 6)
    none = absolute_pose_errors(tgt, tgt, torch.zeros(6, dtype=torch.bool))
    assert none.alignment is None
    assert accuracy_under_thresholds(none.rotation_deg, none.translation) == 0.0
    assert accuracy_auc(none.rotation_deg, none.translation) == 0.0


def test_shuffled_estimates_score_low(generator):
    tgt = _circle_c2w(12)
    perm = torch.randperm(12, generator=generator)
    err = absolute_pose_errors(tgt[perm], tgt)
    assert accuracy_under_thresholds(err.rotation_deg, err.translation) <= float((perm == torch.arange(12)).double().mean()) + 0.1


def test_rotation_angle_is_precise_near_zero_and_half_turn():
    for deg in (1e-6, 0.01, 90.0, 179.999):
        r = axis_angle_to_rotation_matrix(torch.tensor([[0.0, math.radians(deg), 0.0]], dtype=DT))
        assert float(rotation_angle_deg(torch.eye(3, dtype=DT)[None], r)[0]) == pytest.approx(deg, rel=1e-9)


def test_accuracy_auc_matches_its_definition():
    rot = torch.tensor([0.0, 3.0, 100.0], dtype=DT)
    trans = torch.tensor([0.0, 0.0, 0.0], dtype=DT)
    # max 30 degrees in 30 steps of 1 degree: frame 0 passes at every step, frame 1 from step 4 on.
    assert accuracy_auc(rot, trans, 30.0, 0.2, steps=30) == pytest.approx((30 + 27) / (3 * 30))


def test_relative_errors_are_similarity_free_and_match_a_perturbation(generator):
    tgt = _circle_c2w(5, height=-0.5)
    est = _apply_similarity(tgt, 0.3, _random_rotation(generator), torch.randn(3, generator=generator, dtype=DT))
    rot, trans = relative_pose_errors(est, tgt)
    assert float(rot.max()) < 1e-6 and float(trans.max()) < 1e-6
    bent = est.clone()
    bent[2, :3, :3] = bent[2, :3, :3] @ axis_angle_to_rotation_matrix(torch.tensor([[0.0, 0.0, math.radians(7.0)]],
                                                                                      dtype=DT))[0]
    rot, _ = relative_pose_errors(bent, tgt)
    i, j = torch.triu_indices(5, 5, 1)
    touches = (i == 2) | (j == 2)
    torch.testing.assert_close(rot[touches], torch.full((int(touches.sum()),), 7.0, dtype=DT), rtol=0, atol=1e-9)
    assert float(rot[~touches].max()) < 1e-6


def test_target_reprojection_errors_closed_form(generator):
    from mvcustom_core.cameras import CameraSet
    from mvcustom_core.eval.alignment import Similarity
    from mvcustom_core.eval.pose_errors import points_consistent_with_targets, target_reprojection_errors

    tgt = CameraSet.from_fov(_circle_c2w(6, radius=3.0), 50.0, (120, 160))
    world = 0.6 * torch.randn(40, 3, generator=generator, dtype=DT)
    uv, _ = tgt.project(world)  # [6, 40, 2]: every point seen by every camera
    obs_frame = torch.arange(6).repeat_interleave(40)
    obs_point = torch.arange(40).repeat(6)
    obs_uv = uv.reshape(-1, 2)
    # The "reconstruction" lives in another similarity frame: points = S^-1(world), alignment = S.
    r, t, s = _random_rotation(generator), torch.randn(3, generator=generator, dtype=DT), 0.4
    recon_points = ((world - t) @ r) / s
    sim = Similarity(torch.tensor(s, dtype=DT), r, t)
    err = target_reprojection_errors(recon_points, obs_point, obs_frame, obs_uv, sim, tgt)
    assert float(err.max()) < 1e-9
    assert points_consistent_with_targets(err, obs_point, 40) == 40
    # Roll target 2 by theta about its optical axis: its image turns about the principal point, so each of
    # its observations moves by 2 r sin(theta / 2), r = distance from the principal point.
    theta = math.radians(3.0)
    c2w = tgt.c2w.clone()
    c2w[2, :3, :3] = c2w[2, :3, :3] @ axis_angle_to_rotation_matrix(torch.tensor([[0.0, 0.0, theta]], dtype=DT))[0]
    rolled = CameraSet(tgt.K, c2w, tgt.image_size)
    err = target_reprojection_errors(recon_points, obs_point, obs_frame, obs_uv, sim, rolled)
    radius = (uv[2] - torch.tensor([80.0, 60.0], dtype=DT)).norm(dim=-1)
    torch.testing.assert_close(err[obs_frame == 2], 2 * radius * math.sin(theta / 2), rtol=0, atol=1e-9)
    assert float(err[obs_frame != 2].max()) < 1e-9
    expected = int((2 * radius * math.sin(theta / 2) < 4.0).sum())
    assert points_consistent_with_targets(err, obs_point, 40, 4.0) == expected < 40
