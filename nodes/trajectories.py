"""Trajectory nodes: combine, resample, describe and preview trajectories; CAMERACTRL_POSES in and out.

Every trajectory value is a :class:`mvcustom_core.cameras.CameraSet` (see ``nodes/types.py``). The preset
nodes that build trajectories are in ``nodes/trajectory_presets.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from mvcustom_core.cameras import CameraSet
from mvcustom_core.cameras.formats.cameractrl_poses import (DEFAULT_POSE_SIZE, cameras_from_cameractrl_poses,
                                                            cameras_to_cameractrl_poses)
from mvcustom_core.trajectories import chain, compose, concatenate, render_trajectory_preview, resample, reverse

from ._common import Progress, blame, image_from_hwc, input_named_in, require
from ._host import io, ui
from .types import CameraCtrlPoses, Trajectory

__all__ = ["TRAJECTORY_NODES", "CombineTrajectories", "ResampleTrajectory", "TrajectoryInfo", "TrajectoryPreview",
           "TrajectoryFromCameraCtrlPoses", "TrajectoryToCameraCtrlPoses", "COMBINE_MODES", "SOURCE_SIZES"]

CATEGORY = "MVCustom/camera"
MAX_FRAMES = 4096
MAX_SIZE = 8192

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


COMBINE_MODES = ("concatenate", "compose", "chain")


class CombineTrajectories(io.ComfyNode):
    """Two trajectories one after the other, or the second's motion applied on top of the first."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_CombineTrajectories",
            display_name="MVCustom Combine Trajectories",
            category=CATEGORY,
            description=("'concatenate': the second trajectory's cameras after the first's, where they are (same "
                         "image size). 'compose': each camera of 'first' moved by the second's motion relative to "
                         "its first camera, e.g. an orbit composed with a roll rolls while orbiting (same frame "
                         "count). 'chain': the second moved rigidly to start at the first's last camera, as "
                         "AnimateDiff-Evolved's prev_poses continues CameraCtrl poses (same image size)."),
            inputs=[
                Trajectory.Input("first", tooltip="Base trajectory (played first, or moved by 'second')."),
                Trajectory.Input("second", tooltip="Trajectory appended, or whose motion is applied."),
                io.Combo.Input("mode", options=list(COMBINE_MODES), default=COMBINE_MODES[0],
                               tooltip="concatenate (one after the other, each where it is), compose (motion on "
                                       "top) or chain (the second continues from the first's last camera)."),
                io.Boolean.Input("drop_repeated", default=True,
                                 tooltip="concatenate / chain: drop the second's first camera when it equals the "
                                         "first's last (AnimateDiff-Evolved's chaining keeps both)."),
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
            elif mode == "chain":
                cams = chain(first, second, drop_repeated=bool(drop_repeated))
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
            picture = render_trajectory_preview(cams, size=size, title=title or None, progress=Progress(2).callback)
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
    "1280x720 (AnimateDiff-Evolved, WanVideoWrapper)": DEFAULT_POSE_SIZE,
    "trajectory size": None,
}
# Labels saved by earlier versions of the node.
_SOURCE_SIZE_ALIASES = {"trajectory size (AnimateDiff-Evolved)": "trajectory size",
                        "1280x720 (WanVideoWrapper)": "1280x720 (AnimateDiff-Evolved, WanVideoWrapper)"}


class TrajectoryToCameraCtrlPoses(io.ComfyNode):
    """MVC_CAMERA_TRAJECTORY -> CAMERACTRL_POSES for AnimateDiff-Evolved / WanVideoWrapper nodes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_TrajectoryToCameraCtrlPoses",
            display_name="MVCustom Trajectory to CameraCtrl Poses",
            category=CATEGORY,
            description=("Converts a trajectory to CAMERACTRL_POSES rows. By default the rows state a 1280x720 "
                         "source (AnimateDiff-Evolved's default, WanVideoWrapper's fixed assumption) with the "
                         "intrinsics pre-divided so that CameraCtrl's aspect fix gives back these exact cameras at "
                         "the trajectory's size and keeps their vertical field of view at any sample size up to "
                         "16:9, as for AnimateDiff-Evolved's own presets."),
            inputs=[
                Trajectory.Input("trajectory", tooltip="The cameras to convert (MVC_CAMERA_TRAJECTORY)."),
                io.Combo.Input("source_size", options=list(SOURCE_SIZES), default=next(iter(SOURCE_SIZES)),
                               tooltip="Source video size written to columns 5-6. 1280x720: the consumer's aspect "
                                       "fix keeps the vertical field of view when it samples at another aspect "
                                       "(up to 16:9). 'trajectory size': the trajectory's own size, so another "
                                       "aspect crops the trajectory's picture (AnimateDiff-Evolved only; "
                                       "WanVideoWrapper always assumes 1280x720)."),
            ],
            outputs=[CameraCtrlPoses.Output("poses", tooltip="CAMERACTRL_POSES, one 19-number row per frame.")],
        )

    @classmethod
    def execute(cls, trajectory: CameraSet, source_size: str) -> io.NodeOutput:
        cams = _check_trajectory(cls, "trajectory", trajectory)
        source_size = _SOURCE_SIZE_ALIASES.get(source_size, source_size)
        require(cls, "source_size", source_size in SOURCE_SIZES,
                f"must be one of {list(SOURCE_SIZES)}, got {source_size!r}")
        with blame(cls, "trajectory"):
            poses = cameras_to_cameractrl_poses(cams, source_size=SOURCE_SIZES[source_size])
        return io.NodeOutput(poses)


TRAJECTORY_NODES: list[type[io.ComfyNode]] = [
    CombineTrajectories, ResampleTrajectory, TrajectoryInfo, TrajectoryPreview,
    TrajectoryFromCameraCtrlPoses, TrajectoryToCameraCtrlPoses,
]
