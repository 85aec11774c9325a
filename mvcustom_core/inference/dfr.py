"""Depth-aware feature rendering (DFR, MVCustom Sec. 3.4, Fig. 3a; method.md §7.2) as a sampler feature hook.

Per hooked UNet layer and denoising step ``i < K``::

    M_a = (P_a, F_a, T_a)                   anchor feature mesh at the layer's resolution
    (F_n^a, M_n^a) = R(M_a, φ_n)            z-buffered rasterization into every frame n ≠ a
    F̂_n = M_n^a ⊙ F_n^a + (1 − M_n^a) ⊙ F_n

Geometry (mesh, per-frame vertex ids and barycentric weights) is fixed during sampling, so it is built
once per layer size (:func:`mvcustom_core.ops.plan_mesh_render`) and each step only gathers the current
anchor features (:func:`mvcustom_core.ops.apply_plan`). With classifier-free guidance each branch renders
its own anchor row (the branches are folded into channels: one sparse product for both). The anchor frame
is never replaced.

Defaults (open choices, method.md §7.2): anchor = middle frame; replacement on the first 70 % of the schedule,
steps ``i < ⌊0.7·S + ½⌋`` (paper: "the first 35 steps" of 50 DDIM steps; 14 of 20, 21 of 30, 70 of 100; the
rounding rule of :func:`~mvcustom_core.backbone.schedule.leading_steps`, shared with the pose-block ratio and
CLC); an absolute K (``DFRPlan.steps``, workflows saved before fractions) still works; layers = :func:`default_dfr_layers`, the outputs of the last two upsampling decoder
blocks (SD1.5 at 512 px: ``up_blocks.1`` → 32×32 = half latent and ``up_blocks.2`` → 64×64 = latent
resolution), "decoder features at latent and half-latent resolution".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from mvcustom_core.backbone.hooks import FeatureHook, hookable_layers
from mvcustom_core.backbone.schedule import check_fraction, leading_steps
from mvcustom_core.cameras import CameraSet
from mvcustom_core.checks import about, check_shape
from mvcustom_core.inference.anchor_depth import AlignedDepth, DepthKind, align_depth, field_depth
from mvcustom_core.ops import (DEFAULT_MAX_REL_DEPTH_JUMP, FeatureMesh, RenderPlan, apply_plan, build_feature_mesh,
                               plan_mesh_render, resample_depth)

__all__ = ["DFRPlan", "DFRError", "AnchorGeometry", "DFRHook", "default_dfr_layers", "anchor_index",
           "resolve_anchor_geometry", "dfr_previews", "DEFAULT_DFR_FRACTION"]

DEFAULT_DFR_FRACTION = 0.7  # paper: the first 35 of 50 DDIM steps


class DFRError(ValueError):
    """Inconsistent DFR settings (anchor out of range, no depth source, unknown layer)."""


@dataclass(frozen=True)
class DFRPlan:
    """DFR settings; depth is resolved against the customization when sampling starts.

    Attributes:
        anchor: anchor frame index (negative counts from the end); None = middle frame ``F // 2``.
        depth: optional ``[H, W]`` raw anchor depth (a depth node's IMAGE, channel-averaged); None = the
            customized FeatureNeRF's expected depth.
        depth_kind: ``"disparity"`` (relative inverse depth: MiDaS, Depth Anything; near is bright) or
            ``"depth"`` (larger is farther: ZoeDepth metric depth).
        scale, shift: manual alignment; None = least squares against the field's depth on its opaque
            pixels, or (no customization) the median depth at the anchor camera's distance to the origin.
        layers: hooked module paths; None = :func:`default_dfr_layers`.
        fraction: part of the schedule with replacement: steps ``i < ⌊fraction·S + ½⌋`` of S (default 0.7, the
            paper's 35 of 50).
        steps: an absolute K instead (replacement in steps ``i < K`` at any S); None = ``fraction``.
        max_rel_depth_jump: face culling threshold of the feature mesh (see ``build_feature_mesh``).
        guard_silhouettes: leave target pixels whose surface the anchor cannot determine at its silhouettes
            uncovered (the mesh's occluder prisms, see ``build_feature_mesh``); False = render whatever lies behind.
        opacity_threshold: field pixels trusted for alignment / used as field depth.
    """

    anchor: int | None = None
    depth: Tensor | None = None
    depth_kind: DepthKind = "disparity"
    scale: float | None = None
    shift: float | None = None
    layers: tuple[str, ...] | None = None
    steps: int | None = None
    max_rel_depth_jump: float = DEFAULT_MAX_REL_DEPTH_JUMP
    guard_silhouettes: bool = True
    opacity_threshold: float = 0.5
    fraction: float = DEFAULT_DFR_FRACTION

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 0:
            raise DFRError(f"DFR steps K must be >= 0, got {self.steps}")
        try:
            check_fraction(self.fraction, "DFR fraction")
        except ValueError as error:
            raise DFRError(str(error)) from None
        if self.depth is not None:
            check_shape(self.depth, "H W", "DFR depth")
        if self.depth_kind not in ("depth", "disparity"):
            raise DFRError(f"depth_kind must be 'depth' or 'disparity', got {self.depth_kind!r}")

    def active_steps(self, total: int) -> int:
        """K for an S = ``total``-step schedule: replacement in steps ``i < K``."""
        return int(self.steps) if self.steps is not None else leading_steps(self.fraction, total)


def anchor_index(anchor: int | None, num_frames: int) -> int:
    """The anchor frame for ``num_frames`` frames (None: the middle frame ``F // 2``)."""
    a = num_frames // 2 if anchor is None else int(anchor)
    if a < 0:
        a += num_frames
    if not 0 <= a < num_frames:
        raise DFRError(f"anchor frame {anchor} is outside the trajectory's {num_frames} frames")
    return a


def default_dfr_layers(unet: torch.nn.Module) -> list[str]:
    """Outputs of the last two decoder blocks that upsample (SD1.5: ``up_blocks.1``, ``up_blocks.2``)."""
    ups = [f"up_blocks.{i}" for i, b in enumerate(getattr(unet, "up_blocks", []))
           if getattr(b, "upsamplers", None) is not None]
    if not ups:
        raise DFRError(f"{type(unet).__name__} has no upsampling decoder blocks; pass DFR layers explicitly")
    return ups[-2:]


def dfr_layers(unet: torch.nn.Module, plan: "DFRPlan") -> list[str]:
    """The module paths ``plan`` hooks in ``unet``: its ``layers``, or :func:`default_dfr_layers`. Names that are
    not hookable modules of ``unet`` raise :class:`DFRError` marked as being about ``layers``."""
    if not plan.layers:
        return default_dfr_layers(unet)
    hookable = hookable_layers(unet)
    missing = [name for name in plan.layers if name not in hookable]
    if missing:
        raise about("layers", DFRError(
            f"DFR layers {missing} are not hookable modules of this UNet; use module paths such as "
            f"{default_dfr_layers(unet)} (decoder blocks) or others from hookable_layers(unet), e.g. "
            f"{hookable[:4]}"))
    return list(plan.layers)


@dataclass
class AnchorGeometry:
    """The anchor view's geometry, shared by every hooked layer, window and the CLC masks.

    Attributes:
        anchor: anchor frame index into ``cams``.
        cams: all F target cameras (scene frame).
        depth: ``[H, W]`` anchor z-depth (0 = invalid) at any resolution; resampled per layer.
        max_rel_depth_jump: face culling threshold.
        guard_silhouettes: build the mesh with silhouette guards.
    """

    anchor: int
    cams: CameraSet
    depth: Tensor
    max_rel_depth_jump: float = DEFAULT_MAX_REL_DEPTH_JUMP
    guard_silhouettes: bool = True
    _meshes: dict = field(default_factory=dict, repr=False)
    _plans: dict = field(default_factory=dict, repr=False)

    def mesh(self, size: tuple[int, int]) -> FeatureMesh:
        """The anchor feature mesh on an ``(h, w)`` grid (nearest-resampled depth), cached."""
        size = (int(size[0]), int(size[1]))
        if size not in self._meshes:
            depth = resample_depth(self.depth, size, mode="nearest")
            self._meshes[size] = build_feature_mesh(depth, self.cams[self.anchor],
                                                    max_rel_depth_jump=self.max_rel_depth_jump,
                                                    guard_silhouettes=self.guard_silhouettes)
        return self._meshes[size]

    def plan(self, size: tuple[int, int]) -> RenderPlan:
        """Rasterization of :meth:`mesh` into all F cameras at ``size``; the anchor's own coverage is cleared."""
        size = (int(size[0]), int(size[1]))
        if size not in self._plans:
            plan = plan_mesh_render(self.mesh(size), self.cams, size)
            coverage = plan.coverage.clone()
            coverage[self.anchor] = False  # the anchor frame is never replaced
            self._plans[size] = replace(plan, coverage=coverage)
        return self._plans[size]

    def coverage(self, size: tuple[int, int]) -> Tensor:
        """``[F, 1, h, w]`` float 0/1: pixels of each frame the anchor sees (0 for the anchor itself)."""
        return self.plan(size).coverage.float()

    def render(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Render an anchor feature map ``[C, h, w]`` into every frame: ``([F, C, h, w], coverage [F, 1, h, w])``."""
        size = tuple(features.shape[-2:])
        return apply_plan(self.plan(size), self.mesh(size).vertex_features(features))


def resolve_anchor_geometry(
    plan: DFRPlan,
    cams: CameraSet,
    *,
    unet: torch.nn.Module | None = None,
    pose_context=None,
) -> tuple[AnchorGeometry, AlignedDepth | None]:
    """Turn a :class:`DFRPlan` into anchor geometry for the trajectory ``cams``.

    Depth: the plan's depth image aligned to the field's expected depth (needs ``unet`` with pose blocks
    and ``pose_context``; fitted on the field's latent-resolution render, opaque pixels only), or to manual
    scale/shift, or to the anchor's distance to the origin; without a depth image, the field's depth itself
    at latent resolution.

    Returns:
        the geometry and the alignment (None when the field depth is used as-is).
    """
    a = anchor_index(plan.anchor, cams.num_frames)
    anchor_cam = cams[a]
    has_field = unet is not None and pose_context is not None and bool(pose_context.references)
    # The field is rendered at latent resolution (the finest hooked layer's): a full-resolution render
    # would cost H·W·24 FeatureNeRF points for a mesh that is built at layer resolution anyway.
    height, width = cams.image_size
    field_size = (max(2, height // 8), max(2, width // 8))
    if plan.depth is None:
        if not has_field:
            raise DFRError("DFR without a depth image uses the customization's FeatureNeRF depth: connect a "
                           "customization or give an anchor depth image")
        depth, _ = field_depth(unet, pose_context, anchor_cam, field_size, opacity_threshold=plan.opacity_threshold)
        if not (depth > 0).any():
            raise DFRError("the customization's FeatureNeRF is transparent from the anchor view (no opacity above "
                           f"{plan.opacity_threshold}); give an anchor depth image")
        return AnchorGeometry(a, cams, depth, plan.max_rel_depth_jump, plan.guard_silhouettes), None
    raw = plan.depth.to(device=cams.K.device, dtype=torch.float32)
    scale, shift = plan.scale, plan.shift
    if scale is None and has_field:
        reference, opacity = field_depth(unet, pose_context, anchor_cam, field_size,
                                         opacity_threshold=plan.opacity_threshold)
        # Fit on the field's grid (nearest samples of the depth image), then map the full image.
        small = resample_depth(raw, field_size, mode="nearest")
        fit = align_depth(small, reference, (opacity > plan.opacity_threshold) & (small > 0), kind=plan.depth_kind)
        scale, shift = fit.scale, fit.shift
    center = float(anchor_cam.centers[0].norm())
    aligned = align_depth(raw, kind=plan.depth_kind, scale=scale, shift=shift, center_distance=center)
    return AnchorGeometry(a, cams, aligned.depth, plan.max_rel_depth_jump, plan.guard_silhouettes), aligned


def dfr_previews(geometry: AnchorGeometry, image: Tensor | None = None, max_size: int = 128
                 ) -> tuple[Tensor, Tensor]:
    """What DFR will do, as pictures at the trajectory's aspect (long side ≤ ``max_size``).

    Args:
        geometry: the anchor geometry.
        image: ``[3, H, W]`` anchor colours in [0, 1]; None = the anchor depth, colour-mapped.

    Returns:
        completion ``[F, 1, h, w]``: 1 where the anchor does not see the frame (the region CLC completes;
        the project page's "rendered mask" shows this), 0 on the anchor frame; and views ``[F, 3, h, w]``:
        the anchor colours rendered into every frame (black where uncovered; the anchor frame itself
        shows the unwarped anchor picture).
    """
    from mvcustom_core.files import colorize

    big_h, big_w = geometry.cams.image_size
    factor = min(1.0, max_size / max(big_h, big_w))
    size = (max(2, round(big_h * factor)), max(2, round(big_w * factor)))
    depth = resample_depth(geometry.depth, size, mode="nearest")
    if image is None:
        colours = colorize(depth[None, None], depth[None, None] > 0)[0]
    else:
        check_shape(image, "3 H W", "anchor image")
        colours = torch.nn.functional.interpolate(image.float()[None], size=size, mode="bilinear",
                                                  align_corners=False)[0]
    views, coverage = geometry.render(colours.to(geometry.depth.dtype))
    views = views.contiguous()
    views[geometry.anchor] = colours.to(views.dtype)
    completion = 1.0 - coverage
    completion[geometry.anchor] = 0.0
    return completion.float(), views.float().clamp(0, 1)


class DFRHook(FeatureHook):
    """Feature replacement at the hooked layers for steps ``step < steps`` (a sampler ``FeatureHook``; ``steps``
    is K, resolved by :meth:`DFRPlan.active_steps`).

    ``frames`` (set by :class:`~mvcustom_core.inference.windows.WindowedUNet`) lists the trajectory frames
    of the current model call; None = all F frames. The anchor's vertex features are taken from the first
    call of each step that contains the anchor and reused for later windows of the same step, so every
    window renders the same anchor mesh *and* the same anchor features.

    ``record`` (optional list) receives ``(step, name, frames, replaced_rows_mask)`` for tests and previews.
    """

    def __init__(self, geometry: AnchorGeometry, layers: list[str], steps: int) -> None:
        self.geometry = geometry
        self.num_steps = int(steps)
        self.frames: Tensor | None = None
        self._anchor_cache: dict[tuple[str, int], Tensor] = {}
        self._cache_step = -1
        self.record: list | None = None
        super().__init__(layers, self._replace)

    def install(self, unet: torch.nn.Module) -> "DFRHook":
        """Install for one sampling run; anchor features cached by an earlier run (same step index) are dropped."""
        self._anchor_cache, self._cache_step = {}, -1
        return super().install(unet)

    def _replace(self, name: str, step: int, features: Tensor) -> Tensor | None:
        if step >= self.num_steps or step < 0:
            return None
        geo = self.geometry
        frames = torch.arange(geo.cams.num_frames) if self.frames is None else self.frames.cpu()
        nf = frames.numel()
        if features.dim() != 4 or features.shape[0] % nf:
            raise DFRError(f"DFR layer {name!r} gives {tuple(features.shape)}; expected [N·{nf}, C, h, w] "
                           "feature maps (hook block or resnet outputs, not transformer tokens)")
        if step != self._cache_step:
            self._anchor_cache, self._cache_step = {}, step
        branches = features.shape[0] // nf
        rows = features.view(branches, nf, *features.shape[1:])
        local = (frames == geo.anchor).nonzero()
        anchors = []
        for b in range(branches):
            key = (name, self.branch, b)  # sequential CFG: each branch call brings its own anchor
            if key not in self._anchor_cache:
                if local.numel() == 0:
                    raise DFRError(f"DFR: the model call holds frames {frames.tolist()} without the anchor "
                                   f"{geo.anchor} and no earlier call of step {step} provided its features")
                self._anchor_cache[key] = rows[b, int(local[0, 0])].detach()
            anchors.append(self._anchor_cache[key])
        size = tuple(features.shape[-2:])
        plan = geo.plan(size)
        sub = RenderPlan(plan.vert_idx[frames], plan.weights[frames], plan.coverage[frames], plan.num_verts)
        mesh = geo.mesh(size)
        vert = torch.cat([mesh.vertex_features(a.float()) for a in anchors], dim=1)  # [V, N·C]
        rendered, cov = apply_plan(sub, vert)  # [nf, N·C, h, w], [nf, 1, h, w]
        rendered = rendered.reshape(nf, branches, -1, *size).transpose(0, 1).to(features.dtype)
        covered = cov.to(features.device)[None] > 0.5  # [1, nf, 1, h, w]
        out = torch.where(covered, rendered.to(features.device), rows)  # exact copy outside the coverage
        if self.record is not None:
            self.record.append((step, name, frames.clone(), covered[0, :, 0].clone()))
        return out.reshape(features.shape)
