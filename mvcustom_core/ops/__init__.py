"""Geometry ops: ray sampling, volume rendering, and the feature-mesh rasterizer (the DFR op).

Every op here is plain torch with a readable reference; the rasterizer also has a Triton kernel
(:mod:`mvcustom_core.ops.raster_triton`, imported only when ``impl="triton"`` asks for it).
"""

from mvcustom_core.ops.feature_mesh import (
    DEFAULT_MAX_REL_DEPTH_JUMP,
    FeatureMesh,
    FeatureMeshError,
    build_feature_mesh,
    grid_faces,
    resample_depth,
)
from mvcustom_core.ops.raster import (
    Fragments,
    RasterError,
    RenderPlan,
    apply_plan,
    apply_plan_reference,
    interpolate,
    make_render_plan,
    plan_mesh_render,
    rasterize,
    triton_available,
)
from mvcustom_core.ops.raymarch import (
    bin_edges,
    camera_rays,
    importance_samples,
    points_along_rays,
    stratified_samples,
)
from mvcustom_core.ops.volume import VolumeRender, trunc_exp, volume_render

__all__ = [
    "DEFAULT_MAX_REL_DEPTH_JUMP",
    "FeatureMesh",
    "FeatureMeshError",
    "Fragments",
    "RasterError",
    "RenderPlan",
    "VolumeRender",
    "apply_plan",
    "apply_plan_reference",
    "bin_edges",
    "build_feature_mesh",
    "camera_rays",
    "grid_faces",
    "importance_samples",
    "interpolate",
    "make_render_plan",
    "plan_mesh_render",
    "points_along_rays",
    "rasterize",
    "resample_depth",
    "stratified_samples",
    "triton_available",
    "trunc_exp",
    "volume_render",
]
