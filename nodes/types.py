"""Socket types of the pack. Values travel in-process as Python objects.

``MVC_CAMERA_TRAJECTORY`` carries a :class:`mvcustom_core.cameras.CameraSet` (K ``[F, 3, 3]`` in
pixels, c2w ``[F, 4, 4]`` camera-to-world with OpenCV axes, image size ``(H, W)``); see
``mvcustom_core/cameras/camera_set.py`` for the convention. Nodes never mutate an incoming value:
cached upstream outputs are shared between runs.

``CAMERACTRL_POSES`` is AnimateDiff-Evolved's type (``list[list[float]]``, one RealEstate10K row per
frame), so our converters connect to their CameraCtrl nodes and to WanVideoWrapper's.
"""

from __future__ import annotations

from ._host import io

Trajectory = io.Custom("MVC_CAMERA_TRAJECTORY")
CameraCtrlPoses = io.Custom("CAMERACTRL_POSES")

# Declared now so later stages share one spelling; each carries one core object.
Backbone = io.Custom("MVC_BACKBONE")            # SD1.5 UNet + motion module + text encoder + VAE
Customization = io.Custom("MVC_CUSTOMIZATION")  # trained pose-conditioned blocks + subject token
DFRPlan = io.Custom("MVC_DFR_PLAN")              # depth-aware feature rendering settings
CLCPlan = io.Custom("MVC_CLC_PLAN")              # consistency-aware latent completion settings
DepthModelType = io.Custom("MVC_DEPTH_MODEL")    # a monocular depth model (mvcustom_core.depth.DepthModel)
Depth = io.Custom("MVC_DEPTH")                   # depth values with their kind (mvcustom_core.depth.DepthMap)

__all__ = ["Trajectory", "CameraCtrlPoses", "Backbone", "Customization", "DFRPlan", "CLCPlan", "DepthModelType",
           "Depth"]
