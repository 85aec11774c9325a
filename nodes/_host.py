"""The only module of the pack that imports ComfyUI.

Every node module takes ``io``, ``ui``, ``ComfyExtension`` and the host services from here, so a
change in ComfyUI's public API is absorbed in one place, and the node tests can stand in a small
fake for exactly these names.
"""

from __future__ import annotations

import comfy.latent_formats as latent_formats
import comfy.model_management as model_management
import comfy.model_patcher as model_patcher
import comfy.utils as comfy_utils
import folder_paths
import latent_preview
from comfy_api.latest import ComfyExtension, io, ui

__all__ = ["ComfyExtension", "io", "ui", "folder_paths", "model_management", "model_patcher", "comfy_utils",
           "latent_formats", "latent_preview"]
