"""The pack's one ComfyExtension: every node module's list of node classes, in menu order.

A node module exposes ``<AREA>_NODES: list[type[io.ComfyNode]]``; add it to :data:`NODE_LISTS` (new
modules: ``backbone``, ``customization``, ``inference``). tests/nodes checks that every node class
defined under ``nodes/`` is registered here exactly once.
"""

from __future__ import annotations

from ._host import ComfyExtension, io
from .backbone import BACKBONE_NODES
from .backbone_codecs import BACKBONE_CODEC_NODES
from .bridge import BRIDGE_NODES
from .camera_files import CAMERA_FILE_NODES
from .customization import CUSTOMIZATION_NODES
from .depth import DEPTH_NODES
from .evaluation import EVALUATION_NODES
from .inference import INFERENCE_NODES
from .synthetic import SYNTHETIC_NODES
from .trajectories import TRAJECTORY_NODES
from .trajectory_presets import TRAJECTORY_PRESET_NODES

__all__ = ["NODE_LISTS", "NODES", "MVCustomExtension", "comfy_entrypoint"]

NODE_LISTS: dict[str, list[type[io.ComfyNode]]] = {
    "trajectory_presets": TRAJECTORY_PRESET_NODES,
    "trajectories": TRAJECTORY_NODES,
    "camera_files": CAMERA_FILE_NODES,
    "synthetic": SYNTHETIC_NODES,
    "backbone": BACKBONE_NODES + BRIDGE_NODES + BACKBONE_CODEC_NODES,
    "customization": CUSTOMIZATION_NODES,
    "depth": DEPTH_NODES,
    "inference": INFERENCE_NODES,
    "evaluation": EVALUATION_NODES,
}
NODES: list[type[io.ComfyNode]] = [node for nodes in NODE_LISTS.values() for node in nodes]


class MVCustomExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> MVCustomExtension:
    return MVCustomExtension()
