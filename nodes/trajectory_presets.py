"""Trajectory preset nodes: one node per preset family, each showing only its own parameters.

A family is a set of presets with the same parameters (names, defaults, ranges), e.g. pan / tilt / roll; its
node has a ``preset`` combo (when the family has several), the frame count and image size, the field of view
and then exactly those parameters as optional widgets, each with the core's default: a fresh node in the UI
and an API prompt that leaves a parameter out build the same path. The CameraCtrl presets get their own node (AnimateDiff-Evolved's motion sum and
chaining, its default intrinsics). ComfyUI 0.3.64 has no ``DynamicCombo`` (inputs that change with a combo) and
its frontend cannot hide widgets without patching its internals, so the split is the one way that shows each
preset's parameters in every frontend and in ``/object_info``.

``MVC_CameraTrajectory``, the earlier node with one widget per parameter of every preset, stays registered
(deprecated, hidden from the node search) so saved workflows keep loading and running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mvcustom_core.cameras import CameraSet
from mvcustom_core.trajectories import (CAMERACTRL_CONVENTIONS, CAMERACTRL_PRESET_NAMES, PRESET_ALIASES, PRESETS,
                                        cameractrl_trajectory, chain, make_trajectory, preset_parameters)

from ._common import blame, input_named_in, require
from ._host import io
from .trajectories import CATEGORY, MAX_FRAMES, _check_frames, _check_size, _check_trajectory, _size_inputs
from .types import Trajectory

__all__ = ["TRAJECTORY_PRESET_NODES", "PresetFamily", "FAMILIES", "FAMILY_NODES", "CAMERACTRL_SLOTS", "PRESET_WIDGET_ORDER",
           "preset_widget_inputs", "family_parameters", "OrbitTrajectory", "SpiralTrajectory",
           "LemniscateTrajectory", "MoveTrajectory", "TurnTrajectory", "ZoomTrajectory", "StaticCamera",
           "CameraCtrlTrajectory", "CameraTrajectory"]

# Generic widget bounds per unit, for parameters without a declared range (3-vectors, ...); the core checks
# the finer constraints (positive radius, elevation in (-90, 90), ...).
_UNIT_BOUNDS = {"deg": (-3600.0, 3600.0, 1.0), "world units": (-1000.0, 1000.0, 0.01), "×": (0.01, 100.0, 0.01)}
_DEFAULT_BOUNDS = (-1.0e4, 1.0e4, 0.01)
_AXES = ("x", "y", "z")
_Users = list[tuple[str, Any]]  # [(preset, ParamSpec)] of the presets sharing one parameter


@dataclass(frozen=True)
class PresetFamily:
    """Presets that share one parameter set, and the node that builds them."""

    node_id: str
    display_name: str
    presets: tuple[str, ...]
    description: str


FAMILIES = (
    PresetFamily("MVC_OrbitTrajectory", "MVCustom Orbit Trajectory", ("orbit",),
                 "Cameras on a horizontal circle around the subject ('target'), all looking at it, equal azimuth "
                 "steps. World up is -y (OpenCV axes); azimuth 0 is the -z side, increasing counter-clockwise "
                 "seen from above."),
    PresetFamily("MVC_SpiralTrajectory", "MVCustom Spiral Trajectory", ("spiral",),
                 "An orbit around the subject whose elevation and radius change linearly from start to end values, "
                 "looking at the subject."),
    PresetFamily("MVC_LemniscateTrajectory", "MVCustom Lemniscate Trajectory", ("lemniscate",),
                 "The camera centre traces a figure eight (lemniscate of Bernoulli) in the image plane of the base "
                 "camera, always looking at the subject."),
    PresetFamily("MVC_MoveTrajectory", "MVCustom Move Trajectory (dolly, truck, pedestal)",
                 ("dolly", "dolly_in", "dolly_out", "truck", "pedestal"),
                 "The base camera (looking at the subject from radius/azimuth/elevation) slides along one of its own "
                 "axes without turning: forward/back (dolly), right (truck) or up (pedestal)."),
    PresetFamily("MVC_TurnTrajectory", "MVCustom Turn Trajectory (pan, tilt, roll)", ("pan", "tilt", "roll"),
                 "The base camera stays in place and turns about one of its own axes: right (pan), up (tilt) or "
                 "about the viewing axis (roll)."),
    PresetFamily("MVC_ZoomTrajectory", "MVCustom Zoom Trajectory (zoom, dolly zoom)",
                 ("zoom_in", "zoom_out", "dolly_zoom_in", "dolly_zoom_out"),
                 "The focal length changes (zoom; the camera stays put), or the camera dollies while the focal "
                 "length follows the distance so the subject plane keeps its size (dolly zoom)."),
    PresetFamily("MVC_StaticCamera", "MVCustom Static Camera", ("static",),
                 "One camera looking at the subject from radius/azimuth/elevation, repeated for every frame."),
)


# ---------------------------------------------------------------------------------------------- widgets
def _is_vector3(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 3


def _widget_ids(pname: str, default: Any) -> list[str]:
    return [f"{pname}_{a}" for a in _AXES] if _is_vector3(default) else [pname]


def _help(spec: Any) -> str:
    unit = spec.unit or ""
    return f"{spec.help}{f' [{unit}]' if unit else ''}"


def _tooltip(users: _Users, all_presets: int) -> str:
    """What the widget means for each preset using it (presets sharing a meaning are grouped)."""
    by_help: dict[str, list[str]] = {}
    for preset, spec in users:
        by_help.setdefault(_help(spec), []).append(preset)
    if len(by_help) == 1:
        (text, presets), = by_help.items()
        used_by = "all presets" if len(presets) == all_presets else ", ".join(presets)
        return f"{text}. Used by: {used_by}."
    return " | ".join(f"{', '.join(presets)}: {text}" for text, presets in by_help.items())


def _bounds(users: _Users, unit: str) -> tuple[float, float, float]:
    """Widget range: the widest of the presets' declared ranges, else a generic range for the unit."""
    lo, hi, step = _UNIT_BOUNDS.get(unit, _DEFAULT_BOUNDS)
    mins = [spec.min for _, spec in users if spec.min is not None]
    maxs = [spec.max for _, spec in users if spec.max is not None]
    return (min(mins) if len(mins) == len(users) else lo), (max(maxs) if len(maxs) == len(users) else hi), step


def _parameter_widgets(pname: str, users: _Users, *, optional: bool, all_presets: int) -> list:
    """The widget(s) of one preset parameter (three for a 3-vector), defaulting to the first user's default."""
    spec = users[0][1]
    default, tooltip = spec.default, _tooltip(users, all_presets)
    if spec.choices:
        return [io.Combo.Input(pname, options=list(spec.choices), default=default, tooltip=tooltip,
                               optional=optional)]
    if isinstance(default, bool):
        return [io.Boolean.Input(pname, default=default, tooltip=tooltip, optional=optional)]
    lo, hi, step = _bounds(users, spec.unit or "")
    values = default if _is_vector3(default) else [default]
    widgets = []
    for wid, value in zip(_widget_ids(pname, default), values):
        axis_tip = f"({wid[-1]} component) {tooltip}" if _is_vector3(default) else tooltip
        widgets.append(io.Float.Input(wid, default=float(value), min=lo, max=hi, step=step, optional=optional,
                                      tooltip=axis_tip))
    return widgets


def _gather(pname: str, default: Any, widgets: dict[str, Any]) -> Any:
    """One parameter's value from the widget values; a widget left out takes ``default`` (its widget default)."""
    if _is_vector3(default):
        return tuple(float(widgets.get(wid, d)) for wid, d in zip(_widget_ids(pname, default), default))
    return widgets.get(pname, default)


def family_parameters(family: PresetFamily) -> dict[str, _Users]:
    """``{parameter: [(preset, ParamSpec)]}`` of a family in widget order (the signature's, ``target`` last).

    Raises ``ValueError`` if the family's presets disagree on a parameter's existence, default, range,
    choices or unit: the node has one widget, with one default, per parameter.
    """
    specs = {preset: preset_parameters(preset) for preset in family.presets}
    first = specs[family.presets[0]]
    for preset, own in specs.items():
        if list(own) != list(first):
            raise ValueError(f"{family.node_id}: {preset} has parameters {list(own)}, "
                             f"{family.presets[0]} has {list(first)}")
        for pname, spec in own.items():
            ref = first[pname]
            if (spec.default, spec.min, spec.max, spec.choices, spec.unit) != \
                    (ref.default, ref.min, ref.max, ref.choices, ref.unit):
                raise ValueError(f"{family.node_id}: {preset}'s {pname} ({spec}) differs from "
                                 f"{family.presets[0]}'s ({ref})")
    order = [p for p in first if p != "target"] + [p for p in first if p == "target"]
    return {pname: [(preset, specs[preset][pname]) for preset in family.presets] for pname in order}


def _fov_input() -> io.Input:
    return io.Float.Input("fov_y_deg", default=50.0, min=1.0, max=179.0, step=0.5,
                          tooltip="Vertical field of view of the first frame, in degrees (square pixels).")


def _frames_input() -> io.Input:
    return io.Int.Input("frames", default=16, min=1, max=MAX_FRAMES,
                        tooltip="Number of cameras (views) on the path, ≥ 1.")


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].rstrip(".") if text else ""


class _FamilyNode:
    """The schema and execute of a preset family node; subclasses set ``FAMILY`` (mixed into io.ComfyNode)."""

    FAMILY: PresetFamily

    @classmethod
    def define_schema(cls) -> io.Schema:
        family = cls.FAMILY
        inputs = []
        if len(family.presets) > 1:
            what = "; ".join(f"{p}: {_first_line(PRESETS[p].__doc__)}" for p in family.presets)
            inputs.append(io.Combo.Input("preset", options=list(family.presets), default=family.presets[0],
                                         tooltip=f"Which path to build. {what}."))
        inputs += [_frames_input(), *_size_inputs(), _fov_input()]
        for pname, users in family_parameters(family).items():
            inputs += _parameter_widgets(pname, users, optional=True, all_presets=len(family.presets))
        return io.Schema(
            node_id=family.node_id,
            display_name=family.display_name,
            category=CATEGORY,
            description=family.description,
            inputs=inputs,
            outputs=[Trajectory.Output("trajectory", tooltip="The cameras (MVC_CAMERA_TRAJECTORY).")],
        )

    @classmethod
    def execute(cls, **inputs: Any) -> io.NodeOutput:
        family = cls.FAMILY
        preset = inputs.pop("preset", family.presets[0])
        require(cls, "preset", preset in family.presets, f"must be one of {list(family.presets)}, got {preset!r}")
        frames = _check_frames(cls, inputs.pop("frames"))
        image_size = _check_size(cls, inputs.pop("width"), inputs.pop("height"))
        fov_y_deg = inputs.pop("fov_y_deg")
        require(cls, "fov_y_deg", 0.0 < float(fov_y_deg) < 180.0, f"must lie in (0, 180), got {fov_y_deg}")
        params = {pname: _gather(pname, users[0][1].default, inputs)
                  for pname, users in family_parameters(family).items()}
        with blame(cls, input_named_in(["frames", "fov_y_deg", *params], "preset")):
            cams = make_trajectory(preset, frames, image_size=image_size, fov_y_deg=float(fov_y_deg), **params)
        return io.NodeOutput(cams)


def _family_node(family: PresetFamily) -> type[io.ComfyNode]:
    """The node class of ``family``, named after its node id (``MVC_OrbitTrajectory`` -> ``OrbitTrajectory``)."""
    name = family.node_id.removeprefix("MVC_")
    return type(name, (_FamilyNode, io.ComfyNode), {"FAMILY": family, "__module__": __name__, "__qualname__": name,
                                                    "__doc__": f"{family.display_name}: {', '.join(family.presets)}."})


FAMILY_NODES = [_family_node(family) for family in FAMILIES]
(OrbitTrajectory, SpiralTrajectory, LemniscateTrajectory, MoveTrajectory, TurnTrajectory, ZoomTrajectory,
 StaticCamera) = FAMILY_NODES


# ---------------------------------------------------------------------------------------------- CameraCtrl
CAMERACTRL_SLOTS = 6  # AnimateDiff-Evolved's Combo / Adv. nodes: six motions span the three turns and three moves


class CameraCtrlTrajectory(io.ComfyNode):
    """AnimateDiff-Evolved's CameraCtrl poses (or ComfyUI core's) as a trajectory: summed motions, chaining."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        names = list(CAMERACTRL_PRESET_NAMES)
        slots = []
        for k in range(1, CAMERACTRL_SLOTS + 1):
            slots += [
                io.Combo.Input(f"motion_{k}", options=names, default="Zoom In" if k == 1 else "Static",
                               optional=k > 1, tooltip=f"Motion {k}; all motions are summed (times their "
                                                       "strengths) before the poses are built, so order does not "
                                                       "matter (AnimateDiff-Evolved's Combo / Adv. nodes)."),
                io.Float.Input(f"strength_{k}", default=1.0, min=0.0, max=10.0, step=0.01, optional=k > 1,
                               tooltip=f"Multiplies motion {k}'s angle and move vectors."),
            ]
        required = [s for s in slots if not s.optional]
        return io.Schema(
            node_id="MVC_CameraCtrlTrajectory",
            display_name="MVCustom CameraCtrl Trajectory",
            category=CATEGORY,
            description=("The CameraCtrl presets of AnimateDiff-Evolved (Pan, Zoom, Roll, Tilt; 'Create CameraCtrl "
                         "Poses' Basic/Combo/Adv.) or ComfyUI core: frame i moves by i/16 of the motion times speed "
                         "for AnimateDiff-Evolved (whatever the frame count), i/frames for core. The first camera is "
                         "the identity; intrinsics are AnimateDiff-Evolved's defaults (fx 0.4748, fy 0.8441 at "
                         "1280x720) refit to width x height. 'previous' continues from its last camera as "
                         "AnimateDiff-Evolved's prev_poses does."),
            inputs=[
                *required,
                io.Float.Input("speed", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="Multiplies the whole move (AnimateDiff-Evolved's speed, ±100)."),
                _frames_input(),
                *_size_inputs(),
                io.Combo.Input("convention", options=list(CAMERACTRL_CONVENTIONS), default=CAMERACTRL_CONVENTIONS[0],
                               tooltip="animatediff_evolved: its signs, rows read as world-to-camera, i/16 per "
                                       "frame. comfy_core: ComfyUI core's signs, camera-to-world, i/frames. Single "
                                       "motions move the camera the same way in both; sums of a turn and a move "
                                       "differ."),
                *[s for s in slots if s.optional],
                Trajectory.Input("previous", optional=True,
                                 tooltip="Optional trajectory to continue: the new motion starts at its last "
                                         "camera and the output holds both (AnimateDiff-Evolved's prev_poses; the "
                                         "joint camera appears twice). Same width x height."),
            ],
            outputs=[Trajectory.Output("trajectory", tooltip="The cameras (MVC_CAMERA_TRAJECTORY).")],
        )

    @classmethod
    def execute(cls, speed: float, frames: int, width: int, height: int, convention: str,
                previous: CameraSet | None = None, **slots: Any) -> io.NodeOutput:
        _check_frames(cls, frames)
        image_size = _check_size(cls, width, height)
        require(cls, "convention", convention in CAMERACTRL_CONVENTIONS,
                f"must be one of {list(CAMERACTRL_CONVENTIONS)}, got {convention!r}")
        names, strengths = [], []
        for k in range(1, CAMERACTRL_SLOTS + 1):
            name = slots.get(f"motion_{k}", "Static")
            require(cls, f"motion_{k}", name in CAMERACTRL_PRESET_NAMES,
                    f"must be one of {list(CAMERACTRL_PRESET_NAMES)}, got {name!r}")
            names.append(name)
            strengths.append(slots.get(f"strength_{k}", 1.0))
        with blame(cls, input_named_in(["speed", "frames", *(f"strength_{k}" for k in range(1, CAMERACTRL_SLOTS + 1))],
                                       "speed")):
            cams = cameractrl_trajectory(names, frames, speed=speed, strengths=strengths, convention=convention,
                                         image_size=image_size)
        if previous is not None:
            _check_trajectory(cls, "previous", previous)
            with blame(cls, "previous"):
                cams = chain(previous, cams)
        return io.NodeOutput(cams)


# ---------------------------------------------------------------------------------------------- legacy
# Saved UI workflows store widget values by position, so the order of the legacy node's preset parameter
# widgets is pinned here and only ever appended to.
PRESET_WIDGET_ORDER = (
    "radius", "elevation_deg", "azimuth_deg", "target", "span_deg", "start_azimuth_deg", "direction", "loop",
    "elevation_start_deg", "elevation_end_deg", "radius_start", "radius_end", "amplitude", "distance",
    "factor", "angle_deg", "speed", "convention",
)


def _all_preset_parameters() -> dict[str, _Users]:
    """``{parameter: [(preset, ParamSpec), ...]}`` over every preset using it, in the pinned widget order."""
    seen: dict[str, _Users] = {}
    for name in PRESETS:
        for pname, spec in preset_parameters(name).items():
            seen.setdefault(pname, []).append((name, spec))
    pinned = [p for p in PRESET_WIDGET_ORDER if p in seen]
    return {p: seen[p] for p in pinned + [p for p in seen if p not in PRESET_WIDGET_ORDER]}


def preset_widget_inputs() -> list:
    """The legacy node's optional widgets: one per parameter of any preset, with the first user's default."""
    return [w for pname, users in _all_preset_parameters().items()
            for w in _parameter_widgets(pname, users, optional=True, all_presets=len(PRESETS))]


class CameraTrajectory(io.ComfyNode):
    """Deprecated: every preset in one node (all presets' widgets). Kept so saved workflows load and run."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        names = list(PRESETS) + list(PRESET_ALIASES)  # the aliases: preset names saved by earlier versions
        return io.Schema(
            node_id="MVC_CameraTrajectory",
            display_name="MVCustom Camera Trajectory (all presets, legacy)",
            category=CATEGORY,
            description=("Deprecated: use the per-family trajectory nodes (Orbit, Spiral, Lemniscate, Move, Turn, "
                         "Zoom, Static Camera, CameraCtrl), which show only their own parameters. Builds a "
                         "trajectory from any preset; each preset reads only the parameters it uses (see "
                         "tooltips), and a parameter left out of an API prompt takes its widget's default."),
            inputs=[
                io.Combo.Input("preset", options=names, default="orbit",
                               tooltip="Which camera path to build (mvcustom_core.trajectories.PRESETS)."),
                _frames_input(),
                *_size_inputs(),
                _fov_input(),
                *preset_widget_inputs(),
            ],
            outputs=[Trajectory.Output("trajectory", tooltip="The cameras (MVC_CAMERA_TRAJECTORY).")],
            is_deprecated=True,
        )

    @classmethod
    def execute(cls, preset: str, frames: int, width: int, height: int, fov_y_deg: float,
                **widgets: Any) -> io.NodeOutput:
        require(cls, "preset", preset in PRESETS or preset in PRESET_ALIASES,
                f"must be one of {list(PRESETS)}, got {preset!r}")
        _check_frames(cls, frames)
        image_size = _check_size(cls, width, height)
        require(cls, "fov_y_deg", 0.0 < float(fov_y_deg) < 180.0, f"must lie in (0, 180), got {fov_y_deg}")
        # One default per widget: the value a fresh node shows, which an API prompt that leaves it out gets too.
        shown = {pname: users[0][1].default for pname, users in _all_preset_parameters().items()}
        params = {pname: _gather(pname, shown[pname], widgets) for pname in preset_parameters(preset)}
        with blame(cls, input_named_in(["frames", "fov_y_deg", *params], "preset")):
            cams = make_trajectory(preset, frames, image_size=image_size, fov_y_deg=float(fov_y_deg), **params)
        return io.NodeOutput(cams)


TRAJECTORY_PRESET_NODES: list[type[io.ComfyNode]] = [*FAMILY_NODES, CameraCtrlTrajectory, CameraTrajectory]
