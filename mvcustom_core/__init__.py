"""MVCustom core library: cameras, trajectories, geometry ops, backbone, customization, inference.

This package never imports ComfyUI (``comfy``, ``comfy_api``, ``folder_paths``, ``nodes``); the node
adapters in the pack's ``nodes/`` translate ComfyUI values to calls into it.
"""

__version__ = "0.1.0"
