"""Cameras in one convention (see :mod:`mvcustom_core.cameras.camera_set`), file formats at the edge."""

from mvcustom_core.cameras.camera_set import OPENCV_TO_OPENGL, CameraError, CameraSet, intrinsics_matrix
from mvcustom_core.cameras.look_at import look_at

__all__ = ["CameraSet", "CameraError", "OPENCV_TO_OPENGL", "intrinsics_matrix", "look_at"]

# Formats, normalization and Plücker rays (engineer A); appended so the lead's lines above stay untouched.
from mvcustom_core.cameras.formats import FORMATS, PoseFileError, load_camera_file, save_camera_file  # noqa: E402
from mvcustom_core.cameras.normalize import normalize_cameras, optical_axes_intersection  # noqa: E402
from mvcustom_core.cameras.plucker import plucker_embedding  # noqa: E402

__all__ += ["FORMATS", "PoseFileError", "load_camera_file", "save_camera_file", "normalize_cameras",
            "optical_axes_intersection", "plucker_embedding"]
