"""Cameras in one convention (see :mod:`mvcustom_core.cameras.camera_set`), file formats at the edge."""

from mvcustom_core.cameras.camera_set import OPENCV_TO_OPENGL, CameraError, CameraSet, intrinsics_matrix
from mvcustom_core.cameras.look_at import look_at

__all__ = ["CameraSet", "CameraError", "OPENCV_TO_OPENGL", "intrinsics_matrix", "look_at"]
