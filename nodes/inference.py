"""Inference nodes: DFR plan, latent completion plan, the MVCustom sampler and the export of a generated set.

Thin adapters: every computation lives in :mod:`mvcustom_core.inference`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mvcustom_core.backbone.sampler import conditioning_to_tensor, to_comfy_latent
from mvcustom_core.cameras import CameraSet
from mvcustom_core.customization.pose_block import PoseContext
from mvcustom_core.depth import INVALID_RULES, DepthMap, DepthModel, depth_map_from_image
from mvcustom_core.inference import CLCPlan, DFRPlan, mvcustom_sample, prepare_run, resolve_anchor_geometry
from mvcustom_core.inference.clc import DEFAULT_CLC_FRACTION
from mvcustom_core.inference.dfr import (DEFAULT_DFR_FRACTION, DEFAULT_ONE_PASS_AT, anchor_index, dfr_layers,
                                         dfr_previews)
from mvcustom_core.inference.export import export_views
from mvcustom_core.inference.one_pass import one_pass_bytes
from mvcustom_core.inference.mvcustom_sampler import DEFAULT_CFG, DEFAULT_OVERLAP, DEFAULT_WINDOW
from mvcustom_core.memory import MAX_WORKSPACE
from mvcustom_core.ops import DEFAULT_MAX_REL_DEPTH_JUMP

from ._common import (MEMORY_BUDGET_TOOLTIP, NodeInputError, Progress, blame, image_from_chw, image_to_chw,
                      input_named_in, numbered_output, relaying_warnings, require, with_warnings)
from ._host import io, model_management, ui
from .bridge import prepare_backbone, unet_memory, warn_ignored_conditioning
from .depth import load_depth_module
from .types import Backbone, CLCPlan as CLCPlanType, Customization, Depth, DepthModelType, DFRPlan as DFRPlanType
from .types import Trajectory

__all__ = ["INFERENCE_NODES", "DepthAwareFeatureRendering", "LatentCompletion", "MVCustomSampler", "ExportViews"]

CATEGORY = "MVCustom/inference"

USE_FRACTION = -1  # the absolute-step inputs' default: the schedule fraction decides (saved workflows hold >= 0)

DEPTH_MODEL_SOURCE = "depth model"
FIELD_SOURCE = "customization field"
# Combo option -> the depth IMAGE's encoding (None: not an image). The first is the default; saved workflows keep
# the options they name, so options are only ever added.
DEPTH_SOURCES = {
    DEPTH_MODEL_SOURCE: None,
    FIELD_SOURCE: None,
    "depth image (disparity, near = bright)": "disparity, near = bright",
    "depth image (depth, near = bright)": "depth, near = bright",
    "depth image (depth, far = bright)": "depth, far = bright",
}
DEPTH_SOURCE_TOOLTIP = (
    "Anchor depth. 'depth model' (default): the 'depth' input, an MVCustom Estimate Depth of the generated anchor "
    "frame (two passes, the paper's reading), or else the 'depth_model' input, run inside the sampler on the "
    "anchor's early x̂0 (one pass). Depth Anything gives disparity, ZoeDepth and metric Depth Anything metric "
    "depth; either is aligned to the field's depth on the subject (scale for metric, scale + shift for "
    "disparity). 'customization field': the FeatureNeRF's own metric depth, on the subject only (the background "
    "is never replaced). 'depth image': another pack's depth IMAGE; preprocessors (Depth Anything, MiDaS) give "
    "disparity near = bright; ZoeDepth and metric Depth Anything preprocessors give depth near = bright "
    "(normalized, ZoeDepth's percentile-clipped): scale + shift are fitted.")


def _trajectory(node: type, value: Any, name: str = "trajectory") -> CameraSet:
    require(node, name, isinstance(value, CameraSet),
            f"must be an MVC_CAMERA_TRAJECTORY (CameraSet), got {type(value).__name__}")
    return value


def _pose_context(node: type, unet: torch.nn.Module, customization: Any) -> PoseContext | None:
    """The customization's PoseContext on ``unet`` (this run's view: the shared backbone never sees its blocks).

    A :class:`~mvcustom_core.customization.Customization` (the loader node's value) is installed on the view; a
    PoseContext is used as is (a UNet whose blocks are already installed, e.g. from a script).
    """
    if customization is None or isinstance(customization, PoseContext):
        return customization
    from mvcustom_core.customization import Customization, apply_customization

    require(node, "customization", isinstance(customization, Customization),
            f"must be an MVC_CUSTOMIZATION, got {type(customization).__name__}")
    with blame(node, "customization"):
        return apply_customization(unet, customization)


def _anchor_picture(node: type, name: str, image: torch.Tensor, anchor: int, frames: int) -> torch.Tensor:
    """One ``[3, H, W]`` picture of the anchor from an IMAGE batch of 1 or of all F frames."""
    batch = image_to_chw(node, name, image)
    require(node, name, batch.shape[0] in (1, frames),
            f"must hold 1 image or one per frame ({frames}), got {batch.shape[0]}")
    return batch[0 if batch.shape[0] == 1 else anchor]


class DepthAwareFeatureRendering(io.ComfyNode):
    """Settings of DFR plus previews of what it will replace."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_DepthAwareFeatureRendering",
            display_name="MVCustom Depth-Aware Feature Rendering",
            category=CATEGORY,
            description=("Depth-aware feature rendering (MVCustom Sec. 3.4): the anchor frame's UNet features are "
                         "placed on a mesh from the anchor depth and rendered into every other frame, replacing "
                         "their features where the anchor sees them during the first 70 % of the denoising steps "
                         "(the paper's first 35 of 50). The anchor depth comes from a depth model run on the "
                         "generated anchor frame (the paper: ZoeDepth), aligned to the customization's depth on the "
                         "subject, so the background is rendered too. Previews need a depth (or depth image), or a "
                         "model and customization for the field depth; one pass previews nothing (its depth exists "
                         "only during sampling)."),
            inputs=[
                Trajectory.Input("trajectory", tooltip="The cameras to generate (for the previews and the anchor)."),
                io.Int.Input("anchor_frame", default=-1, min=-1, max=4095,
                             tooltip="Frame whose features are rendered into the others; -1 = the middle frame."),
                io.Combo.Input("depth_source", options=list(DEPTH_SOURCES), default=DEPTH_MODEL_SOURCE,
                               tooltip=DEPTH_SOURCE_TOOLTIP),
                io.Int.Input("steps", default=USE_FRACTION, min=USE_FRACTION, max=1000,
                             tooltip=("-1 (default): replace features on the first 'fraction' of the denoising "
                                      "steps. K >= 0: on exactly the first K steps at any step count (how "
                                      "workflows saved before 'fraction' store it: 35 = the first 35 steps).")),
                io.String.Input("layers", default="",
                                tooltip=("Comma-separated UNet module paths to hook; empty = the outputs of the last "
                                         "two upsampling decoder blocks (latent and half-latent resolution).")),
                io.Float.Input("scale", default=0.0, min=0.0, max=1e4, step=0.001,
                               tooltip=("Manual alignment: z = scale·x + shift (disparity: 1/z = scale·x + shift); "
                                        "0 = robust least squares against the field's depth on the subject, or the "
                                        "median at the anchor's distance to the origin without a customization.")),
                io.Float.Input("shift", default=0.0, min=-1e4, max=1e4, step=0.001,
                               tooltip="Manual depth shift, used with a manual scale."),
                io.Float.Input("max_rel_depth_jump", default=DEFAULT_MAX_REL_DEPTH_JUMP, min=0.001, max=10.0,
                               step=0.01,
                               tooltip=("Mesh faces spanning a larger relative depth jump are dropped, unless their "
                                        "depths continue a plane (a ground seen up to its horizon is kept).")),
                io.Boolean.Input("guard_silhouettes", default=True, optional=True,
                                 tooltip=("Leave pixels next to the anchor's silhouettes, where it cannot tell which "
                                          "surface is seen, to the model instead of copying the surface behind.")),
                io.Float.Input("fraction", default=DEFAULT_DFR_FRACTION, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip=("Part of the schedule with feature replacement: steps i < round(fraction x "
                                        "steps), halves up (0.7 = the paper's first 35 of 50 DDIM steps; 14 of 20, "
                                        "21 of 30). Used while 'steps' is -1.")),
                io.Image.Input("depth_image", optional=True,
                               tooltip=("Another pack's depth IMAGE of the anchor frame (1 image, or one per frame), "
                                        "for the 'depth image' sources.")),
                io.Image.Input("anchor_image", optional=True,
                               tooltip="Anchor frame picture, only to colour the rendered-view preview."),
                Backbone.Input("model", optional=True,
                               tooltip="With a customization: previews of the field depth (and its alignment)."),
                Customization.Input("customization", optional=True,
                                    tooltip="With a model: previews of the field depth (and its alignment)."),
                Depth.Input("depth", optional=True,
                            tooltip=("'depth model' source, two passes: MVCustom Estimate Depth of the first pass's "
                                     "anchor frame (1 image, or one per frame). It carries its kind (metric or "
                                     "disparity), which decides the alignment.")),
                DepthModelType.Input("depth_model", optional=True,
                                     tooltip=("'depth model' source, one pass (without 'depth'): the sampler decodes "
                                              "the anchor's x̂0 after 'one_pass_at' of the steps, estimates its "
                                              "depth with this model and starts DFR there.")),
                io.Combo.Input("invalid_pixels", options=list(INVALID_RULES), default=INVALID_RULES[0], optional=True,
                               tooltip=("Depth images only: which pixels carry no depth. 'clipped ends': pixels at "
                                        "black or white (saturated by the preprocessor's normalization or "
                                        "percentile clipping: their depth is only bounded); 'black': only black "
                                        "(packs that write 0 for no depth); 'none': every pixel.")),
                io.Float.Input("one_pass_at", default=DEFAULT_ONE_PASS_AT, min=0.0, max=0.99, step=0.01,
                               optional=True,
                               tooltip=("One pass: share of the steps after which the anchor's x̂0 is decoded and its "
                                        "depth estimated (0.1 = after the 5th of 50 steps); DFR acts from the next "
                                        "step, CLC's window starts there.")),
            ],
            outputs=[
                DFRPlanType.Output("dfr_plan", tooltip="DFR settings for the MVCustom Sampler."),
                io.Image.Output("completion_masks",
                                tooltip="White where the anchor does not see a frame (the region CLC completes)."),
                io.Image.Output("rendered_views", tooltip="The anchor picture (or depth) rendered into every frame."),
            ],
        )

    @classmethod
    def execute(cls, trajectory: CameraSet, anchor_frame: int, depth_source: str, steps: int, layers: str,
                scale: float, shift: float, max_rel_depth_jump: float, guard_silhouettes: bool = True,
                fraction: float = DEFAULT_DFR_FRACTION, depth_image: torch.Tensor | None = None,
                anchor_image: torch.Tensor | None = None, model: Any = None, customization: Any = None,
                depth: Any = None, depth_model: Any = None, invalid_pixels: str = INVALID_RULES[0],
                one_pass_at: float = DEFAULT_ONE_PASS_AT) -> io.NodeOutput:
        cams = _trajectory(cls, trajectory)
        require(cls, "depth_source", depth_source in DEPTH_SOURCES,
                f"must be one of {list(DEPTH_SOURCES)}, got {depth_source!r}")
        require(cls, "invalid_pixels", invalid_pixels in INVALID_RULES,
                f"must be one of {list(INVALID_RULES)}, got {invalid_pixels!r}")
        anchor = None if int(anchor_frame) < 0 else int(anchor_frame)
        with blame(cls, "anchor_frame"):
            a = anchor_index(anchor, cams.num_frames)
        values, valid, kind, estimator = _anchor_depth(cls, depth_source, depth, depth_model, depth_image,
                                                       invalid_pixels, a, cams.num_frames)
        names = tuple(n.strip() for n in layers.split(",") if n.strip()) or None
        # depth_kind follows from the depth source, so only a bug could make it wrong: such errors pass unnamed
        with blame(cls, input_named_in(["steps", "fraction", "one_pass_at", "scale", "shift", "max_rel_depth_jump"],
                                       None)):
            plan = DFRPlan(anchor=anchor, depth=values, depth_valid=valid, depth_kind=kind, depth_model=estimator,
                           one_pass_at=float(one_pass_at),
                           scale=float(scale) if scale > 0 else None, shift=float(shift) if scale > 0 else None,
                           layers=names, steps=None if int(steps) == USE_FRACTION else int(steps),
                           fraction=float(fraction), max_rel_depth_jump=float(max_rel_depth_jump),
                           guard_silhouettes=bool(guard_silhouettes))
        unet = None
        if model is not None:  # no UNet call here: the field's render of the anchor is chunked to one workspace
            unet = prepare_backbone(cls, model, ["unet"], input_name="model", memory_required=MAX_WORKSPACE).unet
            with blame(cls, "layers", {"layers": "layers"}):
                dfr_layers(unet, plan)
        have_field = model is not None and customization is not None
        if values is None and (estimator is not None or not have_field):  # one pass, or the field without a model
            blank = image_from_chw(torch.zeros(1, 3, 8, 8))
            note = ("one pass: the depth model runs inside the sampler" if estimator is not None else
                    "field depth: connect model and customization for previews")
            return io.NodeOutput(plan, blank, blank, ui=ui.PreviewText(note))
        picture = None if anchor_image is None else _anchor_picture(cls, "anchor_image", anchor_image, a,
                                                                     cams.num_frames)
        ctx = _pose_context(cls, unet, customization) if have_field else None
        source_input = {DEPTH_MODEL_SOURCE: "depth", FIELD_SOURCE: "customization"}.get(depth_source, "depth_image")
        with blame(cls, source_input), relaying_warnings(cls) as warned:
            geometry, aligned = resolve_anchor_geometry(plan, cams, unet=unet, pose_context=ctx)
            completion, views = dfr_previews(geometry, picture)
        note = "customization field depth (subject only)" if aligned is None else aligned.summary()
        return io.NodeOutput(plan, image_from_chw(completion.expand(-1, 3, -1, -1)), image_from_chw(views),
                             ui=ui.PreviewText(with_warnings(note, warned)))


def _anchor_depth(node: type, source: str, depth: Any, depth_model: Any, depth_image: torch.Tensor | None,
                  invalid_pixels: str, anchor: int, frames: int):
    """``(values [H, W] | None, valid | None, kind, depth model | None)`` of the DFR node's depth source."""
    if source == DEPTH_MODEL_SOURCE:
        if depth is not None:
            require(node, "depth", isinstance(depth, DepthMap),
                    f"must be an MVC_DEPTH (MVCustom Estimate Depth), got {type(depth).__name__}")
            with blame(node, "depth"):
                values, valid = depth.frame(anchor, frames)
            return values, valid, depth.kind, None
        if depth_model is not None:
            require(node, "depth_model", isinstance(depth_model, DepthModel),
                    f"must be an MVC_DEPTH_MODEL (MVCustom Load Depth Model), got {type(depth_model).__name__}")
            return None, None, depth_model.kind, depth_model
        raise NodeInputError(node, "depth", "must be connected for depth source 'depth model': MVCustom Estimate "
                                            "Depth of the anchor frame (two passes), or connect a depth_model (one "
                                            f"pass in the sampler); or choose depth_source '{FIELD_SOURCE}'")
    encoding = DEPTH_SOURCES[source]
    if encoding is None:  # the customization field
        return None, None, "disparity", None
    require(node, "depth_image", depth_image is not None, f"must be connected for depth source {source!r}")
    picture = _anchor_picture(node, "depth_image", depth_image, anchor, frames)
    with blame(node, "depth_image"):
        converted = depth_map_from_image(picture[None], encoding, invalid_pixels)
    return converted.values[0], converted.valid[0], converted.kind, None


class LatentCompletion(io.ComfyNode):
    """Settings of consistency-aware latent completion."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_LatentCompletion",
            display_name="MVCustom Latent Completion",
            category=CATEGORY,
            description=("Consistency-aware latent completion (MVCustom Sec. 3.4): in the early steps (the paper's "
                         "'from T down to τ'; by default the first 10 % of the schedule) the latents the anchor "
                         "cannot see are re-noised from the predicted clean latents with fresh noise, so newly "
                         "revealed regions are imagined instead of smeared. Needs a DFR plan."),
            inputs=[
                io.Int.Input("tau", default=USE_FRACTION, min=USE_FRACTION, max=1000,
                             tooltip=("-1 (default): act on the first 'fraction' of the steps. τ >= 0: act on the "
                                      "steps whose timestep t >= τ, at any step count (how workflows saved before "
                                      "'fraction' store it: 900 = 5 of 50 DDIM steps, 2 of 30).")),
                io.Int.Input("erosion", default=1, min=0, max=16,
                             tooltip="Shrink the anchor-visible region by this many latent pixels first."),
                io.Float.Input("fraction", default=DEFAULT_CLC_FRACTION, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip=("Part of the schedule with latent completion: steps i < round(fraction x "
                                        "steps), halves up (0.1 = the first 5 of 50 steps, the paper's τ close to "
                                        "T; 2 of 20, 3 of 30). Used while 'tau' is -1.")),
            ],
            outputs=[CLCPlanType.Output("clc_plan", tooltip="Latent completion settings for the MVCustom Sampler.")],
        )

    @classmethod
    def execute(cls, tau: int, erosion: int, fraction: float = DEFAULT_CLC_FRACTION) -> io.NodeOutput:
        with blame(cls, input_named_in(["tau", "erosion", "fraction"], "tau")):
            return io.NodeOutput(CLCPlan(fraction=float(fraction), erosion=int(erosion),
                                         tau=None if int(tau) == USE_FRACTION else int(tau)))


# Core arguments of prepare_run / mvcustom_sample (marked with mvcustom_core.checks.about) -> Sampler inputs.
_SAMPLER_ARGUMENTS = {"dfr": "dfr_plan", "clc": "clc_plan", "cams": "trajectory", "window": "window",
                      "overlap": "overlap", "pose_ratio": "pose_ratio", "pose_context": "customization",
                      "steps": "steps", "cond": "positive", "uncond": "negative", "seed": "seed", "cfg": "cfg",
                      "memory_budget": "memory_budget_gb"}


class MVCustomSampler(io.ComfyNode):
    """The MVCustom sampling loop."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_MVCustomSampler",
            display_name="MVCustom Sampler",
            category=CATEGORY,
            description=("Generates one frame per trajectory camera jointly (DDIM), with the customization's "
                         "pose-conditioned blocks, depth-aware feature rendering and latent completion. The LATENT "
                         "goes to the standard VAE Decode. Without customization and plans it is the plain sampler."),
            inputs=[
                Backbone.Input("model", tooltip="SD1.5 + motion module backbone (MVC_BACKBONE)."),
                Trajectory.Input("trajectory", tooltip=("Target cameras in the customization's normalized scene "
                                                        "frame; their image size is the output size.")),
                io.Conditioning.Input("positive", tooltip="Prompt with the subject token (CLIPTextEncode)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt (the unconditional CFG branch)."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="Initial noise and CLC noise; equal seeds give identical latents."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip=("DDIM steps S (paper: 50 assumed, DFR in the first 35). The DFR, CLC and pose "
                                      "fractions apply to S.")),
                io.Float.Input("cfg", default=DEFAULT_CFG, min=1.0, max=30.0, step=0.1,
                               tooltip="Guidance scale (paper: 5; 3 blurrier, 8 more flicker)."),
                io.Float.Input("pose_ratio", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip=("Pose-conditioned blocks active on steps i < round(ratio x steps), halves up "
                                        "(paper default 100 %; 75/50/25 % trade reference shape for text).")),
                io.Int.Input("window", default=DEFAULT_WINDOW, min=2, max=256,
                             tooltip="Frames per model call; longer trajectories run as overlapping windows."),
                io.Int.Input("overlap", default=DEFAULT_OVERLAP, min=0, max=255,
                             tooltip="Frames shared by consecutive windows (blended)."),
                Customization.Input("customization", optional=True, tooltip="Subject customization (MVC_CUSTOMIZATION)."),
                DFRPlanType.Input("dfr_plan", optional=True, tooltip="Depth-aware feature rendering settings."),
                CLCPlanType.Input("clc_plan", optional=True, tooltip="Latent completion settings (needs a DFR plan)."),
                io.Float.Input("memory_budget_gb", default=0.0, min=0.0, max=4096.0, step=0.5, optional=True,
                               tooltip=MEMORY_BUDGET_TOOLTIP),
                io.Vae.Input("vae", optional=True,
                             tooltip=("One-pass DFR only (a DFR plan with a depth model): the VAE that decodes the "
                                      "anchor's x̂0, when the model has none of its own (a MODEL with a motion "
                                      "module). Default: the backbone's.")),
            ],
            outputs=[
                io.Latent.Output("latent", tooltip="Frames as a LATENT batch [F, 4, H/8, W/8] for VAE Decode."),
                DFRPlanType.Output("anchor", tooltip=("The DFR plan with the resolved anchor depth (metric z in the "
                                                      "scene frame), for the export's point cloud; None without DFR.")),
            ],
        )

    @classmethod
    def execute(cls, model: Any, trajectory: CameraSet, positive: Any, negative: Any, seed: int, steps: int,
                cfg: float, pose_ratio: float, window: int, overlap: int, customization: Any = None,
                dfr_plan: DFRPlan | None = None, clc_plan: CLCPlan | None = None,
                memory_budget_gb: float = 0.0, vae: Any = None) -> io.NodeOutput:
        cams = _trajectory(cls, trajectory)
        h, w = cams.image_size
        require(cls, "trajectory", h % 8 == 0 and w % 8 == 0, f"image size must be multiples of 8, got {h}x{w}")
        require(cls, "dfr_plan", dfr_plan is None or isinstance(dfr_plan, DFRPlan),
                f"must be an MVC_DFR_PLAN, got {type(dfr_plan).__name__}")
        require(cls, "clc_plan", clc_plan is None or isinstance(clc_plan, CLCPlan),
                f"must be an MVC_CLC_PLAN, got {type(clc_plan).__name__}")
        require(cls, "clc_plan", clc_plan is None or dfr_plan is not None,
                "needs a dfr_plan too (its anchor geometry defines the regions to complete)")
        with blame(cls, "positive"):
            cond = conditioning_to_tensor(positive)
        with blame(cls, "negative"):
            uncond = conditioning_to_tensor(negative)
        warn_ignored_conditioning(cls, "positive", positive)
        warn_ignored_conditioning(cls, "negative", negative)
        rows = (1 if float(cfg) == 1.0 else 2) * min(int(window), cams.num_frames)
        memory = unet_memory(model, rows, (h // 8, w // 8))
        one_pass = dfr_plan is not None and dfr_plan.depth is None and dfr_plan.depth_model is not None
        if one_pass:  # placed first: the backbone's load then decides what stays on the device
            load_depth_module(cls, "dfr_plan", dfr_plan.depth_model)
            # between two UNet calls: the depth estimate, and the field's render for the alignment (one workspace)
            memory = max(memory, one_pass_bytes(dfr_plan, None, (h, w)) + MAX_WORKSPACE)
        backbone = prepare_backbone(cls, model, ["unet", "vae"] if one_pass else ["unet"], input_name="model",
                                    vae=vae if one_pass else None, memory_required=memory)
        unet = backbone.unet
        width = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
        for name, text in (("positive", cond), ("negative", uncond)):
            require(cls, name, not isinstance(width, int) or text.shape[-1] == width,
                    f"has text features of width {text.shape[-1]}, but this model's UNet reads {width} (encode the "
                    "prompt with the text encoder of the model's own checkpoint)")
        ctx = _pose_context(cls, unet, customization)
        device = next(unet.parameters()).device
        cams_dev = cams.to(device=device, dtype=torch.float32)
        inputs = ["trajectory", "dfr_plan", "window", "overlap", "pose_ratio", "clc_plan", "customization"]
        with blame(cls, input_named_in(inputs, None), _SAMPLER_ARGUMENTS), relaying_warnings(cls) as warned:
            run = prepare_run(unet, cams_dev, pose_context=ctx, dfr=dfr_plan, clc=clc_plan, steps=int(steps),
                              pose_ratio=float(pose_ratio), window=int(window), overlap=int(overlap),
                              guided=float(cfg) != 1.0, memory_budget=float(memory_budget_gb or 0.0) or None,
                              vae=backbone.vae)
        progress = Progress(int(steps), latent_previews=True)
        with blame(cls, None, _SAMPLER_ARGUMENTS), relaying_warnings(cls) as warned_sampling:  # one pass: DFR mid-run
            latents = mvcustom_sample(unet, cond, uncond, cams_dev, pose_context=ctx, dfr=dfr_plan, clc=clc_plan,
                                      seed=int(seed), steps=int(steps), cfg=float(cfg), pose_ratio=float(pose_ratio),
                                      callback=lambda i, total, x0: progress.preview(i + 1, total, x0),
                                      interrupt=model_management.throw_exception_if_processing_interrupted, run=run)
        anchor, note = None, None
        if run.geometry is not None:
            anchor = replace(dfr_plan, anchor=run.geometry.anchor, depth=run.geometry.depth.detach().float().cpu(),
                             depth_valid=None, depth_kind="metric", depth_model=None, scale=1.0, shift=0.0)
        if run.one_pass is not None and run.one_pass.aligned is not None:
            note = f"one pass: anchor depth after step {run.one_pass.step + 1}; {run.one_pass.aligned.summary()}"
        note = with_warnings(note, warned + warned_sampling)
        return io.NodeOutput(to_comfy_latent(latents), anchor, ui=None if note is None else ui.PreviewText(note))


class ExportViews(io.ComfyNode):
    """Writes frames, cameras and the anchor point cloud."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_ExportViews",
            display_name="MVCustom Export Views",
            category=CATEGORY,
            description=("Writes the generated frames as PNGs with their cameras as transforms.json (NeRF / "
                         "instant-ngp layout) and, given the sampler's anchor, the anchor depth as a coloured PLY "
                         "point cloud, into <output>/<prefix>_<counter>/. Every file is written atomically."),
            inputs=[
                io.Image.Input("images", tooltip="Decoded frames, one per trajectory camera."),
                Trajectory.Input("trajectory", tooltip="The cameras the frames were generated for."),
                io.String.Input("folder_prefix", default="mvcustom/views",
                                tooltip="Folder prefix inside the output folder; a counter is appended."),
                io.Combo.Input("ply_format", options=["binary", "ascii"], default="binary",
                               tooltip="PLY encoding of the anchor point cloud."),
                DFRPlanType.Input("anchor", optional=True,
                                  tooltip="The sampler's 'anchor' output (resolved depth) for the point cloud."),
            ],
            outputs=[io.String.Output("folder", tooltip="The written folder, relative to the output folder.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images: torch.Tensor, trajectory: CameraSet, folder_prefix: str, ply_format: str,
                anchor: DFRPlan | None = None) -> io.NodeOutput:
        cams = _trajectory(cls, trajectory)
        frames = image_to_chw(cls, "images", images)  # IMAGE [F, H, W, C] -> [F, 3, H, W]
        require(cls, "images", frames.shape[0] == cams.num_frames,
                f"has {frames.shape[0]} frames but the trajectory has {cams.num_frames} cameras")
        require(cls, "ply_format", ply_format in ("binary", "ascii"), f"must be 'binary' or 'ascii', got {ply_format!r}")
        require(cls, "anchor", anchor is None or (isinstance(anchor, DFRPlan) and anchor.depth is not None
                                                  and anchor.depth_kind == "metric" and anchor.scale == 1.0),
                "must be the MVCustom Sampler's 'anchor' output (a resolved metric depth)")
        parent, name, subfolder = numbered_output(cls, "folder_prefix", folder_prefix)
        with blame(cls, "images"):
            result = export_views(parent / name, frames, cams,
                                  anchor=None if anchor is None else anchor.anchor,
                                  anchor_depth=None if anchor is None else anchor.depth,
                                  binary_ply=ply_format == "binary", progress=Progress(cams.num_frames + 2).callback)
        relative = Path(subfolder, name).as_posix()
        summary = f"saved {relative}: {len(result.images)} frames, transforms.json" + (", anchor_points.ply"
                                                                                       if result.ply else "")
        return io.NodeOutput(relative, ui=ui.PreviewText(summary))


INFERENCE_NODES: list[type[io.ComfyNode]] = [DepthAwareFeatureRendering, LatentCompletion, MVCustomSampler,
                                             ExportViews]
