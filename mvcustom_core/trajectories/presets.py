"""Named camera paths around a subject: orbit, spiral, lemniscate, dolly, zoom, dolly-zoom, pan, tilt, roll, ...

Convention:

- A trajectory is a :class:`~mvcustom_core.cameras.CameraSet` (OpenCV camera axes, camera-to-world, pixel
  intrinsics); there is no separate trajectory type.
- **World frame.** The subject (look-at point, ``target``) is at the origin unless given, and world
  **up is -y** (the OpenCV habit, and :func:`~mvcustom_core.cameras.look_at`'s default). The horizontal
  plane is x-z. Distances are in the units of the normalized scene of
  :mod:`mvcustom_core.cameras.normalize`, where reference cameras lie within radius 1 of the subject,
  so the default radius is 1.
- **Azimuth and elevation** place a camera on a sphere around ``target``::

      eye = target + radius * (cos(el) sin(az), -sin(el), -cos(el) cos(az))

  Azimuth 0, elevation 0 is the camera on the -z side looking along +z with the identity rotation.
  Positive elevation is above the target (towards -y). Increasing azimuth turns the camera
  counter-clockwise seen from above (a right-handed turn about the up axis -y), so at azimuth 90° the
  camera sits on the +x side; ``direction="ccw"`` increases azimuth, ``"cw"`` decreases it.
- **Moves in the camera's own frame** (pan, tilt, roll, truck, pedestal, dolly) start from the camera
  that looks at ``target`` from ``radius``/``azimuth_deg``/``elevation_deg`` and are named as a camera
  operator names them: pan > 0 turns right, tilt > 0 turns up, roll > 0 turns the camera clockwise as
  seen by the viewer behind it (the picture appears to turn counter-clockwise), truck > 0 moves right,
  pedestal > 0 moves up, dolly > 0 moves forward.
- **Time.** Frame ``i`` of ``F`` sits at ``t = i / (F - 1)`` (``t = 0`` for a single frame), so a path
  includes both ends; a closed path with ``loop=True`` uses ``t = i / F`` so its last frame does not
  repeat the first.
- Intrinsics: square pixels, centred principal point, ``fov_y_deg`` vertical field of view (zoom
  presets change it per frame). Output dtype defaults to float64 (camera math is cheap).

Use :func:`make_trajectory` with a name from :data:`PRESETS`; :func:`preset_parameters` lists each
preset's parameters as ``ParamSpec(default, min, max, help, choices, unit)`` for UIs. The thirteen
CameraCtrl presets register themselves here as ``cameractrl_*`` (see
:mod:`mvcustom_core.trajectories.cameractrl_presets`; they have their own world frame: the first
camera is the identity).
"""

from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass, fields
from typing import Any, Callable, Sequence

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from torch import Tensor

from mvcustom_core.cameras.camera_set import CameraSet
from mvcustom_core.cameras.look_at import look_at

__all__ = [
    "PRESETS",
    "PRESET_ALIASES",
    "TrajectoryError",
    "ParamSpec",
    "make_trajectory",
    "preset_parameters",
    "orbit_position",
    "orbit",
    "spiral",
    "lemniscate",
    "dolly_in",
    "dolly_out",
    "zoom_in",
    "zoom_out",
    "dolly_zoom_in",
    "dolly_zoom_out",
    "pan",
    "tilt",
    "roll",
    "truck",
    "pedestal",
    "dolly",
    "static",
]

DEFAULT_IMAGE_SIZE = (512, 512)
DEFAULT_FOV_Y_DEG = 50.0
# Arguments every preset takes besides its own parameters; preset_parameters() leaves them out.
_COMMON_ARGS = ("image_size", "fov_y_deg", "dtype")


class TrajectoryError(ValueError):
    """A trajectory request with a bad name, frame count or parameter value."""


@dataclass(frozen=True)
class ParamSpec:
    """What a UI needs to show one preset parameter.

    ``min``/``max`` are inclusive bounds that :func:`make_trajectory` enforces (``None`` for
    non-numeric parameters); the preset function may reject values at a bound that make no sense
    (e.g. ``radius`` must be > 0).
    """

    default: Any
    min: float | None
    max: float | None
    help: str
    choices: tuple[str, ...] | None = None
    unit: str = ""


PRESETS: dict[str, Callable[..., CameraSet]] = {}
_SPECS: dict[str, dict[str, tuple]] = {}
# Earlier names of presets, still accepted by make_trajectory / preset_parameters (not listed in PRESETS).
PRESET_ALIASES: dict[str, str] = {}

# Inclusive bounds by parameter name, the same in every preset, so one UI widget per name can serve
# all presets; a preset's own checks are finer (e.g. radius > 0, dolly_in distance may be negative).
_ELEVATION_RANGE = (-89.9, 89.9)
_PARAM_RANGES: dict[str, tuple[float, float]] = {
    "span_deg": (-3600.0, 3600.0),
    "start_azimuth_deg": (-360.0, 360.0),
    "azimuth_deg": (-360.0, 360.0),
    "elevation_deg": _ELEVATION_RANGE,
    "elevation_start_deg": _ELEVATION_RANGE,
    "elevation_end_deg": _ELEVATION_RANGE,
    "radius": (0.01, 1000.0),
    "radius_start": (0.01, 1000.0),
    "radius_end": (0.01, 1000.0),
    "amplitude": (0.001, 1000.0),
    "distance": (-1000.0, 1000.0),
    "factor": (0.01, 100.0),
    "angle_deg": (-360.0, 360.0),
    "speed": (-100.0, 100.0),  # AnimateDiff-Evolved's range
}


def _preset(name: str, **specs: tuple):
    """Register a preset function under ``name`` with ``param=(unit, help[, choices])``."""

    def register(fn: Callable[..., CameraSet]) -> Callable[..., CameraSet]:
        PRESETS[name] = fn
        _SPECS[name] = specs
        return fn

    return register


def _preset_alias(alias: str, name: str) -> None:
    """Accept ``alias`` wherever the preset ``name`` is accepted."""
    PRESET_ALIASES[alias] = name


def _canonical(name: str) -> str:
    name = PRESET_ALIASES.get(name, name)
    if name not in PRESETS:
        raise TrajectoryError(f"unknown trajectory preset {name!r}; choose one of {sorted(PRESETS)}")
    return name


def make_trajectory(
    name: str,
    frames: int,
    *,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    fov_y_deg: float | None = None,
    dtype: torch.dtype = torch.float64,
    **params: Any,
) -> CameraSet:
    """Build the preset ``name`` with ``frames`` cameras.

    Args:
        name: a key of :data:`PRESETS` (or of :data:`PRESET_ALIASES`).
        frames: number of cameras, >= 1.
        image_size: ``(H, W)`` in pixels.
        fov_y_deg: vertical field of view of the first frame, in degrees; ``None`` takes the preset's
            default (50° for the geometric presets, CameraCtrl's intrinsics for ``cameractrl_*``).
        **params: the preset's parameters (see :func:`preset_parameters`); missing ones take defaults.

    Returns:
        A :class:`CameraSet` of ``frames`` cameras.

    Example:
        >>> cams = make_trajectory("orbit", 8, elevation_deg=30.0)
        >>> cams.num_frames, cams.image_size
        (8, (512, 512))
    """
    name = _canonical(name)
    known = preset_parameters(name)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise TrajectoryError(f"preset {name!r} has no parameter {unknown[0]!r}; its parameters are {sorted(known)}")
    for pname, value in params.items():
        _check_parameter(name, pname, known[pname], value)
    if fov_y_deg is not None:
        params["fov_y_deg"] = fov_y_deg
    return PRESETS[name](_check_frames(frames), image_size=image_size, dtype=dtype, **params)


def preset_parameters(name: str) -> dict[str, ParamSpec]:
    """Parameters of preset ``name`` (besides ``image_size``, ``fov_y_deg`` and ``dtype``).

    Returns:
        ``{parameter: ParamSpec(default, min, max, help, choices, unit)}`` in signature order; ``min``
        and ``max`` are ``None`` for non-numeric parameters (vectors, booleans, choices).
    """
    name = _canonical(name)
    signature = inspect.signature(PRESETS[name])
    out = {}
    for pname, p in signature.parameters.items():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or pname in _COMMON_ARGS:
            continue
        unit, help_text, *choices = _SPECS[name][pname]
        numeric = isinstance(p.default, (int, float)) and not isinstance(p.default, bool)
        lo, hi = _PARAM_RANGES.get(pname, (None, None)) if numeric else (None, None)
        out[pname] = ParamSpec(p.default, lo, hi, help_text, tuple(choices[0]) if choices else None, unit)
    return out


def _check_parameter(preset: str, pname: str, spec: ParamSpec, value: Any) -> None:
    """Raise :class:`TrajectoryError` naming the preset and parameter if ``value`` breaks ``spec``."""
    if spec.choices is not None and value not in spec.choices:
        raise TrajectoryError(f"preset {preset!r}: {pname} must be one of {list(spec.choices)}, got {value!r}")
    if spec.min is None:
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TrajectoryError(f"preset {preset!r}: {pname} must be a number, got {value!r}") from None
    if not spec.min <= v <= spec.max:
        raise TrajectoryError(f"preset {preset!r}: {pname} = {v:g} is outside [{spec.min:g}, {spec.max:g}]")


# ---------------------------------------------------------------------------------------------- checks
def _check_frames(frames: int) -> int:
    """``frames`` as an ``int`` (numpy and 0-d tensor integers accepted); raise unless it is >= 1."""
    try:
        n = operator.index(frames)
    except TypeError:
        n = None
    if n is None or isinstance(frames, bool) or n < 1:
        raise TrajectoryError(f"frames must be an integer >= 1, got {frames!r}")
    return n


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise TrajectoryError(f"{name} must be finite, got {value}")
    return value


def _positive(name: str, value: float) -> float:
    value = _finite(name, value)
    if value <= 0:
        raise TrajectoryError(f"{name} must be > 0, got {value}")
    return value


def _elevation(name: str, value: float) -> float:
    value = _finite(name, value)
    if not -90.0 < value < 90.0:
        # At ±90° the viewing direction is parallel to world up and the roll is undefined.
        raise TrajectoryError(f"{name} must lie strictly between -90 and 90 degrees, got {value}")
    return value


def _vector3(name: str, value: Sequence[float] | Tensor, dtype: torch.dtype) -> Tensor:
    v = torch.as_tensor(value, dtype=dtype).flatten()
    if v.numel() != 3:
        raise TrajectoryError(f"{name} must have 3 values (x, y, z), got {v.numel()}")
    if not bool(torch.isfinite(v).all()):
        raise TrajectoryError(f"{name} must be finite, got {v.tolist()}")
    return v


def _check_common(image_size: tuple[int, int], fov_y_deg: float) -> None:
    if len(image_size) != 2 or min(int(s) for s in image_size) <= 0:
        raise TrajectoryError(f"image_size must be two positive integers (H, W), got {image_size!r}")
    fov = _finite("fov_y_deg", fov_y_deg)
    if not 0.0 < fov < 180.0:
        raise TrajectoryError(f"fov_y_deg must lie strictly between 0 and 180, got {fov}")


def _direction_sign(direction: str) -> float:
    if direction == "ccw":
        return 1.0
    if direction == "cw":
        return -1.0
    raise TrajectoryError(f"direction must be 'ccw' or 'cw', got {direction!r}")


# ---------------------------------------------------------------------------------------------- geometry
def _times(frames: int, dtype: torch.dtype, closed: bool = False) -> Tensor:
    """``[F]`` normalized times: ``i / (F - 1)`` (both ends), or ``i / F`` for a closed loop."""
    i = torch.arange(frames, dtype=dtype)
    if closed:
        return i / frames
    return i / max(frames - 1, 1)


def orbit_position(target: Tensor, radius: Tensor, azimuth_deg: Tensor, elevation_deg: Tensor) -> Tensor:
    """Points on the sphere around ``target`` in the module's azimuth/elevation convention.

    Args:
        target: ``[3]``.
        radius, azimuth_deg, elevation_deg: ``[F]`` (or broadcastable).

    Returns:
        ``[F, 3]`` positions ``target + radius * (cos el sin az, -sin el, -cos el cos az)``.
    """
    az, el = torch.deg2rad(azimuth_deg), torch.deg2rad(elevation_deg)
    offset = torch.stack([torch.cos(el) * torch.sin(az), -torch.sin(el), -torch.cos(el) * torch.cos(az)], dim=-1)
    return target + radius[..., None] * offset


def _cameras(c2w: Tensor, fov_y_deg: float, image_size: tuple[int, int],
             focal_scale: Tensor | None = None) -> CameraSet:
    """Square-pixel cameras; ``focal_scale: [F]`` multiplies the focal length of each frame."""
    cams = CameraSet.from_fov(c2w, fov_y_deg, tuple(int(s) for s in image_size))
    if focal_scale is None:
        return cams
    K = cams.K.clone()
    K[:, 0, 0] = K[:, 0, 0] * focal_scale
    K[:, 1, 1] = K[:, 1, 1] * focal_scale
    return CameraSet(K=K, c2w=c2w, image_size=cams.image_size)


def _base_c2w(target: Tensor, radius: float, azimuth_deg: float, elevation_deg: float) -> Tensor:
    """``[4, 4]`` camera at (radius, azimuth, elevation) around ``target`` looking at it."""
    dt = target.dtype
    eye = orbit_position(target, torch.tensor([radius], dtype=dt), torch.tensor([azimuth_deg], dtype=dt),
                         torch.tensor([elevation_deg], dtype=dt))
    return look_at(eye, target)[0]


def _turn_about_own_axis(c2w0: Tensor, axis: int, angles: Tensor) -> Tensor:
    """``[F, 4, 4]``: camera ``c2w0: [4, 4]`` rotated in place about its own axis by ``angles: [F]`` rad."""
    rotvec = torch.zeros(angles.shape[0], 3, dtype=angles.dtype)
    rotvec[:, axis] = angles
    c2w = c2w0.expand(angles.shape[0], 4, 4).clone()
    c2w[:, :3, :3] = c2w0[:3, :3] @ axis_angle_to_rotation_matrix(rotvec)
    return c2w


def _move_along_own_axis(c2w0: Tensor, axis: int, distances: Tensor) -> Tensor:
    """``[F, 4, 4]``: camera ``c2w0: [4, 4]`` translated by ``distances: [F]`` along its own axis."""
    c2w = c2w0.expand(distances.shape[0], 4, 4).clone()
    c2w[:, :3, 3] = c2w0[:3, 3] + distances[:, None] * c2w0[:3, axis]
    return c2w


_TARGET = ("world units", "look-at point (x, y, z); the subject")
_RADIUS = ("world units", "distance from the target to the (first) camera")
_AZIMUTH = ("deg", "azimuth of the (first) camera; 0 = on the -z side, increasing counter-clockwise seen from above")
_ELEVATION = ("deg", "elevation of the (first) camera above the target's horizontal plane, in (-90, 90)")
_BASE = dict(target=_TARGET, radius=_RADIUS, azimuth_deg=_AZIMUTH, elevation_deg=_ELEVATION)


@dataclass(frozen=True)
class _Base:
    """The arguments every base preset shares, with their defaults: the first camera, placed at
    ``radius``/``azimuth_deg``/``elevation_deg`` around ``target`` and looking at it, and the intrinsics."""

    target: Sequence[float] | Tensor = (0.0, 0.0, 0.0)
    radius: float = 1.0
    azimuth_deg: float = 0.0
    elevation_deg: float = 15.0
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    fov_y_deg: float = DEFAULT_FOV_Y_DEG
    dtype: torch.dtype = torch.float64

    def camera(self, frames: int) -> tuple[Tensor, Tensor]:
        """Check ``frames`` and the shared arguments; ``(target: [3], c2w0: [4, 4])`` of the first camera."""
        _check_frames(frames)
        _check_common(self.image_size, self.fov_y_deg)
        target = _vector3("target", self.target, self.dtype)
        c2w0 = _base_c2w(target, _positive("radius", self.radius), _finite("azimuth_deg", self.azimuth_deg),
                         _elevation("elevation_deg", self.elevation_deg))
        return target, c2w0

    def cameras(self, c2w: Tensor, focal_scale: Tensor | None = None) -> CameraSet:
        """:func:`_cameras` with this image size and field of view."""
        return _cameras(c2w, self.fov_y_deg, self.image_size, focal_scale)


# The shared arguments as the keyword-only parameters that follow a base preset's own ones.
_BASE_PARAMETERS = tuple(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                           annotation=f.type) for f in fields(_Base))


def _base_preset(name: str, **specs: tuple):
    """Register ``path(frames, base: _Base, *, own parameters)`` as the preset ``name``.

    The public function is ``(frames, *, <own parameters>, target, radius, azimuth_deg, elevation_deg,
    image_size, fov_y_deg, dtype)`` with the defaults of :class:`_Base`: that signature is what
    :func:`preset_parameters` (and so the node widgets) read. It keeps the path's name and docstring
    and calls the path with the shared arguments gathered in one :class:`_Base`. ``specs`` are the own
    parameters' ``(unit, help[, choices])`` as for :func:`_preset`.
    """

    def build(path: Callable[..., CameraSet]) -> Callable[..., CameraSet]:
        path_signature = inspect.signature(path)
        frames_param, _base, *own = path_signature.parameters.values()
        signature = path_signature.replace(parameters=[frames_param, *own, *_BASE_PARAMETERS])

        def preset(*args: Any, **kwargs: Any) -> CameraSet:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = bound.arguments
            base = _Base(**{p.name: values.pop(p.name) for p in _BASE_PARAMETERS})
            return path(values.pop("frames"), base, **values)

        preset.__name__, preset.__qualname__, preset.__doc__ = path.__name__, path.__qualname__, path.__doc__
        preset.__signature__ = signature
        preset.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        preset.__annotations__["return"] = signature.return_annotation
        return _preset(name, **specs, **_BASE)(preset)

    return build


# ---------------------------------------------------------------------------------------------- presets
@_preset(
    "orbit",
    span_deg=("deg", "azimuth swept by the path; 360 = a full turn"),
    start_azimuth_deg=_AZIMUTH,
    elevation_deg=_ELEVATION,
    radius=("world units", "distance from the target"),
    target=_TARGET,
    direction=("", "'ccw' (counter-clockwise seen from above) or 'cw'", ("ccw", "cw")),
    loop=("", "for a span that is a multiple of 360°, leave out the final frame that would repeat the first"),
)
def orbit(
    frames: int,
    *,
    span_deg: float = 360.0,
    start_azimuth_deg: float = 0.0,
    elevation_deg: float = 15.0,
    radius: float = 1.0,
    target: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    direction: str = "ccw",
    loop: bool = True,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    fov_y_deg: float = DEFAULT_FOV_Y_DEG,
    dtype: torch.dtype = torch.float64,
) -> CameraSet:
    """Cameras on a horizontal circle around ``target``, all looking at it, equal azimuth steps."""
    frames = _check_frames(frames)
    _check_common(image_size, fov_y_deg)
    span = _finite("span_deg", span_deg)
    sign = _direction_sign(direction)
    target = _vector3("target", target, dtype)
    closed = bool(loop) and span != 0.0 and math.isclose(math.remainder(span, 360.0), 0.0, abs_tol=1e-9)
    azimuth = _finite("start_azimuth_deg", start_azimuth_deg) + sign * span * _times(frames, dtype, closed)
    elevation = torch.full_like(azimuth, _elevation("elevation_deg", elevation_deg))
    radii = torch.full_like(azimuth, _positive("radius", radius))
    c2w = look_at(orbit_position(target, radii, azimuth, elevation), target)
    return _cameras(c2w, fov_y_deg, image_size)


@_preset(
    "spiral",
    span_deg=("deg", "azimuth swept by the path; 720 = two turns"),
    start_azimuth_deg=_AZIMUTH,
    elevation_start_deg=("deg", "elevation of the first camera, in (-90, 90)"),
    elevation_end_deg=("deg", "elevation of the last camera, in (-90, 90)"),
    radius_start=("world units", "distance of the first camera from the target"),
    radius_end=("world units", "distance of the last camera from the target"),
    target=_TARGET,
    direction=("", "'ccw' (counter-clockwise seen from above) or 'cw'", ("ccw", "cw")),
)
def spiral(
    frames: int,
    *,
    span_deg: float = 720.0,
    start_azimuth_deg: float = 0.0,
    elevation_start_deg: float = 0.0,
    elevation_end_deg: float = 45.0,
    radius_start: float = 1.0,
    radius_end: float = 0.75,
    target: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    direction: str = "ccw",
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    fov_y_deg: float = DEFAULT_FOV_Y_DEG,
    dtype: torch.dtype = torch.float64,
) -> CameraSet:
    """An orbit whose elevation and radius change linearly with the azimuth, looking at ``target``."""
    frames = _check_frames(frames)
    _check_common(image_size, fov_y_deg)
    sign = _direction_sign(direction)
    target = _vector3("target", target, dtype)
    t = _times(frames, dtype)
    azimuth = _finite("start_azimuth_deg", start_azimuth_deg) + sign * _finite("span_deg", span_deg) * t
    el0 = _elevation("elevation_start_deg", elevation_start_deg)
    el1 = _elevation("elevation_end_deg", elevation_end_deg)
    r0, r1 = _positive("radius_start", radius_start), _positive("radius_end", radius_end)
    c2w = look_at(orbit_position(target, r0 + (r1 - r0) * t, azimuth, el0 + (el1 - el0) * t), target)
    return _cameras(c2w, fov_y_deg, image_size)


@_base_preset(
    "lemniscate",
    amplitude=("world units", "half width a of the figure eight (lemniscate of Bernoulli)"),
    loop=("", "leave out the final frame that would repeat the first"),
)
def lemniscate(frames: int, base: _Base, *, amplitude: float = 0.3, loop: bool = True) -> CameraSet:
    """The camera centre traces a figure eight in the image plane of the base camera, looking at ``target``.

    The eight is the lemniscate of Bernoulli ``(x² + y²)² = a² (x² − y²)``, parametrized by
    ``x = a cos s / (1 + sin² s)``, ``y = a sin s cos s / (1 + sin² s)`` (x along the base camera's right,
    y along its up), drawn in the plane through the base camera's centre perpendicular to its viewing
    axis. The path starts at the crossing (``s = π/2``) and runs one full period.
    """
    target, c2w0 = base.camera(frames)
    a = _positive("amplitude", amplitude)
    s = math.pi / 2 + 2 * math.pi * _times(frames, base.dtype, closed=bool(loop))
    denom = 1 + torch.sin(s) ** 2
    x, y = a * torch.cos(s) / denom, a * torch.sin(s) * torch.cos(s) / denom
    right, up = c2w0[:3, 0], -c2w0[:3, 1]
    eye = c2w0[:3, 3] + x[:, None] * right + y[:, None] * up
    return base.cameras(look_at(eye, target))


def _move(frames: int, base: _Base, axis: int, distance: float) -> CameraSet:
    """The base camera translated along its own ``axis`` by ``distance * t``; orientation fixed.

    ``distance`` is checked after the base arguments; presets that check it first (to keep which error a
    call with several bad arguments raises) pass it already checked.
    """
    _, c2w0 = base.camera(frames)
    return base.cameras(_move_along_own_axis(c2w0, axis, _finite("distance", distance) * _times(frames, base.dtype)))


@_base_preset("dolly_in", distance=("world units", "how far the camera moves forward along its viewing axis"))
def dolly_in(frames: int, base: _Base, *, distance: float = 0.5) -> CameraSet:
    """The camera moves ``distance`` towards the target along its viewing axis; orientation fixed."""
    return _move(frames, base, 2, distance)


@_base_preset("dolly_out", distance=("world units", "how far the camera moves backward along its viewing axis"))
def dolly_out(frames: int, base: _Base, *, distance: float = 0.5) -> CameraSet:
    """The camera moves ``distance`` away from the target along its viewing axis; orientation fixed."""
    return _move(frames, base, 2, -_finite("distance", distance))


def _zoom(frames: int, base: _Base, factor: float) -> CameraSet:
    """The base camera in every frame, its focal length multiplied by ``factor ** t``."""
    _, c2w0 = base.camera(frames)
    # Geometric steps: every frame magnifies the picture by the same ratio, which reads as a steady zoom.
    return base.cameras(c2w0.expand(frames, 4, 4).clone(), focal_scale=factor ** _times(frames, base.dtype))


@_base_preset("zoom_in", factor=("×", "final focal length / first focal length (> 1 magnifies)"))
def zoom_in(frames: int, base: _Base, *, factor: float = 2.0) -> CameraSet:
    """Camera fixed; the focal length grows geometrically from ``f0`` to ``factor * f0``."""
    return _zoom(frames, base, _positive("factor", factor))


@_base_preset("zoom_out", factor=("×", "first focal length / final focal length (> 1 widens the view)"))
def zoom_out(frames: int, base: _Base, *, factor: float = 2.0) -> CameraSet:
    """Camera fixed; the focal length shrinks geometrically from ``f0`` to ``f0 / factor``."""
    return _zoom(frames, base, 1.0 / _positive("factor", factor))


def _dolly_zoom(frames: int, base: _Base, radius: float, end_radius: float) -> CameraSet:
    """Dolly from ``radius`` to ``end_radius`` from the target with the focal length proportional to the distance."""
    _, c2w0 = base.camera(frames)
    distance = radius + (end_radius - radius) * _times(frames, base.dtype)
    c2w = _move_along_own_axis(c2w0, 2, radius - distance)
    # A length L in the target plane spans L * f / d pixels; f ∝ d keeps it fixed (Hitchcock's "Vertigo" shot).
    return base.cameras(c2w, focal_scale=distance / radius)


@_base_preset("dolly_zoom_in",
              factor=("×", "first / final distance to the target (> 1 moves closer while the lens widens)"))
def dolly_zoom_in(frames: int, base: _Base, *, factor: float = 2.0) -> CameraSet:
    """Dolly towards the target to ``radius / factor`` while the focal length follows the distance.

    The plane through the target perpendicular to the viewing axis keeps its image size; the background
    stretches away. ``fov_y_deg`` is the first frame's field of view.
    """
    radius = _positive("radius", base.radius)
    return _dolly_zoom(frames, base, radius, radius / _positive("factor", factor))


@_base_preset("dolly_zoom_out",
              factor=("×", "final / first distance to the target (> 1 moves away while the lens narrows)"))
def dolly_zoom_out(frames: int, base: _Base, *, factor: float = 2.0) -> CameraSet:
    """Dolly away from the target to ``radius * factor`` while the focal length follows the distance."""
    radius = _positive("radius", base.radius)
    return _dolly_zoom(frames, base, radius, radius * _positive("factor", factor))


def _turn(frames: int, base: _Base, axis: int, angle_deg: float) -> CameraSet:
    """The base camera turned about its own ``axis`` by ``angle_deg * t``; centre fixed."""
    angle = math.radians(_finite("angle_deg", angle_deg))
    _, c2w0 = base.camera(frames)
    return base.cameras(_turn_about_own_axis(c2w0, axis, angle * _times(frames, base.dtype)))


@_base_preset("pan", angle_deg=("deg", "final turn about the camera's own vertical axis; > 0 turns right"))
def pan(frames: int, base: _Base, *, angle_deg: float = 30.0) -> CameraSet:
    """Camera centre fixed; turns about its own y axis (a right-handed turn about +y = down turns right)."""
    return _turn(frames, base, 1, angle_deg)


@_base_preset("tilt", angle_deg=("deg", "final turn about the camera's own horizontal axis; > 0 tilts up"))
def tilt(frames: int, base: _Base, *, angle_deg: float = 30.0) -> CameraSet:
    """Camera centre fixed; turns about its own x axis (a right-handed turn about +x raises the view)."""
    return _turn(frames, base, 0, angle_deg)


@_base_preset("roll", angle_deg=("deg", "final turn about the viewing axis; > 0 turns the camera clockwise as seen "
                                        "from behind it (the picture turns counter-clockwise)"))
def roll(frames: int, base: _Base, *, angle_deg: float = 30.0) -> CameraSet:
    """Camera centre and viewing axis fixed; the image axes turn about the camera's own z axis."""
    return _turn(frames, base, 2, angle_deg)


@_base_preset("truck", distance=("world units", "sideways move along the camera's own x; > 0 moves right"))
def truck(frames: int, base: _Base, *, distance: float = 0.5) -> CameraSet:
    """Orientation fixed; the camera slides along its own x axis (right)."""
    return _move(frames, base, 0, _finite("distance", distance))


@_base_preset("pedestal", distance=("world units", "vertical move along the camera's own -y; > 0 moves up"))
def pedestal(frames: int, base: _Base, *, distance: float = 0.5) -> CameraSet:
    """Orientation fixed; the camera rises along its own up axis (-y, since camera +y points down)."""
    return _move(frames, base, 1, -_finite("distance", distance))


@_base_preset("dolly", distance=("world units", "move along the camera's own z; > 0 moves forward, < 0 back"))
def dolly(frames: int, base: _Base, *, distance: float = 0.5) -> CameraSet:
    """Orientation fixed; the camera moves along its own z axis by a signed ``distance``."""
    return _move(frames, base, 2, distance)


@_base_preset("static")
def static(frames: int, base: _Base) -> CameraSet:
    """``frames`` copies of the camera looking at ``target``."""
    _, c2w0 = base.camera(frames)
    return base.cameras(c2w0.expand(frames, 4, 4).clone())
