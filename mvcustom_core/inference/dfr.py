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

import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from mvcustom_core.backbone.hooks import FeatureHook, hookable_layers
from mvcustom_core.backbone.schedule import check_fraction, leading_steps
from mvcustom_core.cameras import CameraSet
from mvcustom_core.checks import about, check_shape
from mvcustom_core.depth.maps import DEPTH_KINDS
from mvcustom_core.inference.anchor_depth import AlignedDepth, AnchorDepthError, DepthKind, align_depth, field_depth
from mvcustom_core.memory import MAX_WORKSPACE, chunk_slices, dtype_bytes, rows_per_chunk
from mvcustom_core.ops import (DEFAULT_MAX_REL_DEPTH_JUMP, FeatureMesh, RenderPlan, apply_plan, build_feature_mesh,
                               plan_mesh_render, resample_depth)

__all__ = ["DFRPlan", "DFRError", "DFRWarning", "AnchorGeometry", "DFRHook", "default_dfr_layers", "anchor_index",
           "resolve_anchor_geometry", "align_anchor_depth", "dfr_previews", "DEFAULT_DFR_FRACTION",
           "DEFAULT_ONE_PASS_AT"]

DEFAULT_DFR_FRACTION = 0.7  # paper: the first 35 of 50 DDIM steps
# One pass: the anchor's x̂0 is decoded after this share of the steps (open choice, see one_pass.py).
DEFAULT_ONE_PASS_AT = 0.1


class DFRError(ValueError):
    """Inconsistent DFR settings (anchor out of range, no depth source, unknown layer)."""


class DFRWarning(UserWarning):
    """DFR runs, but with less than asked for (no anchor surface, or a depth scale not fitted to the field)."""


@dataclass(frozen=True)
class DFRPlan:
    """DFR settings; depth is resolved against the customization when sampling starts.

    Depth source, in order: ``depth`` (an estimate or depth image of the anchor frame: two passes); else
    ``depth_model`` (estimated inside the sampler from the anchor's x̂0: one pass); else the customized
    FeatureNeRF's expected depth (subject only).

    Attributes:
        anchor: anchor frame index (negative counts from the end); None = middle frame ``F // 2``.
        depth: optional ``[H, W]`` raw anchor depth values of kind ``depth_kind``.
        depth_valid: ``[H, W]`` bool, the pixels of ``depth`` that carry depth (None: all finite ones).
        depth_kind: ``"metric"`` (z = s·x: ZoeDepth, metric Depth Anything), ``"relative"`` (z = s·x + b) or
            ``"disparity"`` (1/z = s·x + b: Depth Anything, MiDaS); see :mod:`mvcustom_core.depth.maps`.
        depth_model: a :class:`~mvcustom_core.depth.DepthModel` for the one-pass mode (without ``depth``).
        one_pass_at: one pass: share of the steps after which the anchor's x̂0 is decoded and its depth
            estimated; DFR acts from the next step on.
        scale, shift: manual alignment; None = robust least squares against the field's depth on its opaque
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
    depth_valid: Tensor | None = None
    depth_kind: DepthKind = "disparity"
    depth_model: Any = None
    one_pass_at: float = DEFAULT_ONE_PASS_AT
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
            dims = check_shape(self.depth, "H W", "DFR depth")
            if self.depth_valid is not None:
                check_shape(self.depth_valid, f"{dims['H']} {dims['W']}", "DFR depth valid mask")
        if self.depth_kind not in DEPTH_KINDS:
            raise DFRError(f"depth_kind must be one of {DEPTH_KINDS}, got {self.depth_kind!r}")
        if not 0.0 <= self.one_pass_at < 1.0:
            raise DFRError(f"one_pass_at must be a share of the steps in [0, 1), got {self.one_pass_at}")

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
    """Outputs of the last two decoder blocks that upsample (SD1.5: ``up_blocks.1``, ``up_blocks.2``).

    The paper does not say which layers (method.md §7.2); these are the decoder's first features at half-latent and at
    latent resolution (32² and 64² for a 64² latent). A UNet with two levels has only one upsampling block, whose
    output is at latent resolution, so it gets that one layer.
    """
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


def _at_centres(values: Tensor, valid: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """``[H, W]`` values sampled bilinearly at the pixel centres of an ``(h, w)`` grid over the same image.

    The coarse pixel centre ``(j + ½)·W/w`` falls between fine pixel centres; sampling there (rather than taking
    the nearest fine pixel, half a fine pixel off) keeps the reference and the depth at the same point, so a
    smooth surface gives no systematic offset to the fit. A sample is valid only if its four fine neighbours
    are (no mixing with invalid pixels; across a silhouette it mixes surfaces, which the robust fit rejects).

    Returns:
        ``([h, w] values, [h, w] bool valid)``.
    """
    grid_y = (torch.arange(size[0], device=values.device, dtype=torch.float32) + 0.5) / size[0] * 2 - 1
    grid_x = (torch.arange(size[1], device=values.device, dtype=torch.float32) + 0.5) / size[1] * 2 - 1
    grid = torch.stack(torch.meshgrid(grid_x, grid_y, indexing="xy"), dim=-1)[None]  # [1, h, w, 2] (x, y)
    both = torch.stack([torch.where(valid, values, torch.zeros_like(values)), valid.to(values.dtype)])[None]
    out = torch.nn.functional.grid_sample(both.float(), grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)[0]
    return out[0], out[1] > 1 - 1e-6


def resolve_anchor_geometry(
    plan: DFRPlan,
    cams: CameraSet,
    *,
    unet: torch.nn.Module | None = None,
    pose_context=None,
) -> tuple[AnchorGeometry, AlignedDepth | None]:
    """Turn a :class:`DFRPlan` with ``depth`` (or none: field depth) into anchor geometry for the trajectory ``cams``.

    Depth: the plan's depth aligned by its kind to the field's expected depth (needs ``unet`` with pose blocks
    and ``pose_context``; fitted on the field's latent-resolution render, opaque pixels only), or to manual
    scale/shift, or to the anchor's distance to the origin; without a depth, the field's depth itself
    at latent resolution. (One pass: :mod:`mvcustom_core.inference.one_pass` fills ``depth`` mid-sampling.)

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
            raise DFRError("DFR without an anchor depth uses the customization's FeatureNeRF depth: connect a "
                           "customization, or a depth (estimate of the anchor frame) or a depth model")
        depth, opacity = field_depth(unet, pose_context, anchor_cam, field_size,
                                     opacity_threshold=plan.opacity_threshold)
        if not (depth > 0).any():
            # Not an error: a field trained briefly has lowered its density everywhere toward the mean mask value
            # before it separates subject from background (the zero-initialised density starts as opaque fog), so
            # it sees no surface yet. The anchor then carries nothing; the other frames are generated, not copied.
            warnings.warn(DFRWarning(
                f"the customization's FeatureNeRF is transparent from the anchor view (highest opacity "
                f"{float(opacity.max()):.2f}, surface needs > {plan.opacity_threshold}), as after too few training "
                "steps: DFR has no anchor surface to carry into the other frames and latent completion treats "
                "them as unseen; train longer or give an anchor depth image"))
        return AnchorGeometry(a, cams, depth, plan.max_rel_depth_jump, plan.guard_silhouettes), None
    reference = trusted = None
    if plan.scale is None and has_field:
        reference, opacity = field_depth(unet, pose_context, anchor_cam, field_size,
                                         opacity_threshold=plan.opacity_threshold)
        trusted = opacity > plan.opacity_threshold
    aligned = align_anchor_depth(plan, cams, reference, trusted)
    return AnchorGeometry(a, cams, aligned.depth, plan.max_rel_depth_jump, plan.guard_silhouettes), aligned


def align_anchor_depth(plan: DFRPlan, cams: CameraSet, reference: Tensor | None = None,
                       trusted: Tensor | None = None) -> AlignedDepth:
    """The plan's anchor depth in scene z-depth (see :mod:`~mvcustom_core.inference.anchor_depth`).

    Args:
        plan: with ``depth`` ``[H, W]`` (and ``depth_valid``, ``depth_kind``, manual ``scale``/``shift``).
        cams: the trajectory (the anchor camera's distance to the origin is the fallback's median depth).
        reference: ``[h, w]`` z-depth of the anchor view on any grid (the field's, at latent resolution); the
            depth is sampled at its pixel centres for the fit and the fit then maps the full map.
        trusted: ``[h, w]`` bool, reference pixels to fit on (the field's opaque pixels). Too few to fit (an early
            field, transparent from the anchor): the median depth goes to the anchor camera's distance to the
            origin, as without a customization, with a :class:`DFRWarning`.
    """
    if plan.depth is None:
        raise DFRError("align_anchor_depth needs a plan with an anchor depth")
    raw = plan.depth.to(device=cams.K.device, dtype=torch.float32)
    valid = torch.isfinite(raw) if plan.depth_valid is None else plan.depth_valid.to(raw.device, torch.bool)
    if plan.scale is None and reference is not None:
        samples, sampled_valid = _at_centres(raw, valid, tuple(reference.shape))
        try:
            fit = align_depth(samples, reference.to(raw), trusted, valid=sampled_valid, kind=plan.depth_kind)
        except AnchorDepthError as error:  # too few opaque field pixels to fit (an early field): as without one
            warnings.warn(DFRWarning(f"the anchor depth could not be fitted to the customization's FeatureNeRF "
                                     f"({error}); it is scaled to the anchor's distance to the subject instead"))
        else:
            aligned = align_depth(raw, kind=plan.depth_kind, valid=valid, scale=fit.scale, shift=fit.shift)
            return replace(aligned, fit=fit.fit, method="fit")
    center = float(cams[anchor_index(plan.anchor, cams.num_frames)].centers[0].norm())
    return align_depth(raw, kind=plan.depth_kind, valid=valid, scale=plan.scale, shift=plan.shift,
                       center_distance=center)


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
    ``geometry`` None replaces nothing until it is set (one pass: the anchor depth is estimated mid-sampling).
    """

    def __init__(self, geometry: AnchorGeometry | None, layers: list[str], steps: int) -> None:
        self.geometry = geometry
        self.num_steps = int(steps)
        self.frames: Tensor | None = None
        self._anchor_cache: dict[tuple[str, int], Tensor] = {}
        self._cache_step = -1
        self.record: list | None = None
        self.workspace: int | None = None  # scratch bytes of one chunk of frames (None: memory.MAX_WORKSPACE)
        super().__init__(layers, self._replace)

    def install(self, unet: torch.nn.Module) -> "DFRHook":
        """Install for one sampling run; anchor features cached by an earlier run (same step index) are dropped."""
        self._anchor_cache, self._cache_step = {}, -1
        return super().install(unet)

    def _replace(self, name: str, step: int, features: Tensor) -> Tensor | None:
        if step >= self.num_steps or step < 0 or self.geometry is None:
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
                # A copy: a view would keep this layer's features of every frame alive until the next step.
                self._anchor_cache[key] = rows[b, int(local[0, 0])].detach().clone()
            anchors.append(self._anchor_cache[key])
        size = tuple(features.shape[-2:])
        plan = geo.plan(size)
        mesh = geo.mesh(size)
        vert = torch.cat([mesh.vertex_features(a.float()) for a in anchors], dim=1)  # [V, N·C]
        out = torch.empty_like(rows)
        covered_rows = []
        # Frames in chunks: one chunk's rendered features (float32) and blend stay within the workspace.
        per_frame = features[0].numel() * branches * (dtype_bytes(torch.float32) + 2 * features.element_size())
        workspace = MAX_WORKSPACE if self.workspace is None else self.workspace
        for sl in chunk_slices(nf, rows_per_chunk(nf, per_frame, workspace)):
            ids = frames[sl]
            sub = RenderPlan(plan.vert_idx[ids], plan.weights[ids], plan.coverage[ids], plan.num_verts)
            rendered, cov = apply_plan(sub, vert)  # [n, N·C, h, w], [n, 1, h, w]
            rendered = rendered.reshape(len(ids), branches, -1, *size).transpose(0, 1)
            covered = cov.to(features.device)[None] > 0.5  # [1, n, 1, h, w]
            # exact copy outside the coverage
            out[:, sl] = torch.where(covered, rendered.to(device=features.device, dtype=features.dtype), rows[:, sl])
            covered_rows.append(covered[0, :, 0])
        if self.record is not None:
            self.record.append((step, name, frames.clone(), torch.cat(covered_rows).clone()))
        return out.reshape(features.shape)
