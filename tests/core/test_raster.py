"""Rasterizer: analytic single-face checks, tie rule, empty cases, fast paths == brute-force reference."""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.ops.feature_mesh import build_feature_mesh
from mvcustom_core.ops.raster import (
    RasterError,
    apply_plan,
    apply_plan_reference,
    interpolate,
    make_render_plan,
    plan_mesh_render,
    rasterize,
)

IMPLS = ["reference", "torch", "triton"]
# The Triton interpreter runs numpy on masked-out lanes too (0/0 outside a face); harmless.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _cam(c2w: torch.Tensor, size=(12, 16), fov=70.0) -> CameraSet:
    return CameraSet.from_fov(c2w, fov_y_deg=fov, image_size=size)


def _ring_cameras(n: int, size, radius=3.0, seed=0) -> CameraSet:
    g = torch.Generator().manual_seed(seed)
    ang = torch.linspace(-0.6, 0.6, n)
    eye = torch.stack([radius * torch.sin(ang), 0.3 * torch.randn(n, generator=g), -radius * torch.cos(ang)], -1)
    return _cam(look_at(eye, torch.zeros(3)), size)


def _random_soup(num_faces: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping random triangles around the origin, some sharing vertices, some coplanar duplicates."""
    g = torch.Generator().manual_seed(seed)
    centre = (torch.rand(num_faces, 1, 3, generator=g) - 0.5) * 1.6
    verts = (centre + 0.5 * torch.randn(num_faces, 3, 3, generator=g)).reshape(-1, 3)
    faces = torch.arange(3 * num_faces).reshape(-1, 3)
    faces = torch.cat([faces, faces[:3]])  # exact duplicates: equal depths, the tie rule decides
    return verts, faces


def _sphere_mesh_plan_inputs(size=(10, 12)):
    """Feature mesh of a sphere in front of a plane seen by an anchor camera, and 3 target cameras."""
    anchor = _cam(look_at(torch.tensor([[0.0, 0.0, -3.0]]), torch.zeros(3)), size, fov=50.0)
    rays = anchor.ray_directions()[0]  # [h, w, 3]
    o = anchor.centers[0]
    b = (rays * o).sum(-1)
    disc = b * b - (o.dot(o) - 1.0)
    t_sphere = -b - disc.clamp_min(0).sqrt()
    t_plane = (1.5 - o[2]) / rays[..., 2]
    t = torch.where(disc > 0, t_sphere, t_plane)
    depth = t * (rays @ anchor.forward[0])  # z-depth
    return build_feature_mesh(depth, anchor, max_rel_depth_jump=0.1), _ring_cameras(3, size, seed=1)


# ------------------------------------------------------------------------------------- analytic
@pytest.mark.parametrize("impl", IMPLS)
def test_single_face_depth_and_perspective_correct_barycentrics(impl):
    """A tilted triangle: zbuf is the exact ray-plane depth and interpolated world coords are the hit point."""
    cam = _cam(torch.eye(4)[None], size=(12, 16))
    verts = torch.tensor([[-3.0, -2.0, 2.0], [3.0, -2.5, 6.0], [0.0, 3.0, 3.0]])
    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), cam, impl=impl)
    cov = frags.coverage[0]
    assert cov.sum() > 40
    # Exact: ray through each pixel centre hits the triangle's plane at depth z = d / (n · K⁻¹[u, v, 1]).
    n = torch.linalg.cross(verts[1] - verts[0], verts[2] - verts[0])
    d = n.dot(verts[0])
    rays = torch.cat([cam.pixel_centers(), torch.ones(12, 16, 1)], -1) @ torch.linalg.inv(cam.K[0]).T  # z = 1
    z_true = d / (rays @ n)
    torch.testing.assert_close(frags.zbuf[0][cov], z_true[cov], rtol=1e-5, atol=1e-5)
    feat, cov2 = interpolate(frags, torch.tensor([[0, 1, 2]]), verts)
    hit = rays * z_true[..., None]
    torch.testing.assert_close(feat[0].permute(1, 2, 0)[cov], hit[cov], rtol=1e-4, atol=1e-4)
    assert torch.equal(cov2[0, 0].bool(), cov)
    # Barycentrics sum to one; coverage agrees with the exact inside test of the projected triangle.
    torch.testing.assert_close(frags.bary[0][cov].sum(-1), torch.ones(int(cov.sum())))
    uv, _ = cam.project(verts)
    p = cam.pixel_centers()

    def edge(a, b):
        return (b[0] - a[0]) * (p[..., 1] - a[1]) - (b[1] - a[1]) * (p[..., 0] - a[0])

    e = torch.stack([edge(uv[0, 0], uv[0, 1]), edge(uv[0, 1], uv[0, 2]), edge(uv[0, 2], uv[0, 0])])
    strictly_in = (e > 1e-3).all(0) | (e < -1e-3).all(0)
    strictly_out = (e < -1e-3).any(0) & (e > 1e-3).any(0)
    assert cov[strictly_in].all() and not cov[strictly_out].any()


@pytest.mark.parametrize("impl", IMPLS)
def test_nearest_face_wins_and_exact_ties_go_to_lower_index(impl):
    cam = _cam(torch.eye(4)[None], size=(8, 8))
    big = torch.tensor([[-9.0, -9.0, 0.0], [9.0, -9.0, 0.0], [0.0, 9.0, 0.0]])
    verts = torch.cat([big + torch.tensor([0, 0, 4.0]), big + torch.tensor([0, 0, 2.0]), big + torch.tensor([0, 0, 2.0])])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8], [3, 4, 5]])  # 1, 2, 3 all at depth 2
    frags = rasterize(verts, faces, cam, impl=impl)
    assert (frags.face_idx == 1).all()
    torch.testing.assert_close(frags.zbuf, torch.full((1, 8, 8), 2.0))
    frags = rasterize(verts, faces.flip(0), cam, impl=impl)  # now rows 0 and 1 are the depth-2 faces
    assert (frags.face_idx == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_nothing_visible_gives_zero_coverage(impl):
    verts, faces = _random_soup(20, seed=3)
    away = _cam(look_at(torch.tensor([[0.0, 0.0, -5.0]]), torch.tensor([0.0, 0.0, -10.0])))  # looks away
    frags = rasterize(verts, faces, away, impl=impl)
    assert not frags.coverage.any() and (frags.zbuf == -1).all() and (frags.bary == 0).all()
    plan = make_render_plan(frags, faces)
    feats, cov = apply_plan(plan, torch.randn(len(verts), 5))
    assert cov.sum() == 0 and feats.abs().sum() == 0
    # No faces at all.
    empty = rasterize(verts, faces[:0], _ring_cameras(2, (6, 7)), impl=impl)
    assert (empty.face_idx == -1).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_faces_crossing_the_near_plane_are_dropped(impl):
    cam = _cam(torch.eye(4)[None], size=(8, 8))
    verts = torch.tensor([[-9.0, -9.0, 2.0], [9.0, -9.0, 2.0], [0.0, 9.0, -1.0]])
    assert not rasterize(verts, torch.tensor([[0, 1, 2]]), cam, impl=impl).coverage.any()


@pytest.mark.parametrize("impl", IMPLS)
def test_shared_edge_leaves_no_cracks(impl):
    """A quad split into two faces covers every pixel, including centres exactly on the diagonal."""
    cam = _cam(torch.eye(4)[None], size=(8, 8), fov=90.0)
    # A square exactly on pixel centres' diagonal: z = 1, corners at the image corners.
    corners = cam.unproject(torch.tensor([[[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]]]), torch.ones(1, 4))[0]
    frags = rasterize(corners, torch.tensor([[0, 1, 2], [1, 3, 2]]), cam, impl=impl)
    assert frags.coverage.all()
    diag = torch.arange(8)
    assert (frags.face_idx[0, diag, 7 - diag] == 0).all()  # centres on the shared edge: tie to face 0


# ------------------------------------------------------------------------------------- fast == reference
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_paths_match_reference_on_random_scenes(seed):
    verts, faces = _random_soup(40, seed)
    cams = _ring_cameras(3, (13, 17), seed=seed)
    ref = rasterize(verts, faces, cams, impl="reference")
    assert ref.coverage.float().mean() > 0.2  # a real test: plenty of overlap
    for impl in ("torch", "triton"):
        got = rasterize(verts, faces, cams, impl=impl)
        assert torch.equal(got.face_idx, ref.face_idx), impl
        assert (got.bary - ref.bary).abs().max() <= 1e-5
        torch.testing.assert_close(got.zbuf, ref.zbuf, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_torch_path_is_independent_of_the_candidate_chunk(monkeypatch, chunk):
    """Candidates are evaluated ``CANDIDATE_CHUNK`` pairs at a time; every chunk must see its own boxes' pixels."""
    from mvcustom_core.ops import raster

    verts, faces = _random_soup(40, 3)
    cams = _ring_cameras(3, (13, 17), seed=3)
    ref = rasterize(verts, faces, cams, impl="reference")
    monkeypatch.setattr(raster, "CANDIDATE_CHUNK", chunk)
    assert torch.equal(rasterize(verts, faces, cams, impl="torch").face_idx, ref.face_idx)


def test_fast_paths_match_reference_on_a_feature_mesh():
    mesh, cams = _sphere_mesh_plan_inputs()
    ref = rasterize(mesh.vertices, mesh.faces, cams, impl="reference")
    for impl in ("torch", "triton"):
        assert torch.equal(rasterize(mesh.vertices, mesh.faces, cams, impl=impl).face_idx, ref.face_idx)


# ------------------------------------------------------------------------------------- plans
def test_apply_plan_matches_per_frame_reference_and_is_linear():
    mesh, cams = _sphere_mesh_plan_inputs()
    plan = plan_mesh_render(mesh, cams, impl="torch")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(mesh.num_verts, 6, generator=g), torch.randn(mesh.num_verts, 6, generator=g)
    feats, cov = apply_plan(plan, a)
    ref, ref_cov = apply_plan_reference(plan, a)
    torch.testing.assert_close(feats, ref)
    assert torch.equal(cov, ref_cov) and cov.shape == (3, 1, 10, 12)
    assert ((feats != 0).any(1, keepdim=True) <= cov.bool()).all()  # nothing outside coverage
    torch.testing.assert_close(apply_plan(plan, 2 * a - b)[0], 2 * feats - apply_plan(plan, b)[0])
    # The gather path (non-float32/64 dtypes) computes the same sums.
    half, _ = apply_plan(plan, a.to(torch.bfloat16))
    torch.testing.assert_close(half.float(), ref, rtol=0.02, atol=0.05)
    # Constant features render to the constant inside coverage (weights sum to one).
    ones, _ = apply_plan(plan, torch.ones(mesh.num_verts, 1))
    torch.testing.assert_close(ones, cov)


def test_apply_plan_gradient_reaches_vertex_features():
    mesh, cams = _sphere_mesh_plan_inputs()
    plan = plan_mesh_render(mesh, cams)
    x = torch.randn(mesh.num_verts, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda v: apply_plan(plan, v)[0], (x,))


def test_plan_at_another_resolution_uses_rescaled_intrinsics():
    """The anchor camera rendering its own mesh at the mesh grid is the identity on interior pixels."""
    mesh, _ = _sphere_mesh_plan_inputs(size=(10, 12))
    anchor = _cam(look_at(torch.tensor([[0.0, 0.0, -3.0]]), torch.zeros(3)), (40, 48), fov=50.0)
    feats = torch.randn(4, 10, 12)
    out, cov = apply_plan(plan_mesh_render(mesh, anchor), mesh.vertex_features(feats))
    kept = torch.zeros(10 * 12, dtype=torch.bool)
    kept[mesh.faces.flatten()] = True
    kept = kept.reshape(10, 12) & cov[0, 0].bool()
    torch.testing.assert_close(out[0][:, kept], feats[:, kept], rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise_clear_errors():
    verts, faces = _random_soup(3, 0)
    cams = _ring_cameras(1, (6, 6))
    with pytest.raises(RasterError, match="outside"):
        rasterize(verts, faces + 100, cams)
    with pytest.raises(RasterError, match="impl"):
        rasterize(verts, faces, cams, impl="cuda")
    with pytest.raises(RasterError, match="integer"):
        rasterize(verts, faces.float(), cams)
    with pytest.raises(ValueError, match="verts"):
        rasterize(verts[:, :2], faces, cams)
    with pytest.raises(ValueError, match="non-finite"):
        rasterize(verts * math.inf, faces, cams)
    plan = make_render_plan(rasterize(verts, faces, cams), faces)
    with pytest.raises(RasterError, match="rows"):
        apply_plan(plan, torch.zeros(2, 3))


def test_auto_falls_back_to_torch_when_the_kernel_fails(monkeypatch):
    import mvcustom_core.ops.raster as raster
    import mvcustom_core.ops.raster_triton as raster_triton

    def broken(sf):
        raise RuntimeError("no kernel today")

    monkeypatch.setattr(raster, "_auto_impl", lambda verts: "triton")
    monkeypatch.setattr(raster_triton, "winners_triton", broken)
    verts, faces = _random_soup(10, 4)
    cams = _ring_cameras(2, (9, 11))
    with pytest.warns(RuntimeWarning, match="no kernel today"):
        got = rasterize(verts, faces, cams, impl="auto")
    assert torch.equal(got.face_idx, rasterize(verts, faces, cams, impl="torch").face_idx)
    with pytest.raises(RuntimeError, match="no kernel today"):
        rasterize(verts, faces, cams, impl="triton")


# ------------------------------------------------------------------------------------- review additions
@pytest.mark.parametrize("impl", IMPLS)
def test_plan_at_another_size_than_the_mesh_renders_the_exact_plane_points(impl):
    """A tilted planar feature mesh (6x9 grid) planned at 11x17 for two 24x32 target cameras.

    Ground truth per target pixel: the ray-plane hit X (features are the vertices' world coordinates, so
    perspective-correct interpolation must return X exactly); covered iff X projects into the anchor's
    pixel-centre hull [0.5, w - 0.5] x [0.5, h - 0.5] of the 6x9 grid.
    """
    n, d = torch.nn.functional.normalize(torch.tensor([0.3, -0.2, 1.0]), dim=0), 0.3

    def plane_hits(cams: CameraSet) -> tuple[torch.Tensor, torch.Tensor]:  # [F, H, W, 3] hits, [F, H, W] z-depth
        h, w = cams.image_size
        uv = cams.pixel_centers().reshape(1, -1, 2).expand(cams.num_frames, -1, -1)
        p1 = cams.unproject(uv, torch.ones(cams.num_frames, h * w))  # on each ray at camera z = 1
        o = cams.centers[:, None]
        z = (d - o @ n) / ((p1 - o) @ n)
        return (o + z[..., None] * (p1 - o)).reshape(-1, h, w, 3), z.reshape(-1, h, w)

    anchor = _cam(look_at(torch.tensor([[0.0, 0.0, -3.0]]), torch.zeros(3)), (24, 32), fov=50.0)
    grid = anchor.with_image_size((6, 9))
    _, depth = plane_hits(grid)
    mesh = build_feature_mesh(depth[0], anchor, max_rel_depth_jump=10.0)
    assert mesh.num_faces == 2 * 5 * 8
    targets = _cam(look_at(torch.tensor([[0.9, 0.3, -3.0], [-0.7, -0.2, -2.6]]), torch.zeros(3)), (24, 32), fov=50.0)
    out, cov = apply_plan(plan_mesh_render(mesh, targets, (11, 17), impl=impl), mesh.vertices)
    assert out.shape == (2, 3, 11, 17)
    hits, _ = plane_hits(targets.with_image_size((11, 17)))
    uv, _ = grid.project(hits.reshape(-1, 3))
    uv = uv.reshape(2, 11, 17, 2)
    lo, hi = torch.tensor([0.5, 0.5]), torch.tensor([9 - 0.5, 6 - 0.5])
    inside = ((uv > lo + 1e-2) & (uv < hi - 1e-2)).all(-1)
    outside = ((uv < lo - 1e-2) | (uv > hi + 1e-2)).any(-1)
    cov = cov[:, 0].bool()
    assert inside.sum() > 100 and outside.sum() > 20  # both cases occur
    assert cov[inside].all() and not cov[outside].any()
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[cov], hits[cov], rtol=0, atol=2e-4)


def test_render_plan_occluders_hide_but_never_cover():
    """Face 1 (an occluder when ``num_covering=1``) in front of face 0 over the upper-left half of the image."""
    cam = _cam(torch.eye(4)[None], size=(8, 8), fov=90.0)
    back = torch.tensor([[-30.0, -30.0, 3.0], [30.0, -30.0, 3.0], [0.0, 30.0, 3.0]])
    front = cam.unproject(torch.tensor([[[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]]]), torch.full((1, 3), 2.0))[0]
    verts, faces = torch.cat([back, front]), torch.tensor([[0, 1, 2], [3, 4, 5]])
    frags = rasterize(verts, faces, cam, impl="reference")
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    in_front = i + j <= 7  # centres with u + v <= 8: inside the front face (its hypotenuse included)
    assert torch.equal(frags.face_idx[0], in_front.long())
    feats = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))

    plan = make_render_plan(frags, faces, num_covering=1)
    assert torch.equal(plan.coverage[0, 0], ~in_front) and plan.num_verts == 3
    assert (plan.vert_idx[0][~in_front] == torch.tensor([0, 1, 2])).all()
    assert (plan.vert_idx[0][in_front] == 0).all() and (plan.weights[0][in_front] == 0).all()
    out, cov = apply_plan(plan, feats)
    assert (out[0][:, in_front] == 0).all() and torch.equal(cov[0, 0].bool(), ~in_front)
    torch.testing.assert_close(plan.weights[0][~in_front].sum(-1), torch.ones(int((~in_front).sum())))

    none = make_render_plan(frags, faces, num_covering=0)  # every face an occluder
    assert not none.coverage.any() and none.num_verts == 0
    assert (none.vert_idx == 0).all() and (none.weights == 0).all()
    assert apply_plan(none, feats)[0].abs().sum() == 0

    for every in (make_render_plan(frags, faces, num_covering=2), make_render_plan(frags, faces)):  # no occluders
        assert every.coverage.all() and every.num_verts == 6
        assert (every.vert_idx[0][in_front] == torch.tensor([3, 4, 5])).all()


@pytest.mark.parametrize("size,frames", [((1, 1), 2), ((9, 33), 4), ((17, 15), 3), ((8, 16), 5)])
def test_triton_tiles_match_reference_at_borders_and_with_big_faces(size, frames):
    """Sizes below, at and not a multiple of the 8x16 tile, faces spanning many tiles, > BLOCK_F faces."""
    verts, faces = _random_soup(37, seed=5)
    verts = verts * 1.5  # faces larger than a tile
    cams = _ring_cameras(frames, size, seed=2)
    ref = rasterize(verts, faces, cams, impl="reference")
    assert ref.coverage.float().mean() > 0.2
    assert torch.equal(rasterize(verts, faces, cams, impl="triton").face_idx, ref.face_idx)
