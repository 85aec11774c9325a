"""Anchor feature mesh for depth-aware feature rendering (DFR, MVCustom Sec. 3.4, method.md §7.2).

The anchor view's depth map becomes a triangle mesh with one vertex per pixel centre and two
triangles per 2x2 block of pixels; the anchor's feature map, flattened, is the per-vertex feature
table. Rasterizing that mesh into the other cameras (:mod:`mvcustom_core.ops.raster`) moves the
anchor's features to where the same surface appears in each target view.

Convention: vertex ``row * w + col`` is the centre of anchor pixel (row, col), at pixel coordinates
``(u, v) = (col + ½, row + ½)``, unprojected with :meth:`CameraSet.unproject` as
``P = c2w · (D · K⁻¹ [u, v, 1]ᵀ)`` with ``D`` the camera z-depth (not the ray length). Every pixel
gets a vertex, so ``V = h·w`` and the vertex features are simply ``feature_map.reshape(C, h·w).T``;
vertices of invalid pixels sit at the camera centre and no face uses them.

Silhouette guards: a face dropped at a depth discontinuity is where the anchor's samples cannot say
which surface is seen — the true silhouette lies anywhere between the last near sample and the first
far one, and the near surface's unsampled rim ("sliver") may be seen broadside by another camera.
Each such face gets an *occluder*: the prism over its anchor-pixel footprint from the near surface's
depth to ``(1 + ρ)`` times it, ρ the depth a contour's rim can span within one pixel
(:func:`guard_depth`: τ = ``max_rel_depth_jump`` on the grid τ's default is set for, less on finer
grids; see :func:`silhouette_guards`). Occluders take part in the z-test
but never count as coverage, so target pixels whose ray meets that unknown space are left to the model
instead of taking the colour of whatever surface lies behind
(:func:`mvcustom_core.ops.raster.plan_mesh_render`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mvcustom_core.cameras.camera_set import CameraSet
from mvcustom_core.checks import check_shape

__all__ = ["FeatureMesh", "FeatureMeshError", "build_feature_mesh", "grid_faces", "resample_depth",
           "silhouette_guards", "DEFAULT_MAX_REL_DEPTH_JUMP",
           "DEFAULT_PLANAR_TOLERANCE", "guard_depth"]

DEFAULT_MAX_REL_DEPTH_JUMP = 0.1
# A step of inverse depth may differ from its collinear neighbours' by this share of the larger and still
# continue a plane (see build_feature_mesh): a kept face then spans at most twice its neighbours' step.
DEFAULT_PLANAR_TOLERANCE = 0.5
# Focal length (pixels) of the grid DEFAULT_MAX_REL_DEPTH_JUMP is stated for (64 px, 60° field of view); guards
# scale their depth from there (guard_depth).
GUARD_REFERENCE_FOCAL = 32.0 / math.tan(math.radians(30.0))


class FeatureMeshError(ValueError):
    """Bad input to :func:`build_feature_mesh` (shape, camera count, threshold)."""


@dataclass(frozen=True)
class FeatureMesh:
    """A depth map turned into a triangle mesh over the anchor's pixel grid.

    Attributes:
        vertices: ``[V, 3]`` world points of the anchor's pixel centres, ``V = h·w`` (row-major).
        faces: ``[T, 3]`` long vertex indices; every face has positive signed area in the anchor
            image's (u, v) coordinates (u right, v down), i.e. clockwise as seen on screen.
        pixel_coords: ``[V, 2]`` anchor pixel coordinates ``(u, v)`` of each vertex (centres, +½).
        depth: ``[V]`` anchor camera z-depth of each vertex (0 where invalid).
        grid_size: ``(h, w)`` of the pixel grid the vertices come from.
        occluder_vertices: ``[G, 3]`` world corners of the silhouette guards (see the module doc).
        occluder_faces: ``[Tg, 3]`` long guard triangles, indexing ``cat([vertices, occluder_vertices])``;
            they hide what lies behind them but carry no features.
    """

    vertices: Tensor
    faces: Tensor
    pixel_coords: Tensor
    depth: Tensor
    grid_size: tuple[int, int]
    occluder_vertices: Tensor | None = None
    occluder_faces: Tensor | None = None

    def render_geometry(self) -> tuple[Tensor, Tensor]:
        """Vertices ``[V + G, 3]`` and faces ``[T + Tg, 3]`` to rasterize: feature faces first, then occluders."""
        if self.occluder_faces is None or len(self.occluder_faces) == 0:
            return self.vertices, self.faces
        return (torch.cat([self.vertices, self.occluder_vertices]),
                torch.cat([self.faces, self.occluder_faces]))

    @property
    def num_verts(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def vertex_features(self, feature_map: Tensor) -> Tensor:
        """``feature_map: [C, h, w]`` (or ``[1, C, h, w]``) anchor features -> ``[V, C]`` (a view)."""
        if feature_map.dim() == 4:
            check_shape(feature_map, f"1 C {self.grid_size[0]} {self.grid_size[1]}", "feature_map")
            feature_map = feature_map[0]
        check_shape(feature_map, f"C {self.grid_size[0]} {self.grid_size[1]}", "feature_map")
        return feature_map.reshape(feature_map.shape[0], -1).T


def grid_faces(h: int, w: int, device: torch.device | None = None) -> Tensor:
    """All ``2·(h-1)·(w-1)`` triangles of an ``h x w`` vertex grid, in quad order.

    Quad (i, j) with corners a = (i, j), b = (i, j+1), c = (i+1, j), d = (i+1, j+1) is split
    along the b–c diagonal into faces ``(a, b, c)`` then ``(b, d, c)``; both have positive signed
    area in (u, v) = (column, row) coordinates.

    Returns:
        ``[2·(h-1)·(w-1), 3]`` long, faces ``2q`` and ``2q + 1`` belong to quad ``q = i·(w-1) + j``.
    """
    rows = torch.arange(h - 1, device=device)
    cols = torch.arange(w - 1, device=device)
    a = (rows[:, None] * w + cols[None, :]).reshape(-1)  # [Q] top-left corner of each quad
    b, c = a + 1, a + w
    d = c + 1
    upper = torch.stack([a, b, c], dim=-1)
    lower = torch.stack([b, d, c], dim=-1)
    return torch.stack([upper, lower], dim=1).reshape(-1, 3)


# A triangular prism as 8 triangles over corners 0-2 (front cap) and 3-5 (back cap, same order).
_PRISM_TRIANGLES = torch.tensor([[0, 1, 2], [3, 5, 4], [0, 3, 4], [0, 4, 1], [1, 4, 5], [1, 5, 2], [2, 5, 3], [2, 3, 0]])
# Guards are shrunk about their face's centroid by this fraction: the band between samples is open, so
# a guard must not reach the pixel centres whose surface the anchor did sample.
_GUARD_SHRINK = 1e-3


def guard_depth(max_rel_depth_jump: float, cam: CameraSet) -> float:
    """Relative depth ρ a silhouette guard spans behind the near surface, for the anchor camera at the mesh grid.

    Near an occluding contour a smooth surface is tangent to the viewing ray, so in the section across the
    contour its depth grows as the square root of the image distance to the contour: ``Δz = √(2·R·x)`` for a
    lateral offset ``x`` and radius of curvature ``R`` (J. Koenderink, *What does the occluding contour tell us
    about solid shape?*, Perception 1984). The unsampled rim lies within one pixel, ``x ≤ z/f``, so it spans
    ``Δz/z ≤ √(2·(R/z)/f)``: for a given subject the same at every distance, shrinking as ``1/√f`` on finer grids.
    ``max_rel_depth_jump`` (τ) is that extent on the grid its default is set for (``f₀ ≈ 55`` px: 64 px, 60°; τ =
    0.1 there bounds the rim of contours with ``R`` up to 0.275 of their distance), so ``ρ = τ·√(f₀/f)``.
    """
    k = cam.K[0]
    focal = float((k[0, 0] * k[1, 1]).abs().sqrt())
    return max_rel_depth_jump * math.sqrt(GUARD_REFERENCE_FOCAL / focal)


def silhouette_guards(
    uv: Tensor,  # [V, 2]
    z: Tensor,  # [V], 0 = invalid
    faces: Tensor,  # [D, 3] the dropped faces
    cam: CameraSet,
    max_rel_depth_jump: float,
) -> tuple[Tensor, Tensor]:
    """Occluder prisms over dropped faces (module doc): ``[6·D', 3]`` corners and ``[8·D', 3]`` triangles.

    Each corner's front depth is its vertex's own depth when that vertex is on the near surface
    (valid and within ``(1 + τ)·z_min``), else ``z_min``; its back depth is ``(1 + ρ)`` times the
    front, ``ρ = guard_depth(τ, cam)`` (``cam`` at the grid of ``uv``). A dropped face with no valid
    vertex says nothing about the scene and gets no guard. Triangle indices count from 0 over the
    returned corners; the caller offsets them.
    """
    fz = z[faces]  # [D, 3]
    known = (fz > 0).any(dim=-1)
    faces, fz = faces[known], fz[known]
    zmin = torch.where(fz > 0, fz, torch.full_like(fz, float("inf"))).amin(dim=-1, keepdim=True)  # [D', 1]
    on_near = (fz > 0) & (fz <= (1.0 + max_rel_depth_jump) * zmin)
    front = torch.where(on_near, fz, zmin)  # [D', 3]
    corner_z = torch.stack([front, front * (1.0 + guard_depth(max_rel_depth_jump, cam))], dim=1)  # [D', 2, 3]
    face_uv = uv[faces]  # [D', 3, 2]
    face_uv = face_uv + _GUARD_SHRINK * (face_uv.mean(dim=1, keepdim=True) - face_uv)
    corner_uv = face_uv[:, None].expand(-1, 2, -1, -1)  # [D', 2, 3, 2]
    corners = cam.unproject(corner_uv.reshape(1, -1, 2), corner_z.reshape(1, -1))[0]  # [6·D', 3]
    offsets = 6 * torch.arange(len(faces), device=faces.device)
    triangles = offsets[:, None, None] + _PRISM_TRIANGLES.to(faces.device)  # [D', 8, 3]
    return corners, triangles.reshape(-1, 3)


def _planar_steps(inv: Tensor, dr: int, dc: int, tolerance: float) -> Tensor:
    """``[h, w]`` bool: the step from pixel (i, j) to (i + dr, j + dc) continues a plane along its row or column.

    ``inv`` is ``[h, w]`` inverse depth, NaN where invalid. On a plane ``inv`` is affine in the pixel coordinates,
    so its steps along a line are equal (its second differences vanish). The step is planar when it lies in a run
    of four valid collinear samples (three steps: the two before it, the one before and after, or the two after)
    whose consecutive steps ``Δ, Δ'`` agree: ``|Δ' − Δ| ≤ tolerance · max(|Δ|, |Δ'|)``. Four samples rather than
    three: a silhouette blurred to one in-between sample makes two equal steps, never three. Entries whose
    ``(i + dr, j + dc)`` lies outside the grid are False.
    """
    h, w = inv.shape
    padded = torch.nn.functional.pad(inv, (3, 3, 3, 3), value=float("nan"))

    def step(k: int) -> Tensor:  # inv[(i, j) + (k + 1)·δ] − inv[(i, j) + k·δ] for every (i, j), NaN outside
        def at(m: int) -> Tensor:
            return padded[3 + m * dr: 3 + m * dr + h, 3 + m * dc: 3 + m * dc + w]
        return at(k + 1) - at(k)

    steps = {k: step(k) for k in range(-2, 3)}

    def agree(k: int) -> Tensor:  # steps k and k + 1 continue one plane (NaN compares False)
        a, b = steps[k], steps[k + 1]
        return (b - a).abs() <= tolerance * torch.maximum(a.abs(), b.abs())

    agrees = {k: agree(k) for k in range(-2, 2)}
    return (agrees[-2] & agrees[-1]) | (agrees[-1] & agrees[0]) | (agrees[0] & agrees[1])


def _face_edges_continuous(z: Tensor, max_rel_depth_jump: float, planar_tolerance: float) -> Tensor:
    """``[T0]`` bool over :func:`grid_faces`: every edge of the face is continuous (the culling rule of
    :func:`build_feature_mesh`). ``z`` is ``[h, w]`` depth, 0 where invalid (those faces are dropped elsewhere)."""
    h, w = z.shape
    inv = torch.where(z > 0, 1.0 / z.clamp_min(torch.finfo(z.dtype).tiny), torch.full_like(z, float("nan")))

    def small_jump(dr: int, dc: int) -> Tensor:
        far = torch.nn.functional.pad(z, (1, 1, 1, 1))[1 + dr: 1 + dr + h, 1 + dc: 1 + dc + w]
        # |Δz| <= jump · min z, written without a division so zero depths cannot make NaNs.
        return (z - far).abs() <= max_rel_depth_jump * torch.minimum(z, far)

    across_planar = _planar_steps(inv, 0, 1, planar_tolerance)[:, :-1]  # [h, w-1] (i, j) - (i, j+1)
    down_planar = _planar_steps(inv, 1, 0, planar_tolerance)[:-1, :]  # [h-1, w] (i, j) - (i+1, j)
    across = across_planar | small_jump(0, 1)[:, :-1]
    down = down_planar | small_jump(1, 0)[:-1, :]
    diagonal = small_jump(1, -1)[:-1, 1:]  # [h-1, w-1] quad (i, j)'s b-c edge: (i, j+1) - (i+1, j)
    # A face across a discontinuity always has a row or column edge across it (whichever vertex is alone, one of
    # its two edges is axis-aligned), so the diagonal needs no test of its own line: it continues the plane
    # when both axis edges of its face do.
    upper = across[:-1] & down[:, :-1] & (diagonal | (across_planar[:-1] & down_planar[:, :-1]))  # (a, b, c)
    lower = down[:, 1:] & across[1:] & (diagonal | (down_planar[:, 1:] & across_planar[1:]))  # (b, d, c)
    return torch.stack([upper, lower], dim=-1).reshape(-1)


def _depth_map(depth: Tensor, dims: str) -> tuple[Tensor, dict[str, int]]:
    """``[h, w]`` or ``[1, 1, h, w]`` floating-point depth -> ``[h, w]`` and its sizes under the names in ``dims``."""
    if depth.dim() == 4:
        check_shape(depth, "1 1 " + dims, "depth")
        depth = depth[0, 0]
    sizes = check_shape(depth, dims, "depth")
    if not depth.is_floating_point():
        raise FeatureMeshError(f"depth must be a floating-point tensor, got {depth.dtype}")
    return depth, sizes


def build_feature_mesh(
    depth: Tensor,  # [h, w] or [1, 1, h, w]
    cam: CameraSet,
    *,
    max_rel_depth_jump: float = DEFAULT_MAX_REL_DEPTH_JUMP,
    valid: Tensor | None = None,  # [h, w] bool
    guard_silhouettes: bool = True,
    planar_tolerance: float = DEFAULT_PLANAR_TOLERANCE,
) -> FeatureMesh:
    """Unproject an anchor depth map into a pixel-grid triangle mesh, dropping stretched faces.

    Culling rule (depth discontinuities): a face is dropped when any vertex is invalid (``valid``
    False, non-finite or non-positive depth), or when one of its edges is a discontinuity: its
    relative depth jump ``|z_p − z_q| / min(z_p, z_q)`` exceeds ``max_rel_depth_jump`` *and* its
    depths do not continue a plane. A face spans about one pixel, i.e. an angle ``δ ≈ 1 / f`` (focal
    length in pixels at the mesh resolution); on a smooth surface tilted by θ from fronto-parallel the
    jump is about ``√2·δ·tan θ``, which grows without bound toward grazing incidence (a ground plane
    near its horizon), while across an occlusion boundary it is ``z_far / z_near − 1``. The plane test
    tells the two apart: under a pinhole projection the inverse depth ``1/z`` of a plane is affine in
    the pixel coordinates (P. Heckbert, H. Moreton, *Interpolation for Polygon Texture Mapping and
    Shading*, 1991; the disparity-plane model of stereo, e.g. M. Bleyer et al., *PatchMatch Stereo*,
    BMVC 2011), so its second differences vanish along every row and column. A row or column edge
    continues a plane when it lies in a run of four collinear valid samples whose consecutive steps of
    ``1/z`` agree within ``planar_tolerance`` of the larger (:func:`_planar_steps`); an occlusion
    boundary adds a step that agrees with neither side. The diagonal continues the plane when both
    axis edges of its face do (a face across a discontinuity always has an axis edge across it).
    ``max_rel_depth_jump`` (default 0.1: at a 64-pixel, 60° grid, ``f ≈ 55``, it keeps curved
    surfaces up to ≈ 75° of tilt) now only bounds curved surfaces, whose steps are not equal; faces
    across any larger jump would otherwise be stretched as "rubber sheets" across the disoccluded
    region of every other view (method.md §7.2: the paper's masks show thin disoccluded slivers at
    silhouettes). A plane passes at any tilt; a kept face's ``1/z`` step is at most ``1 / (1 −
    planar_tolerance)`` times its neighbours' (twice, by default). What no local test can tell from a
    plane is a ramp of ≥ 2 in-between samples equally spaced in ``1/z`` (a silhouette blurred that
    way); a single in-between sample is cut.

    Args:
        depth: ``[h, w]`` or ``[1, 1, h, w]`` anchor camera z-depth (OpenCV camera z, not the ray
            length) at the mesh resolution (e.g. the hooked layer's). Resample a full-resolution
            depth map with nearest-neighbour or min-pooling, not averaging: averaging invents depths
            between foreground and background.
        cam: one anchor camera; its ``image_size`` may differ from ``(h, w)`` — intrinsics are
            rescaled with :meth:`CameraSet.with_image_size` (same field of view).
        max_rel_depth_jump: threshold (> 0) on an edge's relative depth jump, for edges that do not
            continue a plane.
        valid: optional ``[h, w]`` bool mask of pixels with usable depth.
        guard_silhouettes: give every dropped face an occluder prism (module doc), so target pixels
            near silhouettes whose surface the anchor cannot determine are left uncovered.
        planar_tolerance: in [0, 1), how far consecutive steps of ``1/z`` may differ, relative to the
            larger, and still continue a plane.

    Returns:
        A :class:`FeatureMesh` with ``V = h·w`` vertices in the dtype and device of ``depth``.

    Example:
        >>> from mvcustom_core.cameras import CameraSet
        >>> cam = CameraSet.from_fov(torch.eye(4)[None], fov_y_deg=60.0, image_size=(8, 8))
        >>> mesh = build_feature_mesh(torch.full((4, 4), 2.0), cam)
        >>> mesh.num_verts, mesh.num_faces
        (16, 18)
    """
    depth, dims = _depth_map(depth, "h w")
    if valid is not None:
        check_shape(valid, "h w", "valid", dims)
    if not isinstance(cam, CameraSet) or cam.num_frames != 1:
        got = cam.num_frames if isinstance(cam, CameraSet) else type(cam).__name__
        raise FeatureMeshError(f"cam must be a CameraSet holding exactly one anchor camera, got {got}")
    if not max_rel_depth_jump > 0.0:
        raise FeatureMeshError(f"max_rel_depth_jump must be > 0, got {max_rel_depth_jump}")
    if not 0.0 <= planar_tolerance < 1.0:
        raise FeatureMeshError(f"planar_tolerance must lie in [0, 1), got {planar_tolerance}")
    h, w = dims["h"], dims["w"]
    if h < 2 or w < 2:
        raise FeatureMeshError(f"depth must be at least 2x2 to form triangles, got {h}x{w}")

    ok = torch.isfinite(depth) & (depth > 0)
    if valid is not None:
        ok = ok & valid.to(device=depth.device, dtype=torch.bool)
    z = torch.where(ok, depth, torch.zeros_like(depth)).reshape(-1)  # [V]

    cam = cam.with_image_size((h, w)).to(device=depth.device, dtype=depth.dtype)
    uv = cam.pixel_centers(depth.dtype).reshape(-1, 2)  # [V, 2]
    vertices = cam.unproject(uv[None], z[None])[0]  # [V, 3]

    faces = grid_faces(h, w, device=depth.device)  # [T0, 3]
    face_ok = ok.reshape(-1)[faces].all(dim=-1)
    face_ok &= _face_edges_continuous(z.reshape(h, w), max_rel_depth_jump, planar_tolerance)
    guards = {}
    if guard_silhouettes:
        corners, triangles = silhouette_guards(uv, z, faces[~face_ok], cam, max_rel_depth_jump)
        guards = {"occluder_vertices": corners, "occluder_faces": triangles + len(vertices)}
    return FeatureMesh(vertices=vertices, faces=faces[face_ok], pixel_coords=uv, depth=z, grid_size=(h, w), **guards)


def resample_depth(depth: Tensor, size: tuple[int, int], *, mode: str = "nearest") -> Tensor:
    """Bring a depth map to a hooked layer's resolution without inventing depths between surfaces.

    Args:
        depth: ``[H, W]`` or ``[1, 1, H, W]`` camera z-depth; non-finite or non-positive = invalid.
        size: ``(h, w)`` target grid (e.g. a UNet feature map of the same field of view).
        mode: ``"nearest"`` — the full-resolution pixel under each target pixel centre
            ``((j + ½)·W/w, (i + ½)·H/h)`` (its sample lies within half a source pixel of the mesh vertex's ray);
            ``"min"`` — the nearest valid depth in each target pixel's footprint (integer factors only), which
            keeps thin foreground structures at the cost of fattening silhouettes by up to half a target pixel.
            Averaging is not offered: across a silhouette it creates depths on neither surface.

    Returns:
        ``[h, w]`` depth, invalid pixels as ``0`` (``"min"``: only where the whole footprint is invalid).

    Example:
        >>> resample_depth(torch.arange(1.0, 17.0).reshape(4, 4), (2, 2), mode="min").tolist()
        [[1.0, 3.0], [9.0, 11.0]]
    """
    depth, dims = _depth_map(depth, "H W")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise FeatureMeshError(f"size must be positive, got {size}")
    big_h, big_w = dims["H"], dims["W"]
    ok = torch.isfinite(depth) & (depth > 0)
    if mode == "nearest":
        rows = ((torch.arange(h, device=depth.device) + 0.5) * big_h / h).floor().long().clamp(0, big_h - 1)
        cols = ((torch.arange(w, device=depth.device) + 0.5) * big_w / w).floor().long().clamp(0, big_w - 1)
        out = torch.where(ok, depth, torch.zeros_like(depth))
        return out[rows[:, None], cols[None, :]]
    if mode == "min":
        if big_h % h or big_w % w:
            raise FeatureMeshError(f"mode='min' needs integer factors, got {big_h}x{big_w} -> {h}x{w}")
        inf = torch.full_like(depth, float("inf"))
        pooled = -torch.nn.functional.max_pool2d(-torch.where(ok, depth, inf)[None, None], (big_h // h, big_w // w))
        pooled = pooled[0, 0]
        return torch.where(torch.isfinite(pooled), pooled, torch.zeros_like(pooled))
    raise FeatureMeshError(f"mode must be 'nearest' or 'min', got {mode!r}")
