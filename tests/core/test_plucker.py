"""Plücker embedding: hand-computed values for a tiny camera, CameraCtrl's order and relative poses."""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.cameras import CameraSet, intrinsics_matrix, look_at
from mvcustom_core.cameras.plucker import plucker_embedding, relative_to_first_frame

F64 = torch.float64


def _tiny(c2w):
    # 2 x 2 image, f = 1, principal point at the centre (1, 1): pixel centres (0.5, 0.5) ... (1.5, 1.5)
    # have camera rays (±0.5, ±0.5, 1), unit (±0.5, ±0.5, 1)/sqrt(1.5).
    n = c2w.shape[0]
    K = intrinsics_matrix(torch.ones(n, dtype=F64), torch.ones(n, dtype=F64), 1.0, 1.0)
    return CameraSet(K=K, c2w=c2w, image_size=(2, 2))


def test_hand_computed_identity_and_translated_camera():
    c2w = torch.eye(4, dtype=F64).repeat(2, 1, 1)
    c2w[1, :3, 3] = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    cams = _tiny(c2w)
    emb = plucker_embedding(cams, relative_to_first=False)
    assert emb.shape == (2, 6, 2, 2) and emb.dtype == F64
    r = 1 / math.sqrt(1.5)
    # Pixel (row 0, col 1): u = 1.5, v = 0.5 -> d = (0.5, -0.5, 1) r.
    d = torch.tensor([0.5, -0.5, 1.0], dtype=F64) * r
    torch.testing.assert_close(emb[0, :, 0, 1], torch.cat([torch.zeros(3, dtype=F64), d]))
    # o = (1, 2, 3): o × d = (2·1 − 3·(−0.5), 3·0.5 − 1·1, 1·(−0.5) − 2·0.5) r = (3.5, 0.5, −1.5) r.
    m = torch.tensor([3.5, 0.5, -1.5], dtype=F64) * r
    torch.testing.assert_close(emb[1, :, 0, 1], torch.cat([m, d]))
    flipped = plucker_embedding(cams, relative_to_first=False, order="direction_first")
    torch.testing.assert_close(flipped[1, :, 0, 1], torch.cat([d, m]))


def test_rotated_camera_direction_and_moment():
    # Camera at (0, 0, 5) looking down -z (OpenCV c2w columns (1,0,0), (0,-1,0), (0,0,-1)): the centre ray
    # of a 1 x 1 image is d = (0, 0, -1), through the origin, so its moment o × d is zero.
    c2w = torch.tensor([[[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 5], [0, 0, 0, 1]]], dtype=F64)
    cams = CameraSet(K=intrinsics_matrix(torch.ones(1, dtype=F64), torch.ones(1, dtype=F64), 0.5, 0.5),
                     c2w=c2w, image_size=(1, 1))
    emb = plucker_embedding(cams, relative_to_first=False)
    torch.testing.assert_close(emb[0, :, 0, 0], torch.tensor([0, 0, 0, 0, 0, -1.0], dtype=F64))


def test_relative_to_first_matches_cameractrl_formula(generator):
    eye = torch.randn(3, 3, generator=generator, dtype=F64) * 3
    cams = CameraSet.from_fov(look_at(eye, torch.zeros(3, dtype=F64)), 60.0, (4, 6))
    rel = relative_to_first_frame(cams)
    torch.testing.assert_close(rel.c2w[0], torch.eye(4, dtype=F64))
    for i in range(3):  # CameraCtrl get_relative_pose: abs2rel = w2c[0]; c2w_rel = abs2rel @ c2w[i]
        torch.testing.assert_close(rel.c2w[i], torch.linalg.inv(cams.c2w[0]) @ cams.c2w[i])
    # The embedding is invariant to a rigid motion of the whole world when relative_to_first is on.
    move = look_at(torch.tensor([[1.0, 2, 3]], dtype=F64), torch.tensor([0.0, 1, 0], dtype=F64))[0]
    moved = cams.transformed(move)
    torch.testing.assert_close(plucker_embedding(moved), plucker_embedding(cams))
    assert not torch.allclose(plucker_embedding(moved, relative_to_first=False),
                              plucker_embedding(cams, relative_to_first=False))


def test_moment_is_orthogonal_to_direction_and_unit_directions(generator):
    eye = torch.randn(2, 3, generator=generator, dtype=F64) * 3
    cams = CameraSet.from_fov(look_at(eye, torch.zeros(3, dtype=F64)), 60.0, (5, 7))
    emb = plucker_embedding(cams, relative_to_first=False)
    m, d = emb[:, :3], emb[:, 3:]
    torch.testing.assert_close(d.norm(dim=1), torch.ones(2, 5, 7, dtype=F64))
    torch.testing.assert_close((m * d).sum(dim=1), torch.zeros(2, 5, 7, dtype=F64), rtol=0, atol=1e-12)
    # |o × d| is the distance from the world origin to the ray; the camera looks at the origin, so the
    # central ray (odd grid: pixel (2, 3) is the principal point) passes through it.
    torch.testing.assert_close(m[:, :, 2, 3], torch.zeros(2, 3, dtype=F64), rtol=0, atol=1e-12)


def test_other_resolution_rescales_intrinsics():
    cams = CameraSet.from_fov(torch.eye(4, dtype=F64)[None], 60.0, (16, 24))
    small = plucker_embedding(cams, 2, 3)
    torch.testing.assert_close(small, plucker_embedding(cams.with_image_size((2, 3))))
    assert small.shape == (1, 6, 2, 3)
    with pytest.raises(ValueError, match="order must be one of"):
        plucker_embedding(cams, order="dm")


def _cameractrl_reference(rows, H, W, pose_wh=(1280, 720)):
    """CameraCtrl's pipeline re-derived step by step in numpy from hehao13/CameraCtrl ``inference.py``:
    aspect fix of the normalized intrinsics, relative poses to frame 0, pixel grid + 0.5, (o × d, d)."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.float64)
    fx, fy, cx, cy = (rows[:, k].copy() for k in range(1, 5))
    pose_ratio, sample_ratio = pose_wh[0] / pose_wh[1], W / H
    if pose_ratio > sample_ratio:
        fx = H * pose_ratio * fx / W
    else:
        fy = W / pose_ratio * fy / H
    fx, fy, cx, cy = fx * W, fy * H, cx * W, cy * H
    w2c = np.tile(np.eye(4), (len(rows), 1, 1))
    w2c[:, :3, :] = rows[:, 7:].reshape(-1, 3, 4)
    c2w = np.linalg.inv(w2c)
    c2w = np.concatenate([np.eye(4)[None], w2c[0] @ c2w[1:]])
    j, i = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    out = []
    for f in range(len(rows)):
        d = np.stack([(i - cx[f]) / fx[f], (j - cy[f]) / fy[f], np.ones_like(i)], axis=-1)
        d = d / np.linalg.norm(d, axis=-1, keepdims=True)
        d = d @ c2w[f, :3, :3].T
        o = np.broadcast_to(c2w[f, :3, 3], d.shape)
        out.append(np.concatenate([np.cross(o, d), d], axis=-1).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


@pytest.mark.parametrize("size", [(8, 12), (12, 8)])  # wider (3:2) and taller than the 16:9 source
def test_real_pose_file_matches_cameractrl_pipeline(realestate_pose_files, size):
    from mvcustom_core.cameras.formats import cameractrl_resize, cameras_from_cameractrl_poses, load_camera_file

    path = realestate_pose_files[0]
    rows = [[float(t) for t in line.split()] for line in path.read_text().splitlines()[1:] if line.strip()]
    expected = _cameractrl_reference(rows, *size)
    via_rows = plucker_embedding(cameras_from_cameractrl_poses(rows, image_size=size))
    via_file = plucker_embedding(cameractrl_resize(load_camera_file(path), size))
    # CameraCtrl inverts the stored w2c (orthonormal only to ~3e-8) with np.linalg.inv; the importer snaps each
    # rotation to the nearest rotation first. The maps differ by ≤ 2e-7 on the shipped files, below the float32
    # CameraCtrl itself computes in.
    torch.testing.assert_close(via_rows, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(via_file, expected, rtol=0, atol=1e-6)
    # With exactly orthonormal rotations (nearest rotation by SVD) the two inverses agree and so do the maps.
    w2c = torch.tensor(rows, dtype=F64)[:, 7:].reshape(-1, 3, 4)
    u, _, vh = torch.linalg.svd(w2c[:, :, :3])
    w2c[:, :, :3] = u @ vh
    rows = [r[:7] + m.reshape(-1).tolist() for r, m in zip(rows, w2c)]
    torch.testing.assert_close(plucker_embedding(cameras_from_cameractrl_poses(rows, image_size=size)),
                               _cameractrl_reference(rows, *size), rtol=0, atol=1e-12)
