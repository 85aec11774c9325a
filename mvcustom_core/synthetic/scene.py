"""A procedural scene with exact geometry: a textured subject on a textured ground under a textured sky.

The subject and the ground are analytic convex solids (:mod:`mvcustom_core.synthetic.primitives`), so
the nearest hit of any ray is exact (closed-form roots, no marching). Colours are procedural solid
textures (:mod:`mvcustom_core.synthetic.textures`) with Lambertian shading under a fixed directional
light: they depend on the surface point only, never on the viewer, so a view warped into another
through the true geometry reproduces the other view's colours.

The background is an environment at infinity: its colour is a band-limited function of the ray
*direction* only. It is not geometry, so it has depth ``+inf``, mask 0 and object id 0.

Object ids: 0 background, 1 ground, 2.. the subject's parts in preset order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from mvcustom_core.cameras import CameraSet
from mvcustom_core.checks import ShapeError, check_finite, check_shape
from mvcustom_core.synthetic.primitives import HalfSpaceY, Primitive, first_hit
from mvcustom_core.synthetic.subjects import SUBJECTS, SubjectPreset
from mvcustom_core.synthetic.textures import WaveTexture, make_wave_texture

__all__ = ["SyntheticScene", "SceneRender", "SceneError", "BACKGROUND_ID", "GROUND_ID", "FIRST_PART_ID"]

BACKGROUND_ID = 0
GROUND_ID = 1
FIRST_PART_ID = 2

# The sky texture is read at the unit ray direction scaled to this radius, so its on-screen frequency
# matches a subject-sized surface at the usual orbit radius.
_SKY_TEXTURE_RADIUS = 3.0
# The ground's waves are low-passed with distance r from the subject centre, at a local cutoff of
# 1.5 max_frequency / (1 + (r / s)^2): a grazing plane's footprint per pixel grows about like r^2, so
# this keeps the on-screen frequency roughly constant out to the horizon (no aliasing there), while
# near the subject all waves keep >= 80 % of their amplitude.
_GROUND_FADE_DISTANCE = 3.0
# Rays per batch of the ray caster (bounds the [N, waves] table of the textures).
_RAYS_PER_CHUNK = 1 << 17


class SceneError(ValueError):
    """A bad scene parameter or render input."""


@dataclass(frozen=True)
class SceneRender:
    """Exact per-pixel quantities of one :meth:`SyntheticScene.render` call.

    Attributes:
        rgb: ``[F, 3, H, W]`` shaded colour in [0, 1]; box-averaged over sub-pixels when supersampled.
        depth: ``[F, 1, H, W]`` camera-space z (OpenCV, +z forward) of the first hit of the pixel-centre
            ray: NOT the ray length, ``depth = (X - C) · forward``, what :meth:`CameraSet.unproject`
            expects. ``+inf`` on the background (it is at infinity, not geometry).
        mask: ``[F, 1, H, W]`` float 1 where the pixel-centre ray hits the subject, else 0.
        object_id: ``[F, 1, H, W]`` int64 id hit by the pixel-centre ray (0 background, 1 ground,
            2.. subject parts).
        points: ``[F, 3, H, W]`` world point hit by the pixel-centre ray; on the background (depth
            inf) the unit world direction of the ray instead, i.e. the direction of the point at
            infinity, which is what :meth:`SyntheticScene.color_at` reads for id 0.
        coverage: ``[F, 1, H, W]`` fraction of the ``s x s`` sub-pixel rays that hit the subject (an
            anti-aliased mask); equal to ``mask`` when ``supersample == 1``.
    """

    rgb: Tensor
    depth: Tensor
    mask: Tensor
    object_id: Tensor
    points: Tensor
    coverage: Tensor

    @property
    def valid(self) -> Tensor:
        """``[F, 1, H, W]`` bool: pixels whose depth is finite (ground or subject)."""
        return torch.isfinite(self.depth)


@dataclass(frozen=True)
class SyntheticScene:
    """A textured subject standing on a textured ground plane under a textured sky at infinity.

    World frame: OpenCV habit, up is ``-y``. The subject is centred at ``subject_center`` (the origin
    for the presets), the ground is the plane ``y = ground_y > 0`` below it. Geometry depends on
    ``subject`` only; the seed draws the textures (one per object, sky included) and nothing else.

    Args:
        seed: draws every texture; equal seeds give bit-identical renders.
        subject: ``"default"`` (body ellipsoid, box plinth, tilted rod, sphere head: non-convex
            silhouettes and self-occlusion), ``"sphere"`` (radius 0.6 at the origin: exact circular
            silhouettes) or ``"none"`` (ground and sky only). See ``SUBJECTS``. Or any
            :class:`~mvcustom_core.synthetic.subjects.SubjectPreset` (e.g. from
            :mod:`mvcustom_core.synthetic.world`).
        max_frequency: texture band limit in cycles per world unit (on the subject and on the ground
            near it); every plane wave of every texture has frequency ``<= max_frequency``. 16 gives
            rich, non-repeating detail for feature matching at 128-256 px; 2-4 gives smooth textures
            for resampling tests at ~64-128 px.
        ground: include the ground plane (``False``: the subject floats in front of the sky).
        light_dir: world direction *towards* the directional light (default: above, -y).
        ambient: shade of surfaces facing away from the light, in [0, 1]; 1 switches shading off.
            The sky is unshaded.
        textures: optional textures, one per object id (sky, ground, then the subject's parts),
            replacing the ones drawn from ``seed``.

    Example:
        >>> from mvcustom_core.synthetic import turntable_cameras
        >>> scene = SyntheticScene(seed=3, subject="sphere")
        >>> out = scene.render(turntable_cameras(2, image_size=(32, 32)))
        >>> tuple(out.rgb.shape), bool(out.mask[:, 0, 16, 16].all())
        ((2, 3, 32, 32), True)
    """

    seed: int = 0
    subject: str | SubjectPreset = "default"
    max_frequency: float = 16.0
    ground: bool = True
    light_dir: tuple[float, float, float] = (0.45, -1.0, -0.35)
    ambient: float = 0.35
    textures: tuple[WaveTexture, ...] | None = field(default=None, repr=False)
    _solids: tuple[Primitive, ...] = field(init=False, repr=False, compare=False)
    _textures: tuple[WaveTexture, ...] = field(init=False, repr=False, compare=False)
    part_names: tuple[str, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.subject, SubjectPreset) and self.subject not in SUBJECTS:
            raise SceneError(f"subject must be one of {sorted(SUBJECTS)} or a SubjectPreset, got {self.subject!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise SceneError(f"seed must be a non-negative int, got {self.seed!r}")
        if not 0.0 <= self.ambient <= 1.0:
            raise SceneError(f"ambient must lie in [0, 1], got {self.ambient}")
        if len(self.light_dir) != 3 or math.hypot(*self.light_dir) == 0:
            raise SceneError(f"light_dir must be a non-zero 3-vector, got {self.light_dir}")
        preset = self.preset
        # Index 0 (the sky) has no solid; a ground that is switched off is a solid no ray reaches.
        ground = HalfSpaceY(height=preset.ground_y if self.ground else math.inf)
        solids = (None, ground) + tuple(p.primitive for p in preset.parts)
        gen = torch.Generator().manual_seed(self.seed)
        try:
            textures = tuple(make_wave_texture(gen, max_frequency=self.max_frequency) for _ in solids)
        except ValueError as err:
            raise SceneError(f"max_frequency: {err}") from None
        if self.textures is not None:
            if len(self.textures) != len(solids):
                raise SceneError(f"textures must give one texture per object (sky, ground, {len(preset.parts)} "
                                 f"part(s)): {len(solids)}, got {len(self.textures)}")
            textures = tuple(self.textures)
        object.__setattr__(self, "_solids", solids)
        object.__setattr__(self, "_textures", textures)
        object.__setattr__(self, "part_names", tuple(p.name for p in preset.parts))

    # ------------------------------------------------------------------ geometry
    @property
    def preset(self) -> SubjectPreset:
        """The subject's parts, ground height and centre."""
        return self.subject if isinstance(self.subject, SubjectPreset) else SUBJECTS[self.subject]

    @property
    def subject_center(self) -> tuple[float, float, float]:
        """World point the subject is centred on (where turntable cameras should look)."""
        return self.preset.center

    @property
    def subject_radius(self) -> float:
        """Radius of a sphere about :attr:`subject_center` enclosing the subject (exact for "sphere")."""
        return max((s.bounding_radius(self.subject_center) for s in self._solids[FIRST_PART_ID:]), default=0.0)

    @property
    def ground_y(self) -> float:
        """Height of the ground plane ``y = ground_y`` (inf when ``ground=False``)."""
        return self._solids[GROUND_ID].height

    @property
    def num_objects(self) -> int:
        """Number of object ids: background, ground and the subject parts."""
        return len(self._solids)

    def primitive(self, object_id: int) -> Primitive:
        """The analytic solid behind a geometric object id (1 ground, 2.. parts)."""
        if not GROUND_ID <= object_id < self.num_objects:
            raise SceneError(f"object_id must lie in [{GROUND_ID}, {self.num_objects}), got {object_id}")
        return self._solids[object_id]

    def intersect(self, origins: Tensor, dirs: Tensor, *, t_min: float = 0.0) -> tuple[Tensor, Tensor]:
        """Exact nearest hit along rays ``origins + t * dirs`` with ``t > t_min``.

        Args:
            origins: ``[..., 3]`` world ray origins.
            dirs: ``[..., 3]`` world ray directions, any non-zero length (``t`` is in units of it).
            t_min: hits at ``t <= t_min`` are ignored (e.g. a small positive value to leave a surface).

        Returns:
            t: ``[...]`` ray parameter of the nearest hit (``inf`` where the ray reaches the sky).
            object_id: ``[...]`` int64 id of the object hit (0 where the ray reaches the sky).
        """
        check_shape(origins, "* 3", "origins")
        check_shape(dirs, "* 3", "dirs")
        if not (origins.is_floating_point() and dirs.is_floating_point()):
            raise SceneError("origins and dirs must be floating-point tensors")
        origins, dirs = torch.broadcast_tensors(origins, dirs.to(origins))
        best_t = torch.full_like(origins[..., 0], math.inf)
        best_id = torch.full(best_t.shape, BACKGROUND_ID, dtype=torch.int64, device=origins.device)
        for object_id in range(GROUND_ID, self.num_objects):
            t = first_hit(*self._solids[object_id].interval(origins, dirs), t_min)
            closer = t < best_t
            best_t = torch.where(closer, t, best_t)
            best_id = torch.where(closer, object_id, best_id)
        return best_t, best_id

    def implicit(self, points: Tensor, object_id: Tensor) -> Tensor:
        """``points: [..., 3]``, ``object_id: [...]`` -> ``[...]`` the object's implicit function.

        Zero on the object's surface, negative inside its solid; NaN for the background (id 0).
        """
        return self._per_object(points, object_id, 1, lambda i, p: self._solids[i].implicit(p),
                                fill=math.nan, background=False)[..., 0]

    def normal_at(self, points: Tensor, object_id: Tensor) -> Tensor:
        """``points: [..., 3]``, ``object_id: [...]`` -> ``[..., 3]`` outward unit normals (0 for id 0)."""
        return self._per_object(points, object_id, 3, lambda i, p: self._solids[i].normal(p), fill=0.0,
                                background=False)

    # ------------------------------------------------------------------ appearance
    def color_at(self, points: Tensor, object_id: Tensor) -> Tensor:
        """Shaded colour of surface points; view-independent.

        ``albedo(p) * (ambient + (1 - ambient) * max(0, n(p) · l))`` with the texture and outward
        normal ``n`` of the object; for the background (id 0) ``points`` are read as ray directions
        (any length) and the sky's albedo is returned unshaded. Points need not lie exactly on the
        surface (each texture is a field on 3D space).

        Args:
            points: ``[..., 3]`` world points (directions where ``object_id`` is 0).
            object_id: ``[...]`` ids as in :class:`SceneRender`.

        Returns:
            ``[..., 3]`` RGB in [0, 1], dtype and device of ``points``.
        """
        light = torch.tensor(self.light_dir, dtype=points.dtype, device=points.device)
        light = light / light.norm()

        def shaded(i: int, p: Tensor) -> Tensor:
            if i == BACKGROUND_ID:
                return self._textures[i].albedo(p * (_SKY_TEXTURE_RADIUS / p.norm(dim=-1, keepdim=True)))
            cutoff = None
            if i == GROUND_ID:
                r = (p - torch.tensor(self.subject_center, dtype=p.dtype, device=p.device))[:, [0, 2]].norm(dim=-1)
                cutoff = 1.5 * self.max_frequency / (1 + (r / _GROUND_FADE_DISTANCE) ** 2)
            albedo = self._textures[i].albedo(p, cutoff)
            lambert = (self._solids[i].normal(p) @ light).clamp_min(0)
            return albedo * (self.ambient + (1 - self.ambient) * lambert)[:, None]
        return self._per_object(points, object_id, 3, shaded, fill=0.0, background=True)

    def _per_object(self, points: Tensor, object_id: Tensor, channels: int,
                    fn: Callable[[int, Tensor], Tensor], fill: float, background: bool) -> Tensor:
        """Evaluate ``fn(id, points_of_that_id: [N, 3]) -> [N, channels]`` object by object."""
        check_shape(points, "* 3", "points")
        if not points.is_floating_point():
            raise SceneError(f"points must be floating point, got {points.dtype}")
        if tuple(object_id.shape) != tuple(points.shape[:-1]):
            raise ShapeError(f"object_id must have shape {list(points.shape[:-1])} (points without "
                             f"the last axis), got {list(object_id.shape)}")
        flat_p = points.reshape(-1, 3)
        flat_id = object_id.reshape(-1).to(flat_p.device)
        if flat_id.numel() and (int(flat_id.min()) < 0 or int(flat_id.max()) >= self.num_objects):
            raise SceneError(f"object_id values must lie in [0, {self.num_objects}), got "
                             f"[{int(flat_id.min())}, {int(flat_id.max())}]")
        out = torch.full((flat_p.shape[0], channels), fill, dtype=points.dtype, device=points.device)
        for i in range(0 if background else GROUND_ID, self.num_objects):
            idx = torch.nonzero(flat_id == i).flatten()
            if len(idx):
                out[idx] = fn(i, flat_p[idx]).reshape(len(idx), channels)
        return out.reshape(*points.shape[:-1], channels)

    # ------------------------------------------------------------------ rendering
    def render(self, cams: CameraSet, *, supersample: int = 1) -> SceneRender:
        """Ray-cast every pixel of every camera (exact, no sampling noise).

        Args:
            cams: F cameras; the render follows their dtype and device.
            supersample: ``s >= 1``; rgb and coverage average an ``s x s`` grid of sub-pixel rays
                (box filter). Depth, mask, object_id and points always come from the pixel centres.

        Returns:
            :class:`SceneRender` (rgb, points ``[F, 3, H, W]``; depth, mask, object_id ``[F, 1, H, W]``).
        """
        if not isinstance(cams, CameraSet):
            raise SceneError(f"cams must be a CameraSet, got {type(cams).__name__}")
        if isinstance(supersample, bool) or not isinstance(supersample, int) or supersample < 1:
            raise SceneError(f"supersample must be a positive int, got {supersample!r}")
        if not cams.c2w.is_floating_point():
            raise SceneError(f"cams must hold floating-point tensors, got {cams.c2w.dtype}")
        check_finite(cams.K, "cams.K")
        check_finite(cams.c2w, "cams.c2w")
        h, w = cams.image_size
        per_frame = max(1, _RAYS_PER_CHUNK // (h * w * supersample ** 2))
        chunks = []
        for start in range(0, cams.num_frames, per_frame):
            K, c2w = cams.K[start:start + per_frame], cams.c2w[start:start + per_frame]
            origins, dirs = _pixel_rays(K, c2w, h, w, 1)  # [f, 1, 3], [f, H*W, 3]
            depth, ids = self.intersect(origins, dirs)  # camera-z of dirs is 1, so t is the z-depth
            sky = ids == BACKGROUND_ID
            hit = origins + torch.where(sky, 0.0, depth)[..., None] * dirs
            points = torch.where(sky[..., None], dirs / dirs.norm(dim=-1, keepdim=True), hit)
            mask = (ids >= FIRST_PART_ID).to(depth.dtype)
            if supersample == 1:
                rgb, coverage = self.color_at(points, ids), mask
            else:
                o_s, d_s = _pixel_rays(K, c2w, h, w, supersample)
                t_s, ids_s = self.intersect(o_s, d_s)
                p_s = torch.where((ids_s == BACKGROUND_ID)[..., None], d_s,
                                  o_s + torch.where(ids_s == BACKGROUND_ID, 0.0, t_s)[..., None] * d_s)
                s = supersample
                rgb = self.color_at(p_s, ids_s).reshape(-1, h, s, w, s, 3).mean(dim=(2, 4))
                coverage = (ids_s >= FIRST_PART_ID).to(depth.dtype).reshape(-1, h, s, w, s).mean(dim=(2, 4))
            f = K.shape[0]
            chunks.append((rgb.reshape(f, h, w, 3).permute(0, 3, 1, 2),
                           depth.reshape(f, 1, h, w),
                           mask.reshape(f, 1, h, w),
                           ids.reshape(f, 1, h, w),
                           points.reshape(f, h, w, 3).permute(0, 3, 1, 2),
                           coverage.reshape(f, 1, h, w)))
        rgb, depth, mask, ids, points, coverage = (torch.cat(x).contiguous() for x in zip(*chunks))
        return SceneRender(rgb=rgb, depth=depth, mask=mask, object_id=ids, points=points, coverage=coverage)


def _pixel_rays(K: Tensor, c2w: Tensor, h: int, w: int, s: int) -> tuple[Tensor, Tensor]:
    """Rays of cameras ``K: [F, 3, 3]``, ``c2w: [F, 4, 4]`` through an ``s x s`` sub-pixel grid.

    Returns ``origins: [F, 1, 3]`` and ``dirs: [F, H*s*W*s, 3]`` in row-major (row, sub-row, col,
    sub-col) order, scaled so each direction has camera-space z = 1 (then the ray parameter is the
    z-depth). ``s = 1`` gives the pixel centres (+0.5 convention).
    """
    offsets = (torch.arange(s, dtype=K.dtype, device=K.device) + 0.5) / s
    v = (torch.arange(h, dtype=K.dtype, device=K.device)[:, None] + offsets).reshape(-1)  # [H*s]
    u = (torch.arange(w, dtype=K.dtype, device=K.device)[:, None] + offsets).reshape(-1)  # [W*s]
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    pix = torch.stack([uu, vv, torch.ones_like(uu)], dim=-1).reshape(1, -1, 3)
    cam_dirs = pix @ torch.linalg.inv(K).transpose(-1, -2)  # [F, N, 3]
    cam_dirs = cam_dirs / cam_dirs[..., 2:3]  # exactly z = 1 despite rounding in the inverse
    return c2w[:, None, :3, 3], cam_dirs @ c2w[:, :3, :3].transpose(-1, -2)
