"""SyntheticScene: renders checked against closed-form geometry, not against itself."""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.synthetic import (BACKGROUND_ID, FIRST_PART_ID, GROUND_ID, SceneError, SyntheticScene,
                                     turntable_cameras)

D = torch.float64


def _cams(eyes, targets, size=(24, 32), fov=50.0, dtype=D) -> CameraSet:
    eyes = torch.tensor(eyes, dtype=D)
    targets = torch.tensor(targets, dtype=D).expand_as(eyes)
    return CameraSet.from_fov(look_at(eyes, targets), fov, size).to(dtype=dtype)


def _flat(x):
    """``[F, C, H, W]`` -> ``[F, H*W, C]``."""
    return x.flatten(2).transpose(1, 2)


# Cameras at several heights and tilts, some seeing the horizon (sky) and some looking straight down.
GROUND_CAMS = dict(eyes=[[0.3, -1.0, -2.5], [2.0, -0.2, 1.0], [-1.5, -3.0, 0.5], [0.0, 0.5, -3.0]],
                   targets=[[0.0, -0.4, 3.0], [-4.0, 0.0, -2.0], [-1.4, 0.8, 0.6], [0.5, 0.6, 5.0]])


def test_ground_depth_equals_closed_form():
    scene = SyntheticScene(seed=1, subject="none")
    cams = _cams(**GROUND_CAMS)
    out = scene.render(cams)
    g = scene.ground_y
    # Ray through pixel (u, v): X(z) = C + z R [(u - cx) / fx, (v - cy) / fy, 1]; the plane y = g gives
    # z = (g - C_y) / (R d)_y when positive (camera above the plane, ray going down), else the sky.
    K, R, C = cams.K, cams.rotations, cams.centers
    uv = cams.pixel_centers().reshape(-1, 2)
    for f in range(len(cams)):
        d_cam = torch.stack([(uv[:, 0] - K[f, 0, 2]) / K[f, 0, 0], (uv[:, 1] - K[f, 1, 2]) / K[f, 1, 1],
                             torch.ones(len(uv), dtype=D)], dim=-1)
        dy = d_cam @ R[f, 1]
        z = (g - C[f, 1]) / dy
        hits = z > 0
        depth = out.depth[f, 0].reshape(-1)
        ids = out.object_id[f, 0].reshape(-1)
        assert hits.any() and (f != 0 or (~hits).any())  # the first camera sees ground and sky
        torch.testing.assert_close(depth[hits], z[hits], rtol=1e-10, atol=1e-10)
        assert torch.equal(ids, torch.where(hits, GROUND_ID, BACKGROUND_ID))
        assert torch.isinf(depth[~hits]).all() and (depth[~hits] > 0).all()
    assert out.mask.sum() == 0  # no subject


@pytest.fixture(scope="module")
def figurine():
    scene = SyntheticScene(seed=0, subject="default")
    cams = CameraSet.concat([
        turntable_cameras(5, elevation_deg=25.0, radius=2.6, image_size=(40, 48), dtype=D),
        _cams([[0.4, -2.6, 0.3], [1.8, 0.3, -1.2]], [[0.0, 0.0, 0.0], [0.0, 0.2, 0.0]], size=(40, 48)),
    ])
    return scene, cams, scene.render(cams)


def test_unprojected_depth_lies_on_the_hit_surface_and_is_visible(figurine):
    scene, cams, out = figurine
    uv = cams.pixel_centers().reshape(1, -1, 2).expand(len(cams), -1, -1)
    depth = out.depth.flatten(1)
    ids = out.object_id.flatten(1)
    geo = torch.isfinite(depth)
    assert (ids[~geo] == BACKGROUND_ID).all() and (ids[geo] != BACKGROUND_ID).all()
    pts = cams.unproject(uv, torch.where(geo, depth, 1.0))
    torch.testing.assert_close(pts[geo], _flat(out.points)[geo], rtol=0, atol=1e-9)
    # Each point is on its own object's surface (implicit = 0: exact for sphere/box/cylinder/plane
    # distances, scaled radial for the ellipsoid) ...
    assert scene.implicit(pts[geo], ids[geo]).abs().max() < 1e-9
    # ... and outside every other solid, and the open segment from the camera to it crosses no solid:
    # the hit is the first one.
    centres = cams.centers[:, None, :]
    for frac in (0.2, 0.5, 0.8, 0.95, 0.999, 1.0):
        seg = centres + frac * (pts - centres)
        for i in range(GROUND_ID, scene.num_objects):
            other = torch.full_like(ids, i)
            level = scene.implicit(seg, other)[geo]
            own = ids[geo] == i
            if frac == 1.0:
                level = level[~own]
            assert level.min() > -1e-9, (frac, i)
    # All subject parts are seen somewhere (the render is not dominated by one solid).
    assert set(ids.unique().tolist()) == set(range(scene.num_objects))


def test_hit_points_reproject_to_their_pixel_centres(figurine):
    _, cams, out = figurine
    geo = out.valid.flatten(1)
    uv, z = cams.project(_flat(out.points))
    centres = cams.pixel_centers().reshape(1, -1, 2).expand_as(uv)
    torch.testing.assert_close(uv[geo], centres[geo], rtol=0, atol=1e-9)
    torch.testing.assert_close(z[geo], out.depth.flatten(1)[geo], rtol=0, atol=1e-9)


def test_sky_pixels_have_no_depth_zero_mask_and_store_the_ray_direction():
    scene = SyntheticScene(seed=2, subject="sphere")
    cams = _cams([[0.0, -0.2, -3.0]], [[0.0, -0.6, 0.0]])  # looking slightly up: sky above the sphere
    out = scene.render(cams)
    sky = out.object_id == BACKGROUND_ID
    assert 0.2 < sky.float().mean() < 0.9
    assert torch.isposinf(out.depth[sky]).all() and (out.mask[sky] == 0).all()
    dirs = cams.ray_directions().permute(0, 3, 1, 2)
    torch.testing.assert_close(out.points.permute(0, 2, 3, 1)[sky[:, 0]],
                               dirs.permute(0, 2, 3, 1)[sky[:, 0]], rtol=0, atol=1e-12)
    # Sky colour depends on the direction only: a camera moved along no rotation sees the same sky.
    moved = CameraSet(K=cams.K, c2w=cams.c2w.clone(), image_size=cams.image_size)
    moved.c2w[0, :3, 3] += torch.tensor([0.0, -5.0, 0.0], dtype=D)  # far above: the sphere is off-view
    out2 = scene.render(moved)
    both = sky & (out2.object_id == BACKGROUND_ID)
    assert both.sum() > 100
    torch.testing.assert_close(out2.rgb[both.expand_as(out.rgb)], out.rgb[both.expand_as(out.rgb)],
                               rtol=0, atol=1e-12)


def test_sphere_mask_equals_analytic_silhouette():
    scene = SyntheticScene(seed=0, subject="sphere")
    r = scene.subject_radius
    assert r == pytest.approx(0.6)
    # Cameras aimed at the centre: the silhouette is a circle of radius f r / sqrt(D^2 - r^2) around
    # the principal point (the tangent cone's half-angle is asin(r / D)).
    size = (64, 64)
    cams = turntable_cameras(6, elevation_deg=30.0, radius=2.2, image_size=size, fov_y_deg=45.0, dtype=D)
    out = scene.render(cams)
    f = cams.K[0, 0, 0]
    rho = f * r / math.sqrt(2.2 ** 2 - r ** 2)
    uv = cams.pixel_centers()
    circle = ((uv - torch.tensor([size[1] / 2, size[0] / 2], dtype=D)).norm(dim=-1) < rho).to(D)
    for m in out.mask[:, 0]:
        iou = (m * circle).sum() / ((m + circle) > 0).sum()
        assert iou >= 0.99
    # Off-centre cameras: a pixel is covered iff its ray is within the cone angle of the centre.
    cams = _cams([[1.0, -0.7, -2.0], [-2.5, -1.0, 0.4]], [[0.6, 0.3, 0.0], [0.0, -0.5, 0.6]], size=(48, 64))
    out = scene.render(cams)
    dirs = cams.ray_directions()
    to_c = -cams.centers
    dist = to_c.norm(dim=-1)
    cos = (dirs * (to_c / dist[:, None])[:, None, None]).sum(-1)
    inside = (cos > torch.cos(torch.asin(r / dist))[:, None, None]).to(D)
    assert inside.sum() > 200 and (inside.sum(dim=(1, 2)) < 48 * 64).all()
    assert (out.mask[:, 0] != inside).sum() <= 2  # only pixels within rounding of the rim may differ


def test_sphere_coverage_integrates_to_the_silhouette_area():
    scene = SyntheticScene(seed=0, subject="sphere")
    r, dist = scene.subject_radius, 2.5
    cams = turntable_cameras(1, elevation_deg=10.0, radius=dist, image_size=(40, 40), fov_y_deg=40.0, dtype=D)
    out = scene.render(cams, supersample=8)
    rho = float(cams.K[0, 0, 0]) * r / math.sqrt(dist ** 2 - r ** 2)
    area = math.pi * rho ** 2
    # An 8x8 sample grid per pixel: the error is a fraction of the rim length in pixels over 8.
    assert out.coverage.sum(dim=(1, 2, 3)).sub(area).abs().max() < 2 * math.pi * rho / 64
    rim = (out.coverage > 0) & (out.coverage < 1)
    assert rim.any() and torch.equal(out.coverage[~rim], out.mask[~rim])


def test_mask_is_binary_subject_coverage(figurine):
    _, _, out = figurine
    assert out.mask.dtype == out.depth.dtype
    assert torch.equal(out.mask, (out.object_id >= FIRST_PART_ID).to(out.mask.dtype))


def test_same_seed_is_identical_other_seed_differs_in_texture_only():
    cams = turntable_cameras(2, image_size=(24, 24))
    a = SyntheticScene(seed=7).render(cams)
    b = SyntheticScene(seed=7).render(cams)
    c = SyntheticScene(seed=8).render(cams)
    for field in ("rgb", "depth", "mask", "object_id", "points"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert (a.rgb - c.rgb).abs().mean() > 0.05
    assert torch.equal(a.depth, c.depth) and torch.equal(a.object_id, c.object_id)


def test_colours_equal_color_at_of_the_hit_points(figurine):
    scene, _, out = figurine
    rgb = scene.color_at(out.points.permute(0, 2, 3, 1), out.object_id[:, 0])
    torch.testing.assert_close(rgb.permute(0, 3, 1, 2), out.rgb, rtol=0, atol=1e-12)
    assert 0 <= out.rgb.min() and out.rgb.max() <= 1


def test_surface_colour_is_view_independent(figurine):
    """A point seen by one camera has the same colour through another camera's pixel centre."""
    scene, cams, out = figurine
    pts = _flat(out.points)[0]
    ids = out.object_id[0, 0].reshape(-1)
    picks = torch.nonzero(ids >= GROUND_ID).flatten()[::97][:12]
    rgb_a = _flat(out.rgb)[0, picks]
    # New cameras from other directions, each aimed at one picked point; with an odd image size the
    # principal point is the centre of pixel (8, 8), so the centre ray goes exactly through the point.
    eyes = pts[picks] + 2.0 * torch.nn.functional.normalize(
        scene.normal_at(pts[picks], ids[picks]) + torch.tensor([0.3, -0.4, 0.2], dtype=D), dim=-1)
    cams_b = CameraSet.from_fov(look_at(eyes, pts[picks]), 40.0, (17, 17))
    out_b = scene.render(cams_b)
    centre_id = out_b.object_id[:, 0, 8, 8]
    seen = centre_id == ids[picks]
    assert seen.sum() >= 8
    torch.testing.assert_close(out_b.points[seen, :, 8, 8], pts[picks][seen], rtol=0, atol=1e-8)
    torch.testing.assert_close(out_b.rgb[seen, :, 8, 8], rgb_a[seen], rtol=0, atol=1e-7)


def test_two_cameras_in_one_call_equal_separate_calls():
    scene = SyntheticScene(seed=4)
    cams = turntable_cameras(2, elevation_deg=10.0, image_size=(20, 28), start_azimuth_deg=30.0)
    both = scene.render(cams, supersample=2)
    parts = [scene.render(cams[i], supersample=2) for i in range(2)]
    for field in ("rgb", "depth", "mask", "object_id", "points", "coverage"):
        torch.testing.assert_close(getattr(both, field), torch.cat([getattr(p, field) for p in parts]),
                                   rtol=1e-5, atol=1e-5, msg=field)


def test_supersampled_rgb_averages_shifted_renders_and_keeps_centre_geometry():
    scene = SyntheticScene(seed=5, max_frequency=8.0)
    cams = turntable_cameras(2, elevation_deg=15.0, image_size=(16, 20), dtype=D)
    s = 3
    out = scene.render(cams, supersample=s)
    plain = scene.render(cams)
    for field in ("depth", "mask", "object_id", "points"):
        assert torch.equal(getattr(out, field), getattr(plain, field)), field
    assert torch.equal(plain.coverage, plain.mask)
    # Sub-pixel sample (a, b) of pixel (i, j) sits at (j + (b + .5) / s, i + (a + .5) / s): the pixel
    # centre of a camera whose principal point moved by (.5 - (b + .5) / s, .5 - (a + .5) / s).
    acc = torch.zeros_like(out.rgb)
    for a in range(s):
        for b in range(s):
            K = cams.K.clone()
            K[:, 0, 2] += 0.5 - (b + 0.5) / s
            K[:, 1, 2] += 0.5 - (a + 0.5) / s
            acc += scene.render(CameraSet(K=K, c2w=cams.c2w, image_size=cams.image_size)).rgb
    torch.testing.assert_close(out.rgb, acc / s ** 2, rtol=0, atol=1e-12)
    assert (out.rgb - plain.rgb).abs().max() > 1e-3


def test_scene_geometry_properties():
    scene = SyntheticScene(subject="default")
    assert scene.subject_center == (0.0, 0.0, 0.0)
    cams = turntable_cameras(8, elevation_deg=40.0, radius=3.0, image_size=(32, 32), dtype=D)
    out = scene.render(cams)
    pts = out.points.permute(0, 2, 3, 1)[out.mask[:, 0] > 0]
    assert pts.norm(dim=-1).max() <= scene.subject_radius + 1e-9
    assert pts.norm(dim=-1).max() > 0.8 * scene.subject_radius  # the bound is not loose
    assert (pts[:, 1] <= scene.ground_y + 1e-9).all()
    assert SyntheticScene(ground=False).render(cams).object_id.ne(GROUND_ID).all()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(SceneError, match="subject"):
        SyntheticScene(subject="teapot")
    with pytest.raises(SceneError, match="max_frequency"):
        SyntheticScene(max_frequency=0.1)
    scene = SyntheticScene(subject="sphere")
    cams = turntable_cameras(1, image_size=(8, 8))
    with pytest.raises(SceneError, match="supersample"):
        scene.render(cams, supersample=0)
    with pytest.raises(SceneError, match="CameraSet"):
        scene.render(cams.c2w)
    with pytest.raises(ValueError, match="object_id"):
        scene.color_at(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(SceneError, match="object_id"):
        scene.color_at(torch.zeros(4, 3), torch.full((4,), 9))


def _warp_psnr(size: int) -> float:
    """PSNR of view B's render warped into view A through A's exact depth, on pixels A and B share."""
    scene = SyntheticScene(seed=0, max_frequency=2.0)
    a = turntable_cameras(1, elevation_deg=20.0, radius=2.6, image_size=(size, size), fov_y_deg=45.0, dtype=D)
    b = turntable_cameras(1, elevation_deg=25.0, radius=2.6, image_size=(size, size), fov_y_deg=45.0,
                          start_azimuth_deg=20.0, dtype=D)
    out_a, out_b = scene.render(a), scene.render(b)
    pts = out_a.points[0].reshape(3, -1).T
    ids = out_a.object_id[0, 0].reshape(-1)
    uv, _ = b.project(pts[None])
    grid = (uv / size * 2 - 1).reshape(1, size, size, 2)  # align_corners=False matches centres at +0.5
    warped = torch.nn.functional.grid_sample(out_b.rgb, grid, mode="bilinear", align_corners=False)[0]
    # Visible from B: B's ray to the point hits that point first (exact, via the ray caster) ...
    t, hit_id = scene.intersect(b.centers[0].expand_as(pts), pts - b.centers[0])
    keep = (ids != BACKGROUND_ID) & ((t - 1).abs() < 1e-9) & (hit_id == ids)
    # ... and all four bilinear taps lie on the same object, inside the image.
    for dx in (-1, 1):
        for dy in (-1, 1):
            tap = torch.nn.functional.grid_sample(out_b.object_id.to(D), grid + torch.tensor([dx, dy], dtype=D) / size,
                                                  mode="nearest", align_corners=False).reshape(-1)
            keep &= tap == ids
    keep &= (grid.abs() < 1 - 2 / size).all(-1).reshape(-1)
    assert keep.float().mean() > 0.4
    mse = (warped.reshape(3, -1) - out_a.rgb[0].reshape(3, -1))[:, keep].pow(2).mean()
    return float(-10 * torch.log10(mse))


def test_true_geometry_warp_reproduces_colours_up_to_bilinear_error():
    """View-independent, band-limited colours: warping through exact depth is accurate and improves
    with resolution (bilinear interpolation error falls with the pixel size)."""
    psnr_64, psnr_128 = _warp_psnr(64), _warp_psnr(128)
    assert psnr_128 >= 40.0
    assert psnr_128 > psnr_64 + 2.0
