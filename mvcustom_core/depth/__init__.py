"""Monocular depth for the anchor frame: depth maps with their kind, offline model loading, estimation.

``maps``: :class:`DepthMap` (metric / relative / disparity) and the conversion of other packs' depth IMAGEs;
``layouts``: weights-file key layouts (original Depth Anything V2 -> transformers); ``loading``: safetensors files
and transformers folders into transformers' classes; ``estimate``: each family's preprocessing and inference.
"""

from .estimate import estimate_depth, resize_keep_aspect
from .layouts import detect_depth_layout, original_depth_anything_shapes, original_to_transformers
from .loading import (DEPTH_SUFFIXES, DEPTH_VARIANTS, DepthModel, DepthModelError, InputSpec, build_depth_module, input_spec,
                      load_depth_model, shipped_depth_config, tiny_depth_model)
from .maps import (DEPTH_KINDS, IMAGE_ENCODINGS, INVALID_RULES, DepthKind, DepthMap, DepthMapError,
                   depth_map_from_image, depth_preview)

__all__ = ["estimate_depth", "resize_keep_aspect", "detect_depth_layout", "original_depth_anything_shapes",
           "original_to_transformers", "DEPTH_SUFFIXES", "DEPTH_VARIANTS", "DepthModel", "DepthModelError", "InputSpec", "input_spec",
           "build_depth_module",
           "load_depth_model", "shipped_depth_config", "tiny_depth_model", "DEPTH_KINDS", "IMAGE_ENCODINGS",
           "INVALID_RULES", "DepthKind", "DepthMap", "DepthMapError", "depth_map_from_image", "depth_preview"]
