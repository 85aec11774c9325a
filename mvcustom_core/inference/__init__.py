"""Inference: depth-aware feature rendering (DFR), consistency-aware latent completion (CLC), the MVCustom
sampler with frame windows, and export of frames, cameras and the anchor point cloud (method.md §7)."""

from mvcustom_core.inference.anchor_depth import (AlignedDepth, AnchorDepthError, align_depth,
                                                  field_depth, fit_scale_shift, ray_length_to_z)
from mvcustom_core.inference.clc import CLCError, CLCHook, CLCPlan, erode, keep_mask
from mvcustom_core.inference.dfr import (AnchorGeometry, DFRError, DFRHook, DFRPlan, anchor_index,
                                         default_dfr_layers, dfr_previews, resolve_anchor_geometry)
from mvcustom_core.inference.export import ExportResult, export_views, read_ply, write_ply
from mvcustom_core.inference.mvcustom_sampler import MVCustomRun, mvcustom_sample, prepare_run
from mvcustom_core.inference.windows import WindowedUNet, plan_windows, window_weights

__all__ = ["AlignedDepth", "AnchorDepthError", "align_depth", "field_depth", "fit_scale_shift",
           "ray_length_to_z", "CLCError", "CLCHook", "CLCPlan", "erode", "keep_mask", "AnchorGeometry", "DFRError",
           "DFRHook", "DFRPlan", "anchor_index", "default_dfr_layers", "dfr_previews", "resolve_anchor_geometry",
           "ExportResult", "export_views", "read_ply", "write_ply", "MVCustomRun",
           "mvcustom_sample", "prepare_run", "WindowedUNet", "plan_windows", "window_weights"]
