"""Trajectory nodes: named presets, CAMERACTRL_POSES in and out, and the preview picture.

Every trajectory value is a :class:`mvcustom_core.cameras.CameraSet` (see ``nodes/types.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from mvcustom_core.cameras import CameraSet
from mvcustom_core.cameras.formats.cameractrl_poses import (DEFAULT_POSE_SIZE, cameras_from_cameractrl_poses,
                                                            cameras_to_cameractrl_poses)
from mvcustom_core.trajectories import (PRESETS, compose, concatenate, make_trajectory, preset_parameters,
                                        render_trajectory_preview, resample, reverse)

from ._common import blame, image_from_hwc, input_named_in, require
from ._host import io, ui
from .types import CameraCtrlPoses, Trajectory

__all__ = ["TRAJECTORY_NODES", "CameraTrajectory", "CombineTrajectories", "ResampleTrajectory", "TrajectoryInfo",
           "TrajectoryPreview", "TrajectoryFromCameraCtrlPoses", "TrajectoryToCameraCtrlPoses",
           "PRESET_WIDGET_ORDER", "preset_widget_inputs"]

CATEGORY = "MVCustom/camera"
MAX_FRAMES = 4096
MAX_SIZE = 8192

# Saved UI workflows store widget values by position, so the order of the preset parameter widgets is
# pinned here and only ever appended to. A parameter a preset gains later that is missing from this
# list is appended after it (and tests/nodes flags it, to be pinned here).
PRESET_WIDGET_ORDER = (
    "radius", "elevation_deg", "azimuth_deg", "target", "span_deg", "start_azimuth_deg", "direction", "loop",
    "elevation_start_deg", "elevation_end_deg", "radius_start", "radius_end", "amplitude", "distance",
    "factor", "angle_deg", "speed", "convention",
)

# Generic widget bounds per unit, since a preset parameter declares a unit but not always a range;
# the core checks the finer constraints (positive radius, elevation in (-90, 90), ...).
_UNIT_BOUNDS = {"deg": (-3600.0, 3600.0, 1.0), "world units": (-1000.0, 1000.0, 0.01), "×": (0.01, 100.0, 0.01)}
_DEFAULT_BOUNDS = (-1.0e4, 1.0e4, 0.01)
_AXES = ("x", "y", "z")


def _collect_preset_parameters() -> dict[str, list[tuple[str, Any]]]:
    """``{parameter: [(preset, ParamSpec), ...]}`` over every preset using it, in widget order."""
    seen: dict[str, list[tuple[str, Any]]] = {}
    for name in PRESETS:
        for pname, spec in preset_parameters(name).items():
            seen.setdefault(pname, []).append((name, spec))
    pinned = [p for p in PRESET_WIDGET_ORDER if p in seen]
    return {p: seen[p] for p in pinned + [p for p in seen if p not in PRESET_WIDGET_ORDER]}


def _is_vector3(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 3


def _widget_ids(pname: str, default: Any) -> list[str]:
    return [f"{pname}_{a}" for a in _AXES] if _is_vector3(default) else [pname]


def _help(spec: Any) -> str:
    text = getattr(spec, "help", None) or getattr(spec, "description", None) or ""
    unit = getattr(spec, "unit", "") or ""
    return f"{text}{f' [{unit}]' if unit else ''}"


def _tooltip(users: list[tuple[str, Any]]) -> str:
    """What the widget means for each preset using it (presets sharing a meaning are grouped)."""
    by_help: dict[str, list[str]] = {}
    for preset, spec in users:
        by_help.setdefault(_help(spec), []).append(preset)
    if len(by_help) == 1:
        (text, presets), = by_help.items()
        used_by = "all presets" if len(presets) == len(PRESETS) else ", ".join(presets)
        return f"{text}. Used by: {used_by}."
    return " | ".join(f"{', '.join(presets)}: {text}" for text, presets in by_help.items())


def _bounds(users: list[tuple[str, Any]], unit: str) -> tuple[float, float, float]:
    """Widget range: the widest of the presets' declared ranges, else a generic range for the unit."""
    lo, hi, step = _UNIT_BOUNDS.get(unit, _DEFAULT_BOUNDS)
    mins = [spec.min for _, spec in users if getattr(spec, "min", None) is not None]
    maxs = [spec.max for _, spec in users if getattr(spec, "max", None) is not None]
    return (min(mins) if len(mins) == len(users) else lo), (max(maxs) if len(maxs) == len(users) else hi), step


def preset_widget_inputs() -> list:
    """One optional widget per preset parameter (three for a 3-vector), built from ``preset_parameters``.

    A widget shared by several presets shows the first one's default; the node uses the widget value for
    whichever preset is chosen (an API prompt that leaves it out gets that preset's own default).
    """
    inputs = []
    for pname, users in _collect_preset_parameters().items():
        spec = users[0][1]
        default, tooltip = spec.default, _tooltip(users)
        choices = getattr(spec, "choices", None)
        if choices:
            inputs.append(io.Combo.Input(pname, options=list(choices), default=default, tooltip=tooltip,
                                         optional=True))
        elif isinstance(default, bool):
            inputs.append(io.Boolean.Input(pname, default=default, tooltip=tooltip, optional=True))
        elif isinstance(default, int):
            lo, hi, _ = _bounds(users, "")
            inputs.append(io.Int.Input(pname, default=default, min=int(max(lo, -10**6)), max=int(min(hi, 10**6)),
                                       tooltip=tooltip, optional=True))
        else:
            lo, hi, step = _bounds(users, getattr(spec, "unit", "") or "")
            values = default if _is_vector3(default) else [default]
            for wid, value in zip(_widget_ids(pname, default), values):
                axis_tip = f"({wid[-1]} component) {tooltip}" if _is_vector3(default) else tooltip
                inputs.append(io.Float.Input(wid, default=float(value), min=lo, max=hi, step=step, optional=True,
                                             tooltip=axis_tip))
    return inputs


def _preset_kwargs(preset: str, widgets: dict[str, Any]) -> dict[str, Any]:
    """The chosen preset's parameters, gathered from the (union of all presets') widget values.

    The widgets are optional inputs: one left out (an API prompt may omit them) takes the preset's
    own default, so ``{"preset": "tilt"}`` alone gives the core's tilt.
    """
    out = {}
    for pname, spec in preset_parameters(preset).items():
        if _is_vector3(spec.default):
            given = [widgets.get(f"{pname}_{a}") for a in _AXES]
            if any(v is not None for v in given):
                out[pname] = tuple(float(v if v is not None else d) for v, d in zip(given, spec.default))
        elif widgets.get(pname) is not None:
            out[pname] = widgets[pname]
    return out


def _size_inputs() -> list:
    return [
        io.Int.Input("width", default=512, min=8, max=MAX_SIZE, step=8,
                     tooltip="Image width in pixels the cameras' intrinsics refer to."),
        io.Int.Input("height", default=512, min=8, max=MAX_SIZE, step=8,
                     tooltip="Image height in pixels the cameras' intrinsics refer to."),
    ]


def _check_size(node: type, width: int, height: int) -> tuple[int, int]:
    require(node, "width", int(width) >= 1, f"must be ≥ 1, got {width}")
    require(node, "height", int(height) >= 1, f"must be ≥ 1, got {height}")
    return int(height), int(width)


def _check_frames(node: type, frames: Any) -> int:
    require(node, "frames", isinstance(frames, int) and not isinstance(frames, bool),
            f"must be an integer, got {frames!r}")
    require(node, "frames", frames >= 1, f"must be ≥ 1, got {frames}")
    return frames


def _check_trajectory(node: type, input_name: str, value: Any) -> CameraSet:
    require(node, input_name, isinstance(value, CameraSet),
            f"must be an MVC_CAMERA_TRAJECTORY (CameraSet), got {type(value).__name__}")
    return value


class CameraTrajectory(io.ComfyNode):
    """A named camera path (orbit, spiral, dolly, zoom, pan, ...) around the subject."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        names = list(PRESETS)
        return io.Schema(
            node_id="MVC_CameraTrajectory",
            display_name="MVCustom Camera Trajectory",
            category=CATEGORY,
            description=("Builds a camera trajectory from a named preset. World up is -y (OpenCV axes), the "
                         "subject sits at 'target'; each preset reads only the parameters it uses (see tooltips)."),
            inputs=[
                io.Combo.Input("preset", options=names, default="orbit" if "orbit" in names else names[0],
                               tooltip="Which camera path to build (mvcustom_core.trajectories.PRESETS)."),
                io.Int.Input("frames", default=16, min=1, max=MAX_FRAMES,
                             tooltip="Number of cameras (views) on the path, ≥ 1."),
                *_size_inputs(),
                io.Float.Input("fov_y_deg", default=50.0, min=1.0, max=179.0, step=0.5,
                               tooltip="Vertical field of view of the first frame, in degrees."),
                *preset_widget_inputs(),
            ],
            outputs=[Trajectory.Output("trajectory", tooltip="The cameras (MVC_CAMERA_TRAJECTORY).")],
        )

    @classmethod
    def execute(cls, preset: str, frames: int, width: int, height: int, fov_y_deg: float,
                **parameters: Any) -> io.NodeOutput:
        require(cls, "preset", preset in PRESETS, f"must be one of {list(PRESETS)}, got {preset!r}")
        _check_frames(cls, frames)
        image_size = _check_size(cls, width, height)
        require(cls, "fov_y_deg", 0.0 < float(fov_y_deg) < 180.0, f"must lie in (0, 180), got {fov_y_deg}")
        params = _preset_kwargs(preset, parameters)
        with blame(cls, input_named_in(["frames", "fov_y_deg", *params], "preset")):
            cams = make_trajectory(preset, frames, image_size=image_size, fov_y_deg=float(fov_y_deg), **params)
        return io.NodeOutput(cams)


COMBINE_MODES = ("concatenate", "compose")


class CombineTrajectories(io.ComfyNode):
    """Two trajectories one after the other, or the second's motion applied on top of the first."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_CombineTrajectories",
            display_name="MVCustom Combine Trajectories",
            category=CATEGORY,
            description=("'concatenate': the second trajectory's cameras after the first's (same image size). "
                         "'compose': each camera of 'first' moved by the second's motion relative to its first "
                         "camera, e.g. an orbit composed with a roll rolls while orbiting (same frame count)."),
            inputs=[
                Trajectory.Input("first", tooltip="Base trajectory (played first, or moved by 'second')."),
                Trajectory.Input("second", tooltip="Trajectory appended, or whose motion is applied."),
                io.Combo.Input("mode", options=list(COMBINE_MODES), default=COMBINE_MODES[0],
                               tooltip="concatenate (one after the other) or compose (motion on top)."),
                io.Boolean.Input("drop_repeated", default=True,
                                 tooltip="concatenate: drop the second's first camera when it equals the first's last."),
            ],
            outputs=[Trajectory.Output("trajectory", tooltip="The combined cameras (MVC_CAMERA_TRAJECTORY).")],
        )

    @classmethod
    def execute(cls, first: CameraSet, second: CameraSet, mode: str, drop_repeated: bool) -> io.NodeOutput:
        _check_trajectory(cls, "first", first)
        _check_trajectory(cls, "second", second)
        require(cls, "mode", mode in COMBINE_MODES, f"must be one of {list(COMBINE_MODES)}, got {mode!r}")
        with blame(cls, "second"):
            if mode == "concatenate":
                cams = concatenate([first, second], drop_repeated=bool(drop_repeated))
            else:
                cams = compose(first, second)
        return io.NodeOutput(cams)


class ResampleTrajectory(io.ComfyNode):
    """A trajectory re-timed to another frame count (its cameras become keyframes), optionally reversed."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_ResampleTrajectory",
            display_name="MVCustom Resample Trajectory",
            category=CATEGORY,
            description=("Interpolates a trajectory to a new number of frames: rotations by SLERP, positions by a "
                         "Catmull-Rom spline (or linearly) through the input cameras; first and last kept exactly."),
            inputs=[
                Trajectory.Input("trajectory", tooltip="The cameras to resample (they are the keyframes)."),
                io.Int.Input("frames", default=16, min=1, max=MAX_FRAMES, tooltip="Number of output cameras, ≥ 1."),
                io.Combo.Input("position_spline", options=["catmull_rom", "linear"], default="catmull_rom",
                               tooltip="How camera centres are interpolated between keyframes."),
                io.Boolean.Input("reverse", default=False, tooltip="Play the result backwards."),
            ],
            outputs=[Trajectory.Output("resampled", tooltip="The resampled cameras (MVC_CAMERA_TRAJECTORY).")],
        )

    @classmethod
    def execute(cls, trajectory: CameraSet, frames: int, position_spline: str, reverse: bool) -> io.NodeOutput:
        cams = _check_trajectory(cls, "trajectory", trajectory)
        _check_frames(cls, frames)
        with blame(cls, input_named_in(["frames", "position_spline"], "trajectory")):
            out = resample(cams, frames, position_spline=position_spline)
        return io.NodeOutput(_reverse(out) if reverse else out)


_reverse = reverse  # the node's "reverse" input shadows the core function's name inside execute


class TrajectoryInfo(io.ComfyNode):
    """Frame count and image size of a trajectory, to size latents or images to match it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_TrajectoryInfo",
            display_name="MVCustom Trajectory Info",
            category=CATEGORY,
            description=("Reports a trajectory's number of cameras and the image size its intrinsics refer to, "
                         "e.g. for an Empty Latent Image's batch size, width and height."),
            inputs=[Trajectory.Input("trajectory", tooltip="The cameras to describe (MVC_CAMERA_TRAJECTORY).")],
            outputs=[
                io.Int.Output("frames", tooltip="Number of cameras F."),
                io.Int.Output("width", tooltip="Image width W in pixels."),
                io.Int.Output("height", tooltip="Image height H in pixels."),
                io.String.Output("summary", tooltip="One line: frames, size, path length, mean vertical FOV."),
            ],
        )

    @classmethod
    def execute(cls, trajectory: CameraSet) -> io.NodeOutput:
        cams = _check_trajectory(cls, "trajectory", trajectory)
        h, w = cams.image_size
        centers = cams.centers.double()
        path = float((centers[1:] - centers[:-1]).norm(dim=-1).sum()) if len(cams) > 1 else 0.0
        # pinhole: fy = (H / 2) / tan(fov_y / 2), the inverse of CameraSet.from_fov
        fov = float(torch.rad2deg(2 * torch.atan(0.5 * h / cams.K[:, 1, 1].double())).mean())
        summary = f"{len(cams)} cameras, {w}x{h} px, path length {path:.3g}, mean vertical FOV {fov:.1f} deg"
        return io.NodeOutput(len(cams), w, h, summary)


class TrajectoryPreview(io.ComfyNode):
    """A 3D plot of the trajectory's camera frustums, coloured by frame order."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_TrajectoryPreview",
            display_name="MVCustom Trajectory Preview",
            category=CATEGORY,
            description=("Draws the cameras of a trajectory as frustums in 3D (colour = frame order) so a path "
                         "can be checked before any sampling. World y points down (OpenCV); the plot flips it."),
            inputs=[
                Trajectory.Input("trajectory", tooltip="The cameras to draw (MVC_CAMERA_TRAJECTORY)."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8,
                             tooltip="Width of the preview picture in pixels."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8,
                             tooltip="Height of the preview picture in pixels."),
                io.String.Input("title", default="", tooltip="Optional title drawn above the plot."),
            ],
            outputs=[io.Image.Output("image", tooltip="The preview picture, IMAGE [1, H, W, 3].")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, trajectory: CameraSet, width: int, height: int, title: str) -> io.NodeOutput:
        cams = _check_trajectory(cls, "trajectory", trajectory)
        size = _check_size(cls, width, height)
        with blame(cls, "trajectory"):
            picture = render_trajectory_preview(cams, size=size, title=title or None)
        image = image_from_hwc(picture)
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


class TrajectoryFromCameraCtrlPoses(io.ComfyNode):
    """CAMERACTRL_POSES (AnimateDiff-Evolved, WanVideoWrapper) -> MVC_CAMERA_TRAJECTORY."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_TrajectoryFromCameraCtrlPoses",
            display_name="MVCustom Trajectory from CameraCtrl Poses",
            category=CATEGORY,
            description=("Converts AnimateDiff-Evolved / WanVideoWrapper CAMERACTRL_POSES (one RealEstate10K row "
                         "per frame: normalized intrinsics, 3x4 world-to-camera) to a trajectory at the given "
                         "image size, with CameraCtrl's aspect-ratio fix."),
            inputs=[
                CameraCtrlPoses.Input("poses", tooltip="CAMERACTRL_POSES: a list of 19-number rows, one per frame."),
                *_size_inputs(),
            ],
            outputs=[Trajectory.Output("trajectory", tooltip="The cameras (MVC_CAMERA_TRAJECTORY).")],
        )

    @classmethod
    def execute(cls, poses: list, width: int, height: int) -> io.NodeOutput:
        require(cls, "poses", isinstance(poses, (list, tuple)) and len(poses) > 0,
                f"must be a non-empty list of pose rows, got {type(poses).__name__} of length "
                f"{len(poses) if hasattr(poses, '__len__') else '?'}")
        image_size = _check_size(cls, width, height)
        with blame(cls, "poses"):
            cams = cameras_from_cameractrl_poses(poses, image_size, name="poses")
        return io.NodeOutput(cams)


SOURCE_SIZES = {
    "trajectory size (AnimateDiff-Evolved)": None,
    "1280x720 (WanVideoWrapper)": DEFAULT_POSE_SIZE,
}


class TrajectoryToCameraCtrlPoses(io.ComfyNode):
    """MVC_CAMERA_TRAJECTORY -> CAMERACTRL_POSES for AnimateDiff-Evolved / WanVideoWrapper nodes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_TrajectoryToCameraCtrlPoses",
            display_name="MVCustom Trajectory to CameraCtrl Poses",
            category=CATEGORY,
            description=("Converts a trajectory to CAMERACTRL_POSES rows. AnimateDiff-Evolved reads the source "
                         "size from columns 5-6; WanVideoWrapper assumes 1280x720, so pick its option to have "
                         "its aspect fix give back these exact intrinsics."),
            inputs=[
                Trajectory.Input("trajectory", tooltip="The cameras to convert (MVC_CAMERA_TRAJECTORY)."),
                io.Combo.Input("source_size", options=list(SOURCE_SIZES), default=next(iter(SOURCE_SIZES)),
                               tooltip="Source video size written to the rows (how the consumer normalizes)."),
            ],
            outputs=[CameraCtrlPoses.Output("poses", tooltip="CAMERACTRL_POSES, one 19-number row per frame.")],
        )

    @classmethod
    def execute(cls, trajectory: CameraSet, source_size: str) -> io.NodeOutput:
        cams = _check_trajectory(cls, "trajectory", trajectory)
        require(cls, "source_size", source_size in SOURCE_SIZES,
                f"must be one of {list(SOURCE_SIZES)}, got {source_size!r}")
        with blame(cls, "trajectory"):
            poses = cameras_to_cameractrl_poses(cams, source_size=SOURCE_SIZES[source_size])
        return io.NodeOutput(poses)


TRAJECTORY_NODES: list[type[io.ComfyNode]] = [
    CameraTrajectory, CombineTrajectories, ResampleTrajectory, TrajectoryInfo, TrajectoryPreview,
    TrajectoryFromCameraCtrlPoses, TrajectoryToCameraCtrlPoses,
]
