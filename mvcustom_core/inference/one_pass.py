"""One-pass anchor depth (our addition to MVCustom; method.md §7.2, "decode x̂0 at an early step").

The paper estimates the anchor's depth on a generated frame, so DFR (which acts from the first step) needs a
preliminary generation: two passes, the second with the same seed. In one pass the sampler itself provides the
picture: after step ``k − 1`` (``k = max(1, ⌊one_pass_at · S + ½⌋)``) the anchor frame's predicted clean latent
x̂0 is decoded, its depth estimated and aligned to the customization field exactly as in two passes, and the
anchor geometry handed to the DFR hook (replacement from step ``k`` to K) and to the CLC hook, whose window of
steps starts there instead of at step 0 (so CLC still refreshes the disoccluded latents during DFR's first
steps). Before step ``k`` both act on nothing.

What it costs and changes against two passes is measured in ``benchmarks/bench_one_pass.py`` (docs/inference.md):
one VAE decode of one frame and one depth estimate instead of a whole second sampling run, for an x̂0 that is
blurrier than a finished frame, and DFR missing its first ``k`` steps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from mvcustom_core.backbone.hooks import StepContext
from mvcustom_core.backbone.sampler import decode_latents
from mvcustom_core.backbone.schedule import leading_steps
from mvcustom_core.cameras import CameraSet
from mvcustom_core.depth import estimate_depth
from mvcustom_core.depth.estimate import estimate_bytes
from mvcustom_core.inference.anchor_depth import AlignedDepth
from mvcustom_core.inference.clc import CLCHook, keep_mask
from mvcustom_core.inference.dfr import (AnchorGeometry, DFRError, DFRHook, DFRPlan, anchor_index,
                                         resolve_anchor_geometry)
from mvcustom_core.memory_estimate import vae_decode_frame_bytes

__all__ = ["OnePassAnchor", "one_pass_step", "one_pass_bytes"]


def one_pass_bytes(plan: DFRPlan, vae: torch.nn.Module | None, image_size: tuple[int, int]) -> int:
    """Activation peak of the one-pass step at ``image_size`` (H, W): the anchor's decode (not counted without
    ``vae``), then its depth estimate beside the decoded picture (``[3, H, W]`` float32); the two never overlap."""
    decode = 0 if vae is None else vae_decode_frame_bytes(vae, image_size, next(vae.parameters()).dtype)
    picture = 3 * image_size[0] * image_size[1] * 4
    return max(decode, picture + estimate_bytes(plan.depth_model, image_size))


def one_pass_step(plan: DFRPlan, total: int) -> int:
    """The step after which the anchor's x̂0 is decoded: ``max(1, ⌊one_pass_at · S + ½⌋) − 1``."""
    return max(1, leading_steps(plan.one_pass_at, total)) - 1


class OnePassAnchor:
    """Sampler step hook that builds the anchor geometry mid-sampling (see the module docstring).

    Install it before the CLC hook (the sampler runs step hooks in order), so CLC can act on the same step.

    Attributes (after it ran): ``geometry``, ``aligned`` (the alignment), ``picture`` ``[3, H, W]`` (the decoded
    x̂0 of the anchor) and ``step`` (when it ran).
    """

    def __init__(self, plan: DFRPlan, cams: CameraSet, *, vae: torch.nn.Module, dfr: DFRHook,
                 clc: CLCHook | None = None, clc_erosion: int = 0, unet: torch.nn.Module | None = None,
                 pose_context: Any = None) -> None:
        if plan.depth_model is None:
            raise DFRError("one-pass anchor depth needs a depth model in the DFR plan")
        if vae is None:
            raise DFRError("one-pass anchor depth decodes the anchor's x̂0: it needs the backbone's VAE")
        self.plan, self.cams, self.vae, self.dfr, self.clc = plan, cams, vae, dfr, clc
        self.clc_erosion, self.unet, self.pose_context = int(clc_erosion), unet, pose_context
        self.anchor = anchor_index(plan.anchor, cams.num_frames)
        self.geometry: AnchorGeometry | None = None
        self.aligned: AlignedDepth | None = None
        self.picture: Tensor | None = None
        self.step: int | None = None

    def on_step(self, ctx: StepContext) -> None:
        if self.geometry is not None or ctx.step != one_pass_step(self.plan, ctx.total):
            return None
        anchor = self.anchor
        self.picture = decode_latents(self.vae, ctx.x0_pred[anchor:anchor + 1])[0]  # [3, H, W] in [0, 1]
        depth = estimate_depth(self.plan.depth_model, self.picture[None])
        values, valid = depth.frame(0, 1)
        resolved = replace(self.plan, depth=values, depth_valid=valid, depth_kind=depth.kind)
        self.geometry, self.aligned = resolve_anchor_geometry(resolved, self.cams, unet=self.unet,
                                                              pose_context=self.pose_context)
        self.step = ctx.step
        self.dfr.geometry = self.geometry
        if self.clc is not None:
            height, width = self.cams.image_size
            self.clc.keep = keep_mask(self.geometry.coverage((height // 8, width // 8)), anchor, self.clc_erosion)
            self.clc.start = ctx.step
        return None
