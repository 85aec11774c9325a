"""Feature mesh: vertices on the anchor's pixel-centre rays, grid triangulation, discontinuity culling."""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.ops.feature_mesh import FeatureMeshError, build_feature_mesh, grid_faces, resample_depth


def _anchor(size=(6, 8)) -> CameraSet:
    c2w = look_at(torch.tensor([[0.5, -0.3, -2.5]]), torch.tensor([0.1, 0.0, 0.0]))
    return CameraSet.from_fov(c2w, fov_y_deg=55.0, image_size=size)


def _guard_depth(size: tuple[int, int], fov_y_deg: float = 55.0, tau: float = 0.1) -> float:
    """The rim depth of a guard of :func:`_anchor`'s camera at ``size``: τ at a 64-px, 60° grid, scaled by 1/√f."""
    focal = 0.5 * size[0] / math.tan(math.radians(fov_y_deg) / 2)
    return tau * math.sqrt((32 / math.tan(math.radians(30))) / focal)


def test_vertices_reproject_to_pixel_centres_at_their_depth():
    cam = _anchor((6, 8))
    depth = 2.0 + torch.rand(6, 8, generator=torch.Generator().manual_seed(0))
    mesh = build_feature_mesh(depth, cam, max_rel_depth_jump=10.0)
    uv, z = cam.project(mesh.vertices)
    torch.testing.assert_close(uv[0], cam.pixel_centers().reshape(-1, 2), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(z[0], depth.reshape(-1), rtol=1e-5, atol=1e-5)
    assert torch.equal(mesh.pixel_coords, cam.pixel_centers().reshape(-1, 2))
    assert mesh.num_faces == 2 * 5 * 7  # nothing culled with a huge threshold


def test_coarser_grid_uses_rescaled_intrinsics():
    """A 3x4 depth grid for a 6x8 camera: vertex (i, j) lies on the ray through (2j + 1, 2i + 1) at 6x8."""
    cam = _anchor((6, 8))
    mesh = build_feature_mesh(torch.full((1, 1, 3, 4), 3.0), cam)
    uv, z = cam.project(mesh.vertices)
    i, j = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    expect = torch.stack([2 * j + 1, 2 * i + 1], -1).reshape(-1, 2)
    torch.testing.assert_close(uv[0], expect, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(z[0], torch.full((12,), 3.0))


def test_grid_faces_tile_each_quad_with_positive_area():
    h, w = 4, 5
    faces = grid_faces(h, w)
    assert faces.shape == (2 * 3 * 4, 3)
    j, i = faces % w, faces // w
    # Signed doubled area in (u, v) = (j, i): each face is half a unit quad, positive orientation.
    area = (j[:, 1] - j[:, 0]) * (i[:, 2] - i[:, 0]) - (i[:, 1] - i[:, 0]) * (j[:, 2] - j[:, 0])
    assert (area == 1).all()
    # Every quad's two faces use its four corners exactly.
    for q in range(3 * 4):
        corners = set(faces[2 * q].tolist()) | set(faces[2 * q + 1].tolist())
        r, c = divmod(q, 4)
        assert corners == {r * w + c, r * w + c + 1, (r + 1) * w + c, (r + 1) * w + c + 1}


def test_faces_spanning_a_depth_step_are_dropped_at_the_threshold():
    cam = _anchor((5, 6))
    depth = torch.full((5, 6), 2.0)
    depth[:, 3:] = 2.4  # relative jump 0.2 between columns 2 and 3
    kept = build_feature_mesh(depth, cam, max_rel_depth_jump=0.25)
    cut = build_feature_mesh(depth, cam, max_rel_depth_jump=0.15)
    assert kept.num_faces == 2 * 4 * 5
    assert cut.num_faces == 2 * 4 * 5 - 2 * 4  # the one column of quads across the step, both faces
    cols = cut.faces % 6
    spans = (cols.amin(1) <= 2) & (cols.amax(1) >= 3)
    assert not spans.any()


def test_invalid_depths_drop_their_faces():
    cam = _anchor((4, 4))
    depth = torch.full((4, 4), 2.0)
    depth[0, 0] = float("nan")
    depth[3, 3] = 0.0
    valid = torch.ones(4, 4, dtype=torch.bool)
    valid[1, 2] = False
    mesh = build_feature_mesh(depth, cam, valid=valid)
    used = set(mesh.faces.flatten().tolist())
    assert not used & {0, 15, 6}
    # (0,0) is in 1 face, (3,3) in 1, (1,2) in 6 (interior vertex): 18 - 8 = 10 left.
    assert mesh.num_faces == 10
    assert torch.isfinite(mesh.vertices).all()


def test_silhouette_guards_are_prisms_over_the_dropped_faces():
    """One 8-triangle prism per dropped face, between the near depth and (1 + τ) times it, on its footprint."""
    cam = _anchor((5, 6))
    depth = torch.full((5, 6), 2.0)
    depth[:, 3:] = 3.0  # a step: the column of quads between columns 2 and 3 is dropped (8 faces)
    depth[4, 5] = float("nan")  # the one face at that corner is dropped for an invalid vertex
    mesh = build_feature_mesh(depth, cam, max_rel_depth_jump=0.1)
    dropped = 2 * 4 * 5 - mesh.num_faces
    assert dropped == 8 + 1
    assert mesh.occluder_faces.shape == (8 * dropped, 3) and mesh.occluder_vertices.shape == (6 * dropped, 3)
    # Occluder faces index the corners appended after the grid vertices.
    assert int(mesh.occluder_faces.min()) == mesh.num_verts
    assert int(mesh.occluder_faces.max()) == mesh.num_verts + 6 * dropped - 1
    uv, z = cam.project(mesh.occluder_vertices)
    corners = z[0].reshape(dropped, 2, 3)
    near = torch.tensor([2.0] * 8 + [3.0])[:, None]  # the step faces' near side is 2, the corner face's 3
    order = torch.argsort(corners[:, 0, 0])
    torch.testing.assert_close(corners[order, 0], near.expand(-1, 3))
    torch.testing.assert_close(corners[order, 1], (1 + _guard_depth((5, 6))) * near.expand(-1, 3))
    # Footprint: both caps project onto the dropped faces' pixel centres, pulled 0.1 % towards the centroid.
    centres = mesh.pixel_coords
    offset = (uv[0][:, None] - centres[None]).abs().amax(-1).amin(1)
    assert (offset > 1e-4).all() and (offset < 1e-3).all()
    assert build_feature_mesh(depth, cam, max_rel_depth_jump=0.1, guard_silhouettes=False).occluder_faces is None
    flat = build_feature_mesh(torch.full((5, 6), 2.0), cam)
    assert len(flat.occluder_faces) == 0 and flat.render_geometry()[1].shape == flat.faces.shape


def test_silhouette_guards_leave_the_anchor_view_unchanged():
    """Seen from the anchor itself, each guard sits on its own dropped face's footprint: coverage is unchanged."""
    from mvcustom_core.ops.raster import plan_mesh_render

    cam = _anchor((12, 16))
    g = torch.Generator().manual_seed(4)
    depth = 2.0 + 0.05 * torch.rand(12, 16, generator=g)
    depth[3:8, 4:11] = 1.2  # a box in front: occlusion boundaries on four sides
    mesh = build_feature_mesh(depth, cam)
    assert len(mesh.occluder_faces) == 8 * (2 * 15 * 11 - mesh.num_faces) > 0
    guarded = plan_mesh_render(mesh, cam, impl="reference")
    bare = plan_mesh_render(build_feature_mesh(depth, cam, guard_silhouettes=False), cam, impl="reference")
    assert torch.equal(guarded.coverage, bare.coverage) and torch.equal(guarded.vert_idx, bare.vert_idx)
    assert guarded.coverage.all()  # every pixel centre is a vertex of some kept face


def test_vertex_features_follow_vertex_order():
    cam = _anchor((3, 4))
    mesh = build_feature_mesh(torch.full((3, 4), 2.0), cam)
    fmap = torch.arange(2 * 12.0).reshape(2, 3, 4)
    vf = mesh.vertex_features(fmap)
    assert vf.shape == (12, 2)
    assert torch.equal(vf[1 * 4 + 2], fmap[:, 1, 2])
    assert torch.equal(mesh.vertex_features(fmap[None]), vf)
    with pytest.raises(ValueError, match="feature_map"):
        mesh.vertex_features(torch.zeros(2, 4, 3))


def test_bad_inputs_raise_clear_errors():
    cam = _anchor()
    with pytest.raises(FeatureMeshError, match="one anchor camera"):
        build_feature_mesh(torch.ones(4, 4), CameraSet.concat([cam, cam]))
    with pytest.raises(FeatureMeshError, match="max_rel_depth_jump"):
        build_feature_mesh(torch.ones(4, 4), cam, max_rel_depth_jump=0.0)
    with pytest.raises(FeatureMeshError, match="2x2"):
        build_feature_mesh(torch.ones(1, 4), cam)
    with pytest.raises(ValueError, match="depth"):
        build_feature_mesh(torch.ones(2, 4, 4), cam)
    with pytest.raises(ValueError, match="valid"):
        build_feature_mesh(torch.ones(4, 4), cam, valid=torch.ones(3, 4, dtype=torch.bool))


def test_resample_depth_samples_under_target_centres_and_min_pools():
    depth = torch.arange(1.0, 1.0 + 6 * 8).reshape(6, 8)
    # Target centre (j + 1/2, i + 1/2) at 3x4 is (2j + 1, 2i + 1) at 6x8: source pixel (2i + 1, 2j + 1).
    assert torch.equal(resample_depth(depth, (3, 4)), depth[1::2, 1::2])
    assert torch.equal(resample_depth(depth[None, None], (6, 8)), depth)  # identity at the same size
    depth[0, 1] = float("nan")
    depth[1, 0] = -1.0
    depth[4:6, 6:8] = 0.0  # a wholly invalid block
    low = resample_depth(depth, (3, 4), mode="min")
    ok = torch.isfinite(depth) & (depth > 0)
    blocks = torch.where(ok, depth, torch.full_like(depth, math.inf)).reshape(3, 2, 4, 2).amin(dim=(1, 3))
    assert torch.equal(low, torch.where(torch.isfinite(blocks), blocks, torch.zeros_like(blocks)))
    assert low[0, 0] == 1.0 and low[2, 3] == 0.0
    with pytest.raises(FeatureMeshError, match="integer factors"):
        resample_depth(depth, (4, 4), mode="min")
    with pytest.raises(FeatureMeshError, match="mode"):
        resample_depth(depth, (3, 4), mode="mean")


def test_silhouette_guard_prisms_are_closed_and_span_their_depth_range():
    """Each guard is a closed surface (every edge shared by exactly two of its 8 triangles), so any ray through
    the prism meets it; back corner ``3 + k`` lies on front corner ``k``'s anchor ray at (1 + τ) times its depth."""
    from collections import Counter

    cam = _anchor((5, 6))
    depth = torch.full((5, 6), 2.0)
    depth[2:, :] = 3.5
    mesh = build_feature_mesh(depth, cam, max_rel_depth_jump=0.1)
    prisms = (mesh.occluder_faces - mesh.num_verts).reshape(-1, 8, 3)
    assert len(prisms) == 2 * 5  # one row of quads across the step
    for p, tri in enumerate(prisms):
        assert set(tri.flatten().tolist()) == set(range(6 * p, 6 * p + 6))
        edges = Counter(tuple(sorted(e)) for t in tri.tolist() for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])))
        assert len(edges) == 12 and set(edges.values()) == {2}  # 6 cap edges + 3 side edges + 3 side diagonals
    uv, z = cam.project(mesh.occluder_vertices)
    uv, z = uv[0].reshape(-1, 2, 3, 2), z[0].reshape(-1, 2, 3)
    torch.testing.assert_close(uv[:, 1], uv[:, 0], rtol=0, atol=1e-4)
    torch.testing.assert_close(z[:, 0], torch.full_like(z[:, 0], 2.0))
    torch.testing.assert_close(z[:, 1], torch.full_like(z[:, 1], 2.0 * (1 + _guard_depth((5, 6)))))


def _plane_depth(cam: CameraSet, normal: list[float], offset: float, size: tuple[int, int]) -> torch.Tensor:
    """``[h, w]`` z-depth of the plane ``n · X = offset`` (camera frame) at the pixel centres of ``cam`` at ``size``."""
    cam = cam.with_image_size(size)
    uv = cam.pixel_centers()
    rays = torch.cat([uv, torch.ones_like(uv[..., :1])], -1) @ torch.linalg.inv(cam.K[0]).T  # [h, w, 3], z = 1
    return offset / (rays @ torch.tensor(normal))


def test_a_plane_at_grazing_incidence_keeps_every_face():
    """A ground plane seen up to its horizon: neighbouring depths differ by up to 50 %, far above the relative
    threshold, but inverse depth is affine in the pixel coordinates, so every face continues the plane."""
    cam = _anchor((16, 16))
    depth = _plane_depth(cam, [0.0, 1.0, 0.52], 1.0, (16, 16))  # y + 0.52 z = 1: horizon just above row 0
    assert (depth > 0).all()
    ratio = torch.maximum(depth[1:] / depth[:-1], depth[:-1] / depth[1:])
    assert float(ratio.max()) > 1.5  # the old rule (relative jump <= 0.1) dropped the far rows
    mesh = build_feature_mesh(depth, cam, max_rel_depth_jump=0.1)
    assert mesh.num_faces == 2 * 15 * 15
    assert len(mesh.occluder_faces) == 0


def test_a_step_on_a_grazing_plane_is_still_a_discontinuity():
    """Two parallel grazing planes meeting at a row (a kerb seen from afar): only the faces across the step go."""
    cam = _anchor((16, 16))
    near = _plane_depth(cam, [0.0, 1.0, 0.52], 1.0, (16, 16))
    far = _plane_depth(cam, [0.0, 1.0, 0.52], 0.8, (16, 16))  # the same tilt, 20 % farther along every ray
    depth = torch.cat([far[:8], near[8:]])
    mesh = build_feature_mesh(depth, cam, max_rel_depth_jump=0.1)
    rows = mesh.faces // 16
    assert not ((rows.amin(1) <= 7) & (rows.amax(1) >= 8)).any()
    assert mesh.num_faces == 2 * 14 * 15  # every other face continues one of the two planes


def test_a_ramp_of_one_sample_across_a_step_is_not_a_plane():
    """A silhouette blurred to one in-between sample (its inverse depth half-way) stays cut: the steps into and out
    of the ramp disagree with the flat steps beside them."""
    cam = _anchor((6, 8))
    inverse = torch.full((6, 8), 1 / 2.0)
    inverse[:, 4] = (1 / 2.0 + 1 / 3.0) / 2
    inverse[:, 5:] = 1 / 3.0
    mesh = build_feature_mesh(1 / inverse, cam, max_rel_depth_jump=0.1)
    cols = mesh.faces % 8
    assert not ((cols.amin(1) <= 3) & (cols.amax(1) >= 5)).any()
    assert not ((cols.amin(1) == 4) | (cols.amax(1) == 4)).any()
    assert mesh.num_faces == 2 * 5 * 5


def test_guard_depth_is_tau_on_the_reference_grid_and_shrinks_as_one_over_root_f():
    """A contour's one-pixel rim spans Δz/z = √(2R/(z·f)): a 4x finer grid halves the guard's depth."""
    from mvcustom_core.ops.feature_mesh import guard_depth

    cam = CameraSet.from_fov(torch.eye(4)[None], fov_y_deg=60.0, image_size=(64, 64))
    assert guard_depth(0.1, cam) == pytest.approx(0.1, rel=1e-6)
    assert guard_depth(0.1, cam.with_image_size((256, 256))) == pytest.approx(0.05, rel=1e-6)
    assert guard_depth(0.3, cam.with_image_size((16, 16))) == pytest.approx(0.6, rel=1e-6)
    depth = torch.full((256, 256), 2.0)
    depth[:, 128:] = 3.0
    fine = build_feature_mesh(depth, cam)  # a 256-px grid of the same camera
    _, z = cam.with_image_size((256, 256)).project(fine.occluder_vertices)
    assert float(z[0].reshape(-1, 2, 3)[:, 1].max()) == pytest.approx(2.0 * 1.05, rel=1e-5)
