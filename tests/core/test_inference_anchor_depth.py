"""Anchor depth: least-squares alignment recovers known scale/shift exactly, disparity handling, ray length → z."""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.cameras import CameraSet
from mvcustom_core.inference.anchor_depth import (AnchorDepthError, align_depth, fit_scale_shift,
                                                  ray_length_to_z)


def _scene_depth(h: int = 12, w: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 1.5 + torch.rand(h, w, generator=g, dtype=torch.float64) * 2.0  # z in [1.5, 3.5]


def test_fit_recovers_known_affine_map_exactly():
    x = torch.linspace(0, 1, 50, dtype=torch.float64)
    s, b = fit_scale_shift(x, 3.25 * x - 0.75)
    assert s == pytest.approx(3.25, abs=1e-12) and b == pytest.approx(-0.75, abs=1e-12)


def test_depth_kind_alignment_recovers_scale_and_shift():
    ref = _scene_depth()
    raw = (ref - 0.4) / 2.5  # a depth map off by scale 2.5 and shift 0.4
    out = align_depth(raw, ref, kind="relative")
    assert out.scale == pytest.approx(2.5, abs=1e-9) and out.shift == pytest.approx(0.4, abs=1e-9)
    torch.testing.assert_close(out.depth.double(), ref, rtol=0, atol=1e-5)


def test_disparity_alignment_is_done_in_inverse_depth():
    ref = _scene_depth()
    disparity = (1.0 / ref - 0.05) / 0.3  # relative inverse depth: 1/z = 0.3·d + 0.05
    out = align_depth(disparity.float(), ref.float(), kind="disparity")
    assert out.scale == pytest.approx(0.3, rel=1e-5) and out.shift == pytest.approx(0.05, abs=1e-5)
    torch.testing.assert_close(out.depth.double(), ref, rtol=1e-5, atol=0)


def test_mask_limits_the_fit_to_trusted_pixels():
    ref = _scene_depth()
    raw = ref / 2.0
    corrupted = ref.clone()
    mask = torch.zeros_like(ref, dtype=torch.bool)
    mask[:6] = True
    corrupted[6:] = 100.0  # the reference is wrong outside the mask
    out = align_depth(raw, corrupted, mask, kind="relative")
    assert out.scale == pytest.approx(2.0, abs=1e-9) and out.shift == pytest.approx(0.0, abs=1e-9)


def test_manual_override_and_median_fallback():
    raw = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    manual = align_depth(raw, _scene_depth(2, 2), kind="relative", scale=2.0, shift=1.0)
    torch.testing.assert_close(manual.depth, raw * 2 + 1)
    # No reference: the median depth lands at the anchor's distance to the origin.
    median = align_depth(raw, kind="relative", center_distance=5.0)
    assert float(median.depth.flatten().median()) == pytest.approx(5.0)
    disp = align_depth(raw, kind="disparity", center_distance=5.0)
    assert float((1 / disp.depth).flatten().median()) == pytest.approx(1 / 5.0)
    with pytest.raises(AnchorDepthError, match="reference depth, a center_distance or a manual scale"):
        align_depth(raw)
    with pytest.raises(AnchorDepthError, match="distinct depths"):
        align_depth(raw, torch.zeros(2, 2), kind="relative")


def test_ray_length_to_z_on_a_fronto_parallel_plane():
    cam = CameraSet.from_fov(torch.eye(4, dtype=torch.float64)[None], 70.0, (10, 14))
    z = 2.0
    length = z * cam.with_image_size((5, 7)).ray_directions()[0] @ torch.tensor([0, 0, 1.0], dtype=torch.float64)
    length = z / length * z  # t = z / cos(angle)
    torch.testing.assert_close(ray_length_to_z(length, cam), torch.full((5, 7), z, dtype=torch.float64))


def test_ray_length_to_z_for_a_rotated_off_centre_camera_at_a_coarser_grid():
    """Ground truth: points at known camera z through the grid's pixel centres; their distance to the centre is t."""
    from mvcustom_core.cameras import look_at

    c2w = look_at(torch.tensor([[0.7, -0.4, -1.9]], dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    k = torch.tensor([[[150.0, 0.0, 70.0], [0.0, 140.0, 52.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    cam = CameraSet(K=k, c2w=c2w, image_size=(96, 128))
    grid = cam.with_image_size((6, 8))
    z = 1.0 + torch.rand(6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    points = grid.unproject(grid.pixel_centers().reshape(1, -1, 2), z.reshape(1, -1))[0]
    length = (points - cam.centers[0]).norm(dim=-1).reshape(6, 8)
    torch.testing.assert_close(ray_length_to_z(length, cam), z, rtol=1e-12, atol=1e-12)


def test_invalid_pixels_are_left_out_of_the_fit_and_the_result():
    ref = _scene_depth()
    raw = ((ref - 0.4) / 2.5).clone()
    raw[0, :4] = float("nan")
    raw[1, :4] = float("inf")
    bad_ref = ref.clone()
    bad_ref[2, :4] = 0.0  # unknown reference pixels
    bad_ref[3, :4] = float("inf")
    raw[2:4, :4] = 50.0  # would ruin the fit if used
    out = align_depth(raw, bad_ref, kind="relative")
    assert out.scale == pytest.approx(2.5, abs=1e-9) and out.shift == pytest.approx(0.4, abs=1e-9)
    assert not out.valid[:2, :4].any() and (out.depth[:2, :4] == 0).all()
    # Disparity: s·x + b <= 0 is no depth (behind the camera or at infinity).
    disp = align_depth(torch.tensor([[1.0, 2.0], [-1.0, 0.0]]), kind="disparity", scale=0.5, shift=0.0)
    assert disp.valid.tolist() == [[True, True], [False, False]]
    torch.testing.assert_close(disp.depth, torch.tensor([[2.0, 1.0], [0.0, 0.0]]))


def _customized_field(unet, customize_tiny):
    """A copy of the tiny UNet with one pose block and a captured reference bank, and its anchor's field depth."""
    from mvcustom_core.cameras import look_at
    from mvcustom_core.inference import field_depth

    az = torch.linspace(-0.25, 0.25, 4)
    eye = torch.stack([1.8 * torch.sin(az), torch.full_like(az, -0.3), -1.8 * torch.cos(az)], dim=-1)
    cams = CameraSet.from_fov(look_at(eye, torch.zeros(3)), 50.0, (64, 64))
    model, ctx, _ = customize_tiny(unet, cams)
    ref8 = field_depth(model, ctx, cams[1], (8, 8), opacity_threshold=0.05)[0]
    return model, ctx, cams[:3], ref8


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device for a UNet off the trajectory's device"))])
def test_field_depth_and_its_alignment_follow_the_trajectorys_device(unet, customize_tiny, device):
    """The DFR node resolves a CPU trajectory against a model that may sit on the GPU: the field depth, the fit mask
    and the anchor geometry must all end up on the trajectory's device."""
    from mvcustom_core.inference import DFRPlan, field_depth, resolve_anchor_geometry

    model, ctx, cams, ref8 = _customized_field(unet, customize_tiny)
    assert (ref8 > 0).sum() > 4
    model.to(device)
    depth, opacity = field_depth(model, ctx, cams[1], (8, 8), opacity_threshold=0.05)
    assert depth.device == opacity.device == cams.K.device
    torch.testing.assert_close(depth, ref8, rtol=1e-4, atol=1e-5)
    # A disparity image 1/z = 0.3·d + 0.05 of that depth is aligned back to it.
    disparity = torch.where(ref8 > 0, (1 / ref8.clamp_min(1e-6) - 0.05) / 0.3, torch.full_like(ref8, 7.0))
    image = disparity.repeat_interleave(8, 0).repeat_interleave(8, 1)
    plan = DFRPlan(depth=image, depth_kind="disparity", opacity_threshold=0.05)
    geometry, aligned = resolve_anchor_geometry(plan, cams, unet=model, pose_context=ctx)
    assert aligned.scale == pytest.approx(0.3, rel=1e-3) and aligned.shift == pytest.approx(0.05, abs=1e-3)
    assert geometry.depth.device == cams.K.device
    field_only, _ = resolve_anchor_geometry(DFRPlan(opacity_threshold=0.05), cams, unet=model, pose_context=ctx)
    assert field_only.depth.device == cams.K.device
    assert field_only.coverage((8, 8)).shape == (3, 1, 8, 8)


def test_field_depth_uses_the_cond_entry_of_a_two_branch_bank(unet, customize_tiny):
    """Customizations store the bank as [uncond, cond]; the field depth comes from the cond entry (the references
    as captured with the subject's prompt, as in training)."""
    from mvcustom_core.inference import field_depth

    model, ctx, cams, ref8 = _customized_field(unet, customize_tiny)
    name = next(iter(ctx.references))
    one = ctx.references[name]  # [1, N, C, h, w]
    ctx.references[name] = torch.cat([torch.zeros_like(one), one])  # uncond entry: no features at all
    torch.testing.assert_close(field_depth(model, ctx, cams[1], (8, 8), opacity_threshold=0.05)[0], ref8)
    ctx.references[name] = torch.cat([one, torch.zeros_like(one)])
    assert not torch.allclose(field_depth(model, ctx, cams[1], (8, 8), opacity_threshold=0.05)[0], ref8)


# ------------------------------------------------------------------------------------------ robust alignment
def _corrupt(ref: torch.Tensor, share: float, factor: float, seed: int = 3) -> torch.Tensor:
    """The reference with a random ``share`` of its pixels off by ``factor`` (floaters, silhouette rims)."""
    bad = torch.rand(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=ref.dtype) < share
    return torch.where(bad, ref * factor, ref), bad


@pytest.mark.parametrize("kind", ["metric", "relative", "disparity"])
def test_robust_fit_ignores_a_fifth_of_wrong_reference_pixels(kind):
    ref = 1.5 + torch.rand(24, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2.0
    raw = {"metric": ref / 2.5, "relative": (ref - 0.4) / 2.5, "disparity": (1 / ref - 0.05) / 0.3}[kind]
    corrupted, bad = _corrupt(ref, 0.2, 3.0)
    out = align_depth(raw, corrupted, kind=kind)
    torch.testing.assert_close(out.depth, ref, rtol=1e-9, atol=0)
    assert out.fit.inliers == pytest.approx(1 - float(bad.double().mean()), abs=1e-9)  # the corrupted ones out
    assert out.fit.residual == pytest.approx(0.0, abs=1e-9)  # the median pixel is an inlier, fitted exactly
    # plain least squares on the same data is dragged by the outliers
    x, y = (raw, corrupted) if kind != "disparity" else (raw, 1 / corrupted)
    s, b = fit_scale_shift(x, y)
    plain = s * raw + b if kind != "disparity" else 1 / (s * raw + b)
    assert float(((plain - ref).abs() / ref).median()) > 0.05


@pytest.mark.parametrize("kind", ["metric", "relative", "disparity"])
@pytest.mark.parametrize("share", [0.1, 0.3, 0.45])
def test_robust_fit_ignores_the_background_seen_inside_the_fields_silhouette(kind, share):
    """Leverage outliers: where the field's silhouette is wider than the subject, the estimate sees the background
    (a far-off x) while the reference holds the subject's depth. Over a subject's narrow depth range a nearly flat
    line fits every reference value, so a fit that starts from least squares ends there (measured before the
    least-median start: scale off by 90 % at 10 % of such pixels); a 50 %-breakdown fit ignores up to half."""
    g = torch.Generator().manual_seed(5)
    ref = 2.0 + 0.5 * torch.rand(16, 16, generator=g, dtype=torch.float64)  # the subject: depth 2 to 2.5
    background = 5.0 + 3.0 * torch.rand(16, 16, generator=g, dtype=torch.float64)
    seen = torch.where(torch.rand(16, 16, generator=g, dtype=torch.float64) < share, background, ref)
    raw = {"metric": seen / 2.5, "relative": (seen - 0.4) / 2.5, "disparity": (1 / seen - 0.05) / 0.3}[kind]
    out = align_depth(raw, ref, kind=kind)
    truth = {"metric": (2.5, 0.0), "relative": (2.5, 0.4), "disparity": (0.3, 0.05)}[kind]
    assert out.scale == pytest.approx(truth[0], rel=1e-9) and out.shift == pytest.approx(truth[1], rel=1e-9, abs=1e-12)
    torch.testing.assert_close(out.depth, seen, rtol=1e-9, atol=0)  # the background too, at its true depth
    assert out.fit.inliers == pytest.approx(float((seen == ref).double().mean()), abs=1e-9)


def test_metric_kind_fits_scale_only_and_reports_the_relative_residual():
    ref = _scene_depth()
    noise = 1 + 0.01 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    raw = ref * noise / 4.0 + 0.3  # a metric map with a spurious offset: scale-only cannot absorb it
    out = align_depth(raw, ref, kind="metric")
    assert out.shift == 0.0
    rel = align_depth(raw, ref, kind="relative")
    assert rel.shift == pytest.approx(-0.3 * rel.scale, rel=0.05)  # the affine model absorbs the offset
    assert rel.fit.residual == pytest.approx(0.0067, rel=0.35)  # ~ median |N(0, 1 %)|
    assert out.fit.residual > 3 * rel.fit.residual
    assert "residual" in out.summary() and "within 1 %" in out.summary()


def test_invalid_depth_pixels_stay_out_of_fit_and_result():
    ref = _scene_depth()
    raw = (1 / ref - 0.05) / 0.3
    valid = torch.ones_like(ref, dtype=torch.bool)
    valid[:, :3] = False
    raw = torch.where(valid, raw, torch.zeros_like(raw))  # e.g. clipped pixels: value 0, not depth
    out = align_depth(raw, ref, kind="disparity", valid=valid)
    torch.testing.assert_close(out.depth[valid], ref[valid], rtol=1e-9, atol=0)
    assert not out.valid[:, :3].any() and out.fit.pixels == int(valid.sum())


def test_a_field_transparent_from_the_anchor_gives_no_surface_and_sampling_runs(unet, customize_tiny):
    """The whole-job example failed when training ran 40 steps instead of 12: training lowers the density everywhere
    (from the zero-initialised head's uniform fog, opacity 1 − e⁻² on [0, 2]) before it separates subject from
    background, so for a while the field sees no surface from the anchor. That is a state of the field, not an error:
    DFR then replaces nothing (a warning says so) and the job completes."""
    from mvcustom_core.customization import pose_blocks
    from mvcustom_core.inference import CLCPlan, DFRPlan, field_depth, mvcustom_sample, resolve_anchor_geometry
    from mvcustom_core.inference.dfr import DFRWarning

    model, ctx, cams, _ = _customized_field(unet, customize_tiny)
    with torch.no_grad():
        for block in pose_blocks(model):
            block.featurenerf.decoder.weight[0] = 0.0  # σ = exp(0) = 1 everywhere: fog, as at initialisation
    fog = field_depth(model, ctx, cams[1], (8, 8))[1]
    torch.testing.assert_close(fog, torch.full_like(fog, 1 - math.exp(-2.0)), rtol=0, atol=1e-5)
    plan = DFRPlan(opacity_threshold=0.9, steps=2)  # more than the fog: transparent, as after ~40 training steps
    with pytest.warns(DFRWarning, match=r"transparent from the anchor view \(highest opacity 0\.86"):
        geometry, _ = resolve_anchor_geometry(plan, cams, unet=model, pose_context=ctx)
    assert not (geometry.depth > 0).any() and geometry.coverage((8, 8)).sum() == 0
    text = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(0))
    common = dict(pose_context=ctx, seed=1, steps=2, cfg=1.0)
    with pytest.warns(DFRWarning):
        with_dfr = mvcustom_sample(model, text, None, cams, dfr=plan, **common)
    torch.testing.assert_close(with_dfr, mvcustom_sample(model, text, None, cams, **common), rtol=0, atol=0)
    with pytest.warns(DFRWarning):
        completed = mvcustom_sample(model, text, None, cams, dfr=plan, clc=CLCPlan(fraction=1.0), **common)
    assert torch.isfinite(completed).all()
    # A depth image is fitted to the field's opaque pixels; with none, it is scaled to the anchor's distance.
    with pytest.warns(DFRWarning, match="could not be fitted"):
        _, aligned = resolve_anchor_geometry(DFRPlan(depth=torch.full((64, 64), 2.0), depth_kind="metric",
                                                     opacity_threshold=0.9), cams, unet=model, pose_context=ctx)
    assert aligned.scale == pytest.approx(float(cams[1].centers[0].norm()) / 2.0)
    assert aligned.method == "median" and aligned.fit is None and "median depth" in aligned.summary()
