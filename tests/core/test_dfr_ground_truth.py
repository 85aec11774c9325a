"""DFR against an analytic scene: anchor colours rendered through the feature mesh match exact renderings.

The scene (built here, exact ray casting in torch): a tilted plane behind a sphere, coloured by a smooth
(band-limited) function of the 3D point, seen by an anchor camera and three target cameras on a ring.
The anchor's exact depth builds the feature mesh; its exact colours are the vertex features.

Tolerances (the issue's criteria, over the whole coverage mask):
- IoU >= 0.98 between the rendered coverage mask and analytic visibility — the target pixels whose
  true surface point projects inside the anchor's pixel-centre hull (the mesh's extent: no sample lies
  beyond it) and is the first hit along the anchor's ray.
- PSNR >= 40 dB inside the coverage mask.

The silhouette guards (``build_feature_mesh(guard_silhouettes=True)``) are what make the PSNR hold:
without them a target pixel that sees the sphere's unsampled rim (less than one anchor pixel wide, seen
broadside by the target) takes the plane's colour from behind, 31.7-35.2 dB. With them those pixels are
uncovered, which costs IoU in proportion to silhouette length x one anchor pixel over visible area, so
the criterion depends on resolution. Measured (3 targets, guards on / off):
    96 px  IoU 0.972-0.978 / 0.982-0.986   PSNR 70.5-71.8 / 31.7-35.2 dB
    128 px IoU 0.979-0.983 / 0.987-0.989   PSNR 70.9-75.9 / 31.9-35.5 dB
    160 px IoU 0.981-0.986 / 0.988-0.991   PSNR 78.4-78.8 / 32.9-36.3 dB
    192 px IoU 0.985-0.989 / 0.990-0.992   PSNR 52.5-79.9 / 33.3-37.6 dB
The tests run at 192 px.
"""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.ops.feature_mesh import build_feature_mesh
from mvcustom_core.ops.raster import apply_plan, plan_mesh_render

SIZE = (192, 192)
TEAM_SIZE = (96, 96)
SPHERE_C, SPHERE_R = torch.tensor([0.0, 0.1, 0.0], dtype=torch.float64), 0.45
PLANE_N = torch.nn.functional.normalize(torch.tensor([0.15, -0.1, 1.0], dtype=torch.float64), dim=0)
PLANE_D = 1.2  # plane: n · X = d, behind the sphere as seen from z < 0
COLOUR_DIRS = torch.nn.functional.normalize(torch.tensor([[1.0, 0.3, 0.2], [-0.2, 1.0, 0.5], [0.4, -0.5, 1.0]],
                                                         dtype=torch.float64), dim=1)
COLOUR_FREQ = 2.5  # rad per world unit: ~0.035 rad per pixel at 192 px, far below the grid's Nyquist limit


def colour(points: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` points -> ``[..., 3]`` RGB in [0.15, 0.85], smooth."""
    return 0.5 + 0.35 * torch.sin(COLOUR_FREQ * points @ COLOUR_DIRS.T + torch.tensor([0.0, 1.0, 2.0], dtype=points.dtype))


def ray_cast(origins: torch.Tensor, dirs: torch.Tensor, with_sphere: bool = True) -> torch.Tensor:
    """Distance along unit ``dirs [..., 3]`` to the first hit (sphere or plane), inf if none."""
    oc = origins - SPHERE_C
    b = (dirs * oc).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - SPHERE_R**2)
    t_sphere = -b - disc.clamp_min(0).sqrt()
    t_sphere = torch.where((disc > 0) & (t_sphere > 0) & with_sphere, t_sphere, torch.full_like(b, math.inf))
    t_plane = (PLANE_D - origins @ PLANE_N) / (dirs @ PLANE_N)
    t_plane = torch.where(t_plane > 0, t_plane, torch.full_like(b, math.inf))
    return torch.minimum(t_sphere, t_plane)


def render(cams: CameraSet, with_sphere: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact rendering at pixel centres: rgb ``[F, 3, H, W]``, z-depth ``[F, H, W]``, points ``[F, H, W, 3]``."""
    dirs = cams.ray_directions()
    origins = cams.centers[:, None, None, :].expand_as(dirs)
    t = ray_cast(origins, dirs, with_sphere)
    points = origins + t[..., None] * dirs
    depth = t * (dirs * cams.forward[:, None, None, :]).sum(-1)
    return colour(points).permute(0, 3, 1, 2), depth, points


def ring(angles_deg: list[float], heights: list[float]) -> CameraSet:
    a = torch.tensor(angles_deg, dtype=torch.float64).deg2rad()
    eye = torch.stack([3.0 * torch.sin(a), torch.tensor(heights, dtype=torch.float64), -3.0 * torch.cos(a)], -1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3, dtype=torch.float64)), fov_y_deg=50.0, image_size=SIZE)


def analytic_visibility(anchor: CameraSet, points: torch.Tensor) -> torch.Tensor:
    """``[F, H, W]`` bool: the surface point lies in the anchor's pixel-centre hull and is unoccluded there."""
    h, w = anchor.image_size
    flat = points.reshape(-1, 3)
    uv, z = anchor.project(flat)
    u, v = uv[0, :, 0], uv[0, :, 1]
    in_hull = (u >= 0.5) & (u <= w - 0.5) & (v >= 0.5) & (v <= h - 0.5) & (z[0] > 0)
    to_point = flat - anchor.centers[0]
    dist = to_point.norm(dim=-1)
    first_hit = ray_cast(anchor.centers[0].expand_as(flat), to_point / dist[:, None])
    unoccluded = first_hit >= dist * (1 - 1e-6)
    return (in_hull & unoccluded & torch.isfinite(dist)).reshape(points.shape[:-1])


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    mse = ((a - b) ** 2 * mask).sum() / (mask.sum() * a.shape[1])
    return float(-10 * torch.log10(mse))


def occlusion_band(depth: torch.Tensor, rel: float = 0.05) -> torch.Tensor:
    """``[F, H, W]`` bool: pixels within one pixel of a relative depth jump > ``rel`` (or of a miss)."""
    d = depth[:, None]
    jump = torch.zeros_like(d, dtype=torch.bool)
    for dy, dx in ((0, 1), (1, 0)):
        a, b = d[..., : d.shape[-2] - dy, : d.shape[-1] - dx], d[..., dy:, dx:]
        j = ((a - b).abs() > rel * torch.minimum(a, b)) | (torch.isfinite(a) != torch.isfinite(b))
        jump[..., : d.shape[-2] - dy, : d.shape[-1] - dx] |= j
        jump[..., dy:, dx:] |= j
    return torch.nn.functional.max_pool2d(jump.double(), 3, 1, 1)[:, 0].bool()


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def scene():
    anchor = ring([0.0], [0.2])
    targets = ring([-20.0, 12.0, 25.0], [0.0, -0.4, 0.5])
    rgb_a, depth_a, _ = render(anchor)
    rgb_t, depth_t, points_t = render(targets)
    return anchor, targets, rgb_a, depth_a, rgb_t, depth_t, points_t


def _render_anchor_colours(scene, guard_silhouettes: bool = True):
    anchor, targets, rgb_a, depth_a, *_ = scene
    mesh = build_feature_mesh(depth_a[0].float(), anchor.to(dtype=torch.float32), max_rel_depth_jump=0.1,
                              guard_silhouettes=guard_silhouettes)
    feats, cov = apply_plan(plan_mesh_render(mesh, targets.to(dtype=torch.float32), impl="torch"),
                            mesh.vertex_features(rgb_a[0].float()))
    return mesh, feats.double(), cov[:, 0].bool()


def test_rendered_anchor_colours_match_true_views(scene):
    anchor, targets, rgb_a, depth_a, rgb_t, depth_t, points_t = scene
    mesh, feats, cov = _render_anchor_colours(scene)
    visible = analytic_visibility(anchor, points_t)
    for f in range(len(targets)):
        assert visible[f].float().mean() > 0.5  # most of each target is seen by the anchor
        assert iou(cov[f], visible[f]) >= 0.98, f
        assert psnr(feats[f : f + 1], rgb_t[f : f + 1], cov[f]) >= 40.0, f
    # The anchor seen through its own mesh: colours come back at every kept vertex.
    own, own_cov = apply_plan(plan_mesh_render(mesh, anchor.to(dtype=torch.float32)), mesh.vertex_features(rgb_a[0].float()))
    assert psnr(own.double(), rgb_a, own_cov[:, 0].bool()) >= 60.0


def test_silhouette_guards_uncover_only_pixels_at_occlusion_boundaries(scene):
    """Without guards the rim pixels take the far surface's colour; guards uncover them, within 2 pixels of a depth jump."""
    *_, rgb_t, depth_t, _ = scene
    _, feats, cov = _render_anchor_colours(scene)
    _, bare_feats, bare_cov = _render_anchor_colours(scene, guard_silhouettes=False)
    removed = bare_cov & ~cov
    assert not (cov & ~bare_cov).any()  # guards only take coverage away
    near_boundary = torch.nn.functional.max_pool2d(occlusion_band(depth_t).double()[:, None], 5, 1, 2)[:, 0].bool()
    for f in range(len(cov)):
        assert removed[f].any() and not (removed[f] & ~near_boundary[f]).any(), f
        assert removed[f].sum() < 0.02 * bare_cov[f].sum(), f
        wrong = ((bare_feats[f] - rgb_t[f]) ** 2).mean(0) > 1e-3  # a visibly different colour
        # Guarded: at most a pixel where the target's own silhouette grazes the piecewise-linear sphere.
        assert int((wrong & cov[f]).sum()) <= 1 and int((wrong & bare_cov[f]).sum()) >= 20, f
        assert psnr(bare_feats[f : f + 1], rgb_t[f : f + 1], bare_cov[f]) < 38.0, f


def test_depth_step_leaves_a_hole_only_when_culled(scene):
    """The sphere's silhouette is a depth step: the disoccluded plane behind it stays uncovered."""
    anchor, targets, _, depth_a, _, _, points_t = scene
    anchor32, targets32 = anchor.to(dtype=torch.float32), targets.to(dtype=torch.float32)
    # Disoccluded in target 0: the plane point there is hidden from the anchor by the sphere.
    visible = analytic_visibility(anchor, points_t)
    _, _, plane_pts = render(targets, with_sphere=False)
    uv, _ = anchor.project(plane_pts[0].reshape(-1, 3))
    h, w = SIZE
    in_hull = ((uv[0] >= 0.5) & (uv[0] <= torch.tensor([w - 0.5, h - 0.5], dtype=uv.dtype))).all(-1).reshape(SIZE)
    hole = in_hull & ~visible[0]
    hole &= torch.nn.functional.max_pool2d((~hole).float()[None], 5, 1, 2)[0] == 0  # its interior
    assert hole.sum() > 30

    culled = plan_mesh_render(build_feature_mesh(depth_a[0].float(), anchor32, max_rel_depth_jump=0.1), targets32)
    rubber = plan_mesh_render(build_feature_mesh(depth_a[0].float(), anchor32, max_rel_depth_jump=100.0), targets32)
    assert not culled.coverage[0, 0][hole].any()
    assert rubber.coverage[0, 0][hole].float().mean() > 0.9  # stretched faces would fill it


def test_team_synthetic_scene_through_the_feature_mesh():
    """Cross-module check with :class:`SyntheticScene` (its depth is camera z, its colours view-independent).

    Sphere on a ground plane, turntable cameras at 96 x 96, the ground visible up to the horizon (neighbouring
    anchor depths there differ by far more than the 10 % culling threshold; the faces stay because they continue
    a plane). Measured with the silhouette guards: IoU 0.946-0.954 (0.960-0.968 without them), PSNR over the whole
    mask 40.7-44.7 dB (29.6-32.3 dB without), away from occlusion boundaries 54.1-61.0 dB. Held to IoU >= 0.94,
    PSNR >= 39 dB and >= 50 dB. (Before the plane test the far ground lost its faces and was left out here.)
    """
    synthetic = pytest.importorskip("mvcustom_core.synthetic")
    scene = synthetic.SyntheticScene(seed=1, subject="sphere", max_frequency=3.0)
    views = [(0.0, 20.0), (-20.0, 15.0), (12.0, 25.0), (25.0, 20.0)]
    cams = CameraSet.concat([synthetic.turntable_cameras(1, image_size=TEAM_SIZE, start_azimuth_deg=a, elevation_deg=e,
                                                         dtype=torch.float64) for a, e in views])
    truth = scene.render(cams)
    anchor, targets = cams[0], cams[1:]
    mesh = build_feature_mesh(truth.depth[0, 0].float(), anchor.to(dtype=torch.float32), valid=truth.valid[0, 0])
    feats, cov = apply_plan(plan_mesh_render(mesh, targets.to(dtype=torch.float32)),
                            mesh.vertex_features(truth.rgb[0].float()))
    cov = cov[:, 0].bool()

    points = truth.points[1:].permute(0, 2, 3, 1).reshape(-1, 3)
    uv, z = anchor.project(points)
    h, w = TEAM_SIZE
    in_hull = ((uv[0] >= 0.5) & (uv[0] <= torch.tensor([w - 0.5, h - 0.5], dtype=uv.dtype))).all(-1) & (z[0] > 0)
    to_point = points - anchor.centers[0]
    dist = to_point.norm(dim=-1)
    first_hit, _ = scene.intersect(anchor.centers[0].expand_as(points), to_point / dist[:, None])
    visible = (in_hull & (first_hit >= dist * (1 - 1e-6))).reshape(3, h, w) & truth.valid[1:, 0]
    band = occlusion_band(truth.depth[1:, 0])
    assert (truth.points[1:].norm(dim=1)[visible] > 20).any()  # ground far out toward the horizon
    for f in range(3):
        assert iou(cov[f], visible[f]) >= 0.94, f
        rgb = truth.rgb[f + 1 : f + 2].double()
        assert psnr(feats[f : f + 1].double(), rgb, cov[f]) >= 39.0, f
        assert psnr(feats[f : f + 1].double(), rgb, cov[f] & ~band[f]) >= 50.0, f
