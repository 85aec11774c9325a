"""Ground truth for FeatureNeRF alone: fit it on the synthetic subject, check silhouettes and depth.

24 turntable views of the subject (no ground; two rings at 10° and 40° elevation) supervise opacity
(mask), background alphas and RGB with CustomDiffusion360's losses; 6 of them are the reference views
whose image-derived features FeatureNeRF projects. Four held-out views (other azimuths, elevation 25°)
are then rendered with
stratified samples followed by one importance-sampled pass from those weights (method.md §4.4) and
compared with the exact renders: opacity IoU ≥ 0.9 with the true mask, mean absolute relative error of
the expected ray depth ≤ 5 % inside the mask.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from mvcustom_core.cameras import CameraSet
from mvcustom_core.cameras.normalize import normalize_cameras
from mvcustom_core.customization.featurenerf import FeatureNeRF, FeatureNeRFConfig
from mvcustom_core.customization.losses import featurenerf_losses, resize_mask
from mvcustom_core.synthetic import SyntheticScene, turntable_cameras

TRAIN_GRID = (16, 16)  # training renders: 2 targets × 256 rays × 24 samples × 6 reference views
EVAL_GRID = (32, 32)
CHANNELS = 16
STEPS = 250
LR = 1e-2
TARGETS_PER_STEP = 3


def _reference_features(rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N, C, h, w]`` fixed image-derived features: RGB, mask and a fixed random 1×1 mix of them."""
    x = F.interpolate(torch.cat([rgb, mask], 1), size=(32, 32), mode="area")
    mix = torch.randn(CHANNELS - 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    return torch.cat([x, torch.tanh(torch.einsum("oc,nchw->nohw", mix, x))], 1)


def _ray_length(depth_z: torch.Tensor, cams: CameraSet) -> torch.Tensor:
    """z-depth ``[F, 1, H, W]`` → distance along the unit pixel ray ``[F, H, W]``."""
    dirs = cams.ray_directions()
    cos = (dirs * cams.forward[:, None, None, :]).sum(-1)
    return depth_z[:, 0] / cos


@pytest.mark.slow
def test_featurenerf_fits_the_synthetic_subject_silhouette_and_depth():
    torch.manual_seed(0)
    scene = SyntheticScene(seed=1, subject="default", ground=False, max_frequency=3.0)
    ring = dict(radius=2.5, image_size=(48, 48), fov_y_deg=32.0)  # the subject fills most of the frame
    train = CameraSet.concat([turntable_cameras(12, elevation_deg=10.0, **ring),
                              turntable_cameras(12, elevation_deg=40.0, start_azimuth_deg=15.0, **ring)])
    held = turntable_cameras(4, elevation_deg=25.0, start_azimuth_deg=37.0, **ring)
    truth_train, truth_held = scene.render(train, supersample=2), scene.render(held, supersample=2)
    both, _ = normalize_cameras(CameraSet.concat([train, held]), radius=1.0, center=torch.zeros(3))
    scale = 1.0 / 2.5  # every camera is 2.5 from the subject centre
    train_n, held_n = both[:24], both[24:]

    ref_idx = torch.tensor([0, 4, 8, 15, 19, 23])  # three per ring, spread in azimuth
    ref_feats = _reference_features(truth_train.rgb[ref_idx], truth_train.mask[ref_idx])
    ref_cams = train_n[ref_idx]

    nerf = FeatureNeRF(FeatureNeRFConfig(channels=CHANNELS, num_samples=24, near=0.3, far=1.7))
    opt = torch.optim.Adam(nerf.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    start, steps = time.perf_counter(), STEPS
    for step in range(steps):
        pick = torch.randint(0, 24, (TARGETS_PER_STEP,), generator=gen)
        out = nerf(ref_feats, ref_cams, train_n[pick], TRAIN_GRID, jitter=True, generator=gen)
        loss = featurenerf_losses(out, truth_train.mask[pick], truth_train.rgb[pick])["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    fit_seconds = time.perf_counter() - start

    with torch.no_grad():
        coarse = nerf(ref_feats, ref_cams, held_n, EVAL_GRID)
        fine = nerf(ref_feats, ref_cams, held_n, EVAL_GRID, prev_weights=coarse.weights)
    true_mask = resize_mask(truth_held.mask, EVAL_GRID) > 0.5
    pred_mask = fine.opacity > 0.5
    iou = (pred_mask & true_mask).sum() / (pred_mask | true_mask).sum()

    true_t = _ray_length(truth_held.depth, held) * scale  # normalized units
    true_t = F.interpolate(true_t[:, None].where(torch.isfinite(true_t[:, None]), torch.zeros(())),
                           size=EVAL_GRID, mode="nearest")[:, 0]
    inside = true_mask & (resize_mask(truth_held.mask, EVAL_GRID) > 0.999)  # away from the silhouette
    rel = ((fine.surface_depth() - true_t).abs() / true_t)[inside]
    print(f"fit {steps} steps in {fit_seconds:.0f} s; held-out IoU {iou:.3f}, depth abs rel {rel.mean():.4f}")
    assert iou >= 0.9
    assert rel.mean() <= 0.05
