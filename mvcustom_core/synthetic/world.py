"""Random synthetic worlds: a subject of a named kind and colour on a named ground under a named sky.

The training and evaluation data of the built-in backbone (``scripts/train_tiny_world.py``,
``docs/synthetic.md``). Everything is drawn from one integer seed:

1. :func:`world_spec`: the discrete choices (category, colour, ground, sky) and the subject's yaw;
2. :func:`build_world`: a :class:`~mvcustom_core.synthetic.scene.SyntheticScene` whose subject is a
   union of primitives of that category with proportions drawn from the seed, standing on the ground
   plane ``y = GROUND_Y`` (world up is ``-y``), with textures of the named colours;
3. :func:`random_path`: a short camera path around it (orbit, spiral, dolly, truck or pedestal);
4. :func:`render_clip`: the clip's RGB, depth and mask along that path, and its caption
   ("photo of a red toy on grass ground under a blue sky").

Train/held-out split: training uses seeds ``>= HELD_OUT_SEEDS``; seeds below it are held out for the
demo and the ablation (their subjects' proportions and textures never appear in training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from mvcustom_core.cameras import CameraSet
from mvcustom_core.synthetic.primitives import Box, CappedCylinder, Ellipsoid, Pose, Primitive, rotation_xyz
from mvcustom_core.synthetic.scene import SceneRender, SyntheticScene
from mvcustom_core.synthetic.subjects import SubjectPart, SubjectPreset
from mvcustom_core.synthetic.textures import WaveTexture, checker_texture, color_logit, make_wave_texture

__all__ = ["CATEGORIES", "COLORS", "GROUNDS", "SKIES", "GROUND_Y", "HELD_OUT_SEEDS", "PATH_KINDS", "WorldSpec",
           "WorldClip", "world_spec", "build_subject", "build_world", "random_path", "render_clip"]

GROUND_Y = 0.8
HELD_OUT_SEEDS = 1000

CATEGORIES = ("toy", "car", "chair", "dog", "robot")
# Mean albedo of each named colour (sRGB-like values in (0, 1)).
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10), "orange": (0.95, 0.50, 0.10), "yellow": (0.93, 0.85, 0.15),
    "green": (0.15, 0.65, 0.20), "blue": (0.15, 0.30, 0.90), "purple": (0.55, 0.20, 0.75),
    "white": (0.92, 0.92, 0.90), "black": (0.10, 0.10, 0.12), "pink": (0.95, 0.55, 0.72),
}
# (mean colour, logit contrast) of the wave-textured grounds; "checker" is a two-colour checkerboard.
GROUNDS: dict[str, tuple[tuple[float, float, float], float]] = {
    "grass": ((0.30, 0.55, 0.20), 0.7), "sand": ((0.82, 0.72, 0.50), 0.5), "stone": ((0.50, 0.50, 0.52), 1.0),
    "snow": ((0.88, 0.90, 0.94), 0.4), "checker": ((0.50, 0.50, 0.50), 0.0),
}
_CHECKER_PAIRS = (((0.88, 0.88, 0.88), (0.15, 0.15, 0.15)), ((0.85, 0.25, 0.20), (0.90, 0.88, 0.80)),
                  ((0.20, 0.30, 0.75), (0.90, 0.85, 0.35)))
SKIES: dict[str, tuple[float, float, float]] = {
    "blue": (0.45, 0.65, 0.92), "sunset": (0.95, 0.60, 0.40), "grey": (0.62, 0.64, 0.68), "night": (0.10, 0.12, 0.28),
}
PATH_KINDS = ("orbit", "spiral", "dolly", "truck", "pedestal")
_PATH_WEIGHTS = (0.5, 0.1, 0.15, 0.15, 0.1)

# Textures vary mostly in brightness (saturation 0.2), so the named colours stay recognisable; 48 waves
# in the bank (the scene default is 96) halve the render time at these low caps.
_SUBJECT_CONTRAST, _SUBJECT_MAX_FREQUENCY = 0.45, 4.0
_GROUND_MAX_FREQUENCY = 6.0
_SKY_CONTRAST, _SKY_MAX_FREQUENCY = 0.3, 1.5
_SATURATION, _NUM_WAVES = 0.2, 48
_WHEEL_COLOR = (0.15, 0.15, 0.16)


@dataclass(frozen=True)
class WorldSpec:
    """The discrete choices of one world (everything else follows from ``seed``).

    Attributes:
        seed: the world's seed.
        category, color, ground, sky: keys of :data:`CATEGORIES`, :data:`COLORS`, :data:`GROUNDS`, :data:`SKIES`.
        yaw_deg: the subject's turn about the vertical axis.
    """

    seed: int
    category: str
    color: str
    ground: str
    sky: str
    yaw_deg: float

    def caption(self, *, subject: str | None = None, color: bool = True, ground: bool = True,
                sky: bool = True) -> str:
        """``"photo of a red toy on grass ground under a blue sky"``; ``subject`` replaces ``"red toy"`` (e.g. a
        customization's ``"<token> toy"``); the flags leave out a clause."""
        words = subject if subject is not None else (f"{self.color} {self.category}" if color else self.category)
        text = f"photo of {'an' if words[0] in 'aeiou' else 'a'} {words}"
        if ground:
            text += f" on {self.ground} ground"
        if sky:
            text += f" under a {self.sky} sky"
        return text


@dataclass(frozen=True)
class WorldClip:
    """One rendered clip.

    Attributes:
        spec: the world.
        cams: the F cameras (world frame of :func:`build_world`).
        render: exact RGB ``[F, 3, H, W]``, depth, mask, ... (:class:`SceneRender`).
        caption: the caption with the clauses kept for this clip.
        path: the path kind (a key of :data:`PATH_KINDS`).
    """

    spec: WorldSpec
    cams: CameraSet
    render: SceneRender
    caption: str
    path: str


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen, dtype=torch.float64))


def _choice(gen: torch.Generator, options, weights=None):
    options = list(options)
    if weights is None:
        return options[int(torch.randint(len(options), (), generator=gen))]
    index = int(torch.multinomial(torch.tensor(weights, dtype=torch.float64), 1, generator=gen))
    return options[index]


def world_spec(seed: int) -> WorldSpec:
    """The world of ``seed`` (uniform category, colour, ground, sky and yaw)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"world seed must be a non-negative int, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    return WorldSpec(seed, _choice(gen, CATEGORIES), _choice(gen, COLORS), _choice(gen, GROUNDS), _choice(gen, SKIES),
                     _uniform(gen, 0.0, 360.0))


# ------------------------------------------------------------------------------------------ subjects
# Builders place parts in a local frame whose ground is y = 0 (up is -y) and return the parts, which
# get the subject colour unless named "wheel", and the height of the top.
def _toy(g: torch.Generator) -> tuple[list[tuple[str, Primitive]], float]:
    ph = _uniform(g, 0.07, 0.12)
    plinth = Box(Pose((0.0, -ph, 0.0), (0.0, _uniform(g, 0, 45), 0.0)),
                 half_extents=(_uniform(g, 0.32, 0.45), ph, _uniform(g, 0.28, 0.40)))
    radii = (_uniform(g, 0.28, 0.40), _uniform(g, 0.32, 0.45), _uniform(g, 0.22, 0.34))
    body_y = -2 * ph - 0.85 * radii[1]
    head_r = _uniform(g, 0.17, 0.26)
    head_y = body_y - radii[1] - 0.8 * head_r
    parts = [("plinth", plinth), ("body", Ellipsoid(Pose((0.0, body_y, 0.0)), radii=radii)),
             ("head", Ellipsoid(Pose((0.0, head_y, 0.0)), radii=(head_r,) * 3))]
    if _uniform(g, 0, 1) < 0.6:
        parts.append(("arms", CappedCylinder(Pose((0.0, body_y, 0.0), (0.0, 0.0, 90.0 + _uniform(g, -20, 20))),
                                             radius=_uniform(g, 0.06, 0.08), half_height=radii[0] + 0.2)))
    return parts, -(head_y - head_r)


def _car(g: torch.Generator) -> tuple[list[tuple[str, Primitive]], float]:
    r, length, width = _uniform(g, 0.15, 0.2), _uniform(g, 0.6, 0.8), _uniform(g, 0.3, 0.4)
    hb = _uniform(g, 0.12, 0.18)
    body_y = -(0.6 * r + hb)
    hc = _uniform(g, 0.1, 0.16)
    cabin_y = body_y - hb - hc
    parts = [("body", Box(Pose((0.0, body_y, 0.0)), half_extents=(length, hb, width))),
             ("cabin", Box(Pose((_uniform(g, -0.15, 0.15), cabin_y, 0.0)),
                           half_extents=(length * _uniform(g, 0.45, 0.6), hc, width * 0.85)))]
    half = _uniform(g, 0.06, 0.08)
    for sx in (-1, 1):
        for sz in (-1, 1):  # axis along z: local y turned by 90 degrees about x
            parts.append(("wheel", CappedCylinder(Pose((sx * (length - 0.18), -r, sz * (width + 0.02)), (90.0, 0, 0)),
                                                  radius=r, half_height=half)))
    return parts, -(cabin_y - hc)


def _chair(g: torch.Generator) -> tuple[list[tuple[str, Primitive]], float]:
    sx, sz, seat_h = _uniform(g, 0.3, 0.4), _uniform(g, 0.3, 0.4), _uniform(g, 0.45, 0.6)
    leg_r, bh = _uniform(g, 0.045, 0.06), _uniform(g, 0.3, 0.45)
    parts = [("seat", Box(Pose((0.0, -seat_h, 0.0)), half_extents=(sx, 0.05, sz))),
             ("back", Box(Pose((0.0, -(seat_h + 0.05 + bh), sz - 0.05)), half_extents=(sx, bh, 0.05)))]
    for px in (-1, 1):
        for pz in (-1, 1):
            parts.append(("leg", CappedCylinder(Pose((px * (sx - 0.06), -seat_h / 2, pz * (sz - 0.06))),
                                                radius=leg_r, half_height=seat_h / 2)))
    return parts, seat_h + 0.05 + 2 * bh


def _dog(g: torch.Generator) -> tuple[list[tuple[str, Primitive]], float]:
    leg_h, bl, bh, bw = _uniform(g, 0.3, 0.4), _uniform(g, 0.45, 0.6), _uniform(g, 0.18, 0.25), _uniform(g, 0.18, 0.24)
    body_y = -(leg_h + 0.6 * bh)
    head_r = _uniform(g, 0.16, 0.22)
    head_y = body_y - bh - 0.05
    leg_r = _uniform(g, 0.06, 0.08)
    parts = [("body", Ellipsoid(Pose((0.0, body_y, 0.0)), radii=(bl, bh, bw))),
             ("head", Ellipsoid(Pose((bl + 0.05, head_y, 0.0)), radii=(head_r,) * 3)),
             ("tail", CappedCylinder(Pose((-bl - 0.05, body_y - 0.1, 0.0), (0.0, 0.0, _uniform(g, 30, 60))),
                                     radius=0.04, half_height=0.2))]
    for px in (-1, 1):
        for pz in (-1, 1):
            parts.append(("leg", CappedCylinder(Pose((px * (bl - 0.15), -leg_h / 2 - 0.05, pz * (bw - 0.06))),
                                                radius=leg_r, half_height=leg_h / 2 + 0.05)))
    return parts, -(head_y - head_r)


def _robot(g: torch.Generator) -> tuple[list[tuple[str, Primitive]], float]:
    leg_h, bx, by, bz = _uniform(g, 0.3, 0.4), _uniform(g, 0.25, 0.35), _uniform(g, 0.25, 0.35), _uniform(g, 0.18, 0.25)
    body_y = -(leg_h + by)
    hs = _uniform(g, 0.14, 0.2)
    head_y = body_y - by - hs - 0.02
    parts = [("body", Box(Pose((0.0, body_y, 0.0)), half_extents=(bx, by, bz))),
             ("head", Box(Pose((0.0, head_y, 0.0), (0.0, _uniform(g, -20, 20), 0.0)), half_extents=(hs, hs, hs)))]
    for s in (-1, 1):
        parts.append(("leg", Box(Pose((s * 0.15, -leg_h / 2, 0.0)), half_extents=(0.08, leg_h / 2, 0.1))))
        parts.append(("arm", CappedCylinder(Pose((s * (bx + 0.08), body_y, 0.0), (0.0, 0.0, s * _uniform(g, 5, 20))),
                                            radius=0.06, half_height=0.9 * by)))
    return parts, -(head_y - hs)


_BUILDERS = {"toy": _toy, "car": _car, "chair": _chair, "dog": _dog, "robot": _robot}


def _shape_generator(spec: WorldSpec) -> torch.Generator:
    # A stream apart from world_spec's draws, so the choices and the shapes of a seed are independent.
    return torch.Generator().manual_seed(spec.seed * 2 + 1)


def build_subject(spec: WorldSpec) -> tuple[SubjectPreset, tuple[str, ...]]:
    """The subject of ``spec`` standing on ``y = GROUND_Y``, turned by ``yaw_deg``, centred on the origin's vertical.

    Returns the preset (its ``center`` is the middle of the subject's height) and each part's name.
    """
    parts, height = _BUILDERS[spec.category](_shape_generator(spec))
    yaw = rotation_xyz((0.0, spec.yaw_deg, 0.0))
    placed = tuple(SubjectPart(name, replace(p, pose=p.pose.moved(yaw, (0.0, GROUND_Y, 0.0)))) for name, p in parts)
    preset = SubjectPreset(parts=placed, ground_y=GROUND_Y, description=f"{spec.color} {spec.category}",
                           center=(0.0, GROUND_Y - height / 2, 0.0))
    return preset, tuple(name for name, _ in parts)


def _textures(spec: WorldSpec, part_names: tuple[str, ...]) -> tuple[WaveTexture, ...]:
    gen = torch.Generator().manual_seed(spec.seed * 2 + 2)
    waves = dict(saturation=_SATURATION, num_waves=_NUM_WAVES)
    sky = make_wave_texture(gen, max_frequency=_SKY_MAX_FREQUENCY, contrast=_SKY_CONTRAST,
                            base=color_logit(SKIES[spec.sky]), **waves)
    if spec.ground == "checker":
        a, b = _choice(gen, _CHECKER_PAIRS)
        ground = checker_texture(_uniform(gen, 0.6, 1.0), a, b, sharpness=2.0)
    else:
        color, contrast = GROUNDS[spec.ground]
        ground = make_wave_texture(gen, max_frequency=_GROUND_MAX_FREQUENCY, contrast=contrast, base=color_logit(color),
                                   **waves)
    subject = color_logit(COLORS[spec.color])
    parts = []
    for name in part_names:
        base = color_logit(_WHEEL_COLOR) if name == "wheel" else subject + 0.15 * torch.randn(3, generator=gen,
                                                                                              dtype=torch.float64)
        parts.append(make_wave_texture(gen, max_frequency=_SUBJECT_MAX_FREQUENCY, contrast=_SUBJECT_CONTRAST, base=base,
                                       **waves))
    return (sky, ground, *parts)


def build_world(spec: WorldSpec | int) -> SyntheticScene:
    """The scene of a world (a spec or a seed): subject, ground and sky with the spec's named colours."""
    spec = world_spec(spec) if isinstance(spec, int) else spec
    preset, names = build_subject(spec)
    return SyntheticScene(seed=spec.seed, subject=preset, max_frequency=_GROUND_MAX_FREQUENCY, ambient=0.45,
                          textures=_textures(spec, names))


# ------------------------------------------------------------------------------------------ paths
def random_path(gen: torch.Generator, frames: int, image_size: tuple[int, int],
                target: tuple[float, float, float], *, kind: str | None = None) -> tuple[CameraSet, str]:
    """A short camera path around ``target`` (float32 cameras) and its kind.

    All paths start from a camera looking at ``target`` from radius 2.3-3.2, azimuth 0-360°, elevation
    5-35°, vertical field of view 38-50°; then an orbit arc of 20-120° either way, a spiral (arc of
    20-90° with elevation and radius changing), a dolly of 0.3-0.9 units in or out, a truck of 0.4-1.2
    sideways or a pedestal of 0.2-0.6 up or down (pack presets, :mod:`mvcustom_core.trajectories`).
    """
    from mvcustom_core.trajectories import make_trajectory

    kind = kind or _choice(gen, PATH_KINDS, _PATH_WEIGHTS)
    radius, azimuth = _uniform(gen, 2.3, 3.2), _uniform(gen, 0.0, 360.0)
    elevation, fov = _uniform(gen, 5.0, 35.0), _uniform(gen, 38.0, 50.0)
    sign = _choice(gen, (-1.0, 1.0))
    common = dict(image_size=image_size, fov_y_deg=fov, dtype=torch.float32, target=target)
    base = dict(radius=radius, azimuth_deg=azimuth, elevation_deg=elevation)
    if kind == "orbit":
        cams = make_trajectory("orbit", frames, span_deg=sign * _uniform(gen, 20, 120), start_azimuth_deg=azimuth,
                               elevation_deg=elevation, radius=radius, loop=False, **common)
    elif kind == "spiral":
        cams = make_trajectory("spiral", frames, span_deg=sign * _uniform(gen, 20, 90), start_azimuth_deg=azimuth,
                               elevation_start_deg=elevation, elevation_end_deg=_uniform(gen, 5.0, 35.0),
                               radius_start=radius, radius_end=radius + _uniform(gen, -0.4, 0.4), **common)
    elif kind == "dolly":
        cams = make_trajectory("dolly", frames, distance=sign * _uniform(gen, 0.3, 0.9), **base, **common)
    elif kind == "truck":
        cams = make_trajectory("truck", frames, distance=sign * _uniform(gen, 0.4, 1.2), **base, **common)
    elif kind == "pedestal":
        cams = make_trajectory("pedestal", frames, distance=sign * _uniform(gen, 0.2, 0.6), **base, **common)
    else:
        raise ValueError(f"path kind must be one of {PATH_KINDS}, got {kind!r}")
    return cams, kind


def render_clip(seed: int, frames: int, size: int | tuple[int, int], *, supersample: int = 2,
                clause_dropout: float = 0.15, path_seed: int | None = None) -> WorldClip:
    """Render world ``seed`` along a random path (``path_seed``, default ``seed``) with a caption.

    ``clause_dropout``: probability of leaving out each of the colour, ground and sky clauses (captions
    of varied length, so prompts that name less still work).
    """
    spec = world_spec(seed)
    scene = build_world(spec)
    size = (size, size) if isinstance(size, int) else tuple(size)
    gen = torch.Generator().manual_seed(seed * 2 + 3 if path_seed is None else path_seed)
    cams, kind = random_path(gen, frames, size, scene.subject_center)
    keep = [_uniform(gen, 0, 1) >= clause_dropout for _ in range(3)]
    caption = spec.caption(color=keep[0], ground=keep[1], sky=keep[2])
    return WorldClip(spec, cams, scene.render(cams, supersample=supersample), caption, kind)
