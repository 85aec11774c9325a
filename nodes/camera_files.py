"""Camera files: load a trajectory from ComfyUI's input folder, save one into its output folder.

Formats are those of :mod:`mvcustom_core.cameras.formats` (RealEstate10K/CameraCtrl ``.txt``, a saved
``CAMERACTRL_POSES`` ``.json``, ``transforms.json``, COLMAP model folders, CO3D ``.jgz``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mvcustom_core.cameras import CameraSet
from mvcustom_core.cameras.formats import FORMATS, load_camera_file, save_camera_file

from ._common import NodeInputError, blame, numbered_output, queue_check, require
from ._files import read_path, reading
from ._host import folder_paths, io, ui
from .types import Trajectory

__all__ = ["CAMERA_FILE_NODES", "LoadTrajectory", "SaveTrajectory", "list_camera_files", "SAVE_SUFFIXES"]

CATEGORY = "MVCustom/camera"
AUTO = "auto"
_FILE_SUFFIXES = (".txt", ".json", ".jgz", ".gz")
_COLMAP_MARKERS = ("cameras.txt", "cameras.bin")
# What the saved file (or, for COLMAP, folder) is called after ComfyUI's "<prefix>_<counter>_" stem.
SAVE_SUFFIXES = {"realestate10k": ".txt", "cameractrl_json": ".json", "transforms_json": ".json",
                 "colmap": "", "co3d": ".jgz"}


def list_camera_files(root: str | os.PathLike) -> list[str]:
    """Candidate camera files under ``root`` (recursive, ``/``-separated, sorted).

    Files ending in ``.txt``/``.json``/``.jgz``/``.gz``, except the members of a COLMAP model, whose
    folder is listed instead (the model is read as a whole).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        if rel != Path(".") and any(m in filenames for m in _COLMAP_MARKERS):
            found.add(rel.as_posix())
            continue
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(_FILE_SUFFIXES):
                found.add((rel / name).as_posix())
    return sorted(found)


def _resolve_input(node: type, file: str) -> Path:
    """The camera file or COLMAP folder ``file`` names in the input folder (``[output]``/``[temp]`` annotations
    honoured); one message for every name that does not lead to one inside its folder."""
    return read_path(node, "file", file, "input", kind="any", what="camera file or COLMAP folder",
                     hint="pick one from the list or upload one")


class LoadTrajectory(io.ComfyNode):
    """Reads a camera file from ComfyUI's input folder as a trajectory."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        files = list_camera_files(folder_paths.get_input_directory())
        return io.Schema(
            node_id="MVC_LoadTrajectory",
            display_name="MVCustom Load Trajectory",
            category=CATEGORY,
            description=("Loads cameras from a file in ComfyUI's input folder: RealEstate10K/CameraCtrl .txt, "
                         "CAMERACTRL_POSES .json, transforms.json, a COLMAP model folder or CO3D .jgz. Converted to "
                         "OpenCV camera-to-world with pixel intrinsics."),
            inputs=[
                # The upload button comes from web/js/load_trajectory_upload.js: the frontend has no
                # generic file-upload widget for combos (only image/video/audio).
                io.Combo.Input("file", options=files,
                               tooltip="Camera file (or COLMAP folder) relative to ComfyUI's input folder."),
                io.Combo.Input("format", options=[AUTO, *FORMATS], default=AUTO,
                               tooltip="File format; 'auto' detects it from the name and contents."),
                io.Int.Input("width", default=0, min=0, max=8192, step=8,
                             tooltip="Image width the cameras should refer to; 0 keeps the file's own size."),
                io.Int.Input("height", default=0, min=0, max=8192, step=8,
                             tooltip="Image height the cameras should refer to; 0 keeps the file's own size."),
            ],
            outputs=[Trajectory.Output("trajectory", tooltip="The cameras (MVC_CAMERA_TRAJECTORY).")],
        )

    @classmethod
    def validate_inputs(cls, file: str) -> bool | str:
        """Queue-time check of ``file`` only (ComfyUI passes just the inputs named here, and skips its
        combo-membership check for them, so a file added after the node list was built still validates)."""
        return queue_check(lambda: _resolve_input(cls, file))

    @classmethod
    def fingerprint_inputs(cls, file: str, **kwargs) -> str:
        """Re-run when the file (or a COLMAP folder's files) change on disk."""
        try:
            path = _resolve_input(cls, file)
        except NodeInputError:
            return str(file)  # execute reports it
        members = sorted(path.iterdir()) if path.is_dir() else [path]
        return ";".join(f"{p.name}:{p.stat().st_mtime_ns}:{p.stat().st_size}" for p in members if p.is_file())

    @classmethod
    def execute(cls, file: str, format: str, width: int, height: int) -> io.NodeOutput:
        require(cls, "format", format == AUTO or format in FORMATS,
                f"must be one of {[AUTO, *FORMATS]}, got {format!r}")
        require(cls, "width", int(width) >= 0, f"must be ≥ 0 (0 = file's size), got {width}")
        require(cls, "height", int(height) >= 0, f"must be ≥ 0 (0 = file's size), got {height}")
        require(cls, "width", (int(width) == 0) == (int(height) == 0),
                f"and 'height' must both be 0 (file's size) or both be set, got {width}x{height}")
        path = _resolve_input(cls, file)
        image_size = (int(height), int(width)) if width else None
        with reading(cls, "file", file, path, what="a camera file", arguments={"format": "format"}):
            cams = load_camera_file(path, format=None if format == AUTO else format, image_size=image_size)
        return io.NodeOutput(cams)


class SaveTrajectory(io.ComfyNode):
    """Writes a trajectory into ComfyUI's output folder (atomically)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_SaveTrajectory",
            display_name="MVCustom Save Trajectory",
            category=CATEGORY,
            description=("Saves the cameras into ComfyUI's output folder as <prefix>_<counter>_ plus the format's "
                         "suffix (a folder for COLMAP). Written to a temporary file first, then renamed."),
            inputs=[
                Trajectory.Input("trajectory", tooltip="The cameras to save (MVC_CAMERA_TRAJECTORY)."),
                io.String.Input("filename_prefix", default="mvcustom/trajectory",
                                tooltip="Path prefix inside the output folder; a counter is appended."),
                io.Combo.Input("format", options=list(FORMATS), default=FORMATS[0],
                               tooltip="File format to write (mvcustom_core.cameras.formats.FORMATS)."),
            ],
            outputs=[io.String.Output("filename", tooltip="The written path, relative to the output folder.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, trajectory: CameraSet, filename_prefix: str, format: str) -> io.NodeOutput:
        require(cls, "trajectory", isinstance(trajectory, CameraSet),
                f"must be an MVC_CAMERA_TRAJECTORY (CameraSet), got {type(trajectory).__name__}")
        require(cls, "format", format in FORMATS, f"must be one of {list(FORMATS)}, got {format!r}")
        folder, numbered, subfolder = numbered_output(cls, "filename_prefix", filename_prefix)
        name = f"{numbered}_{SAVE_SUFFIXES[format]}"
        with blame(cls, "trajectory"):
            save_camera_file(trajectory, folder / name, format)
        relative = Path(subfolder, name).as_posix()
        return io.NodeOutput(relative, ui=ui.PreviewText(f"saved {relative} ({format}, {len(trajectory)} cameras)"))


CAMERA_FILE_NODES: list[type[io.ComfyNode]] = [LoadTrajectory, SaveTrajectory]
