"""Pose-conditioned transformer blocks: FeatureNeRF fused into the UNet's spatial transformer blocks.

Placement (CustomDiffusion360, which MVCustom extends; method.md §4.1)::

    x = x + SelfAttn(LN1(x))
    x = x + TextCrossAttn(LN2(x), text)
    if pose blocks are active:
        Fy = FeatureNeRF(reference tokens, reference cameras, target camera, text)
        x  = W_fuse · [x ‖ Fy]              # Linear(2C → C), no bias, initialised [I | 0]
    x = x + FFN(LN3(x))

The fused output replaces ``x`` (no residual); with ``W_fuse = [I | 0]`` the pretrained path is
unchanged at initialisation. FeatureNeRF's point features pass through this block's own text
cross-attention (``attn2`` after ``norm2``) before compositing, and the whole branch runs in float32.

A :class:`PoseContext` shared by all wrapped blocks carries what a block cannot see from its
arguments: the target camera of every row of the batch, the reference token bank, the grid size of
the block's token map, and the mode:

* ``"off"``: every wrapped block is exactly the original block (bit for bit).
* ``"capture"``: the original block runs and its output tokens are stored as that block's reference
  tokens (the reference stream of method.md §4.2: reference images through the same UNet).
* ``"render"``: the fused forward above, with FeatureNeRF outputs kept in ``context.outputs`` (opacity,
  expected depth, RGB) for the losses and for depth-aware feature rendering.

Inference additions (method.md §7.1, §4.8):

* **Pose-block ratio** r: with ``context.active_steps = ⌊r·S + ½⌋`` set, the blocks fuse only while
  ``context.step < active_steps`` and are the plain blocks afterwards (paper: 100 % by default; 75/50/25 %
  trade reference shape for text-driven shape). The sampler reports the step through
  :func:`pose_step_relay`, a no-op feature hook whose ``step``/``branch`` the sampler sets before each call.
* **First-step cache** of the rendered map Fy (``context.cache_rendered``): Fy depends only on the cached
  reference tokens, the target cameras, the text and the grid, never on the noisy target tokens, so for a
  fixed batch and prompt the cache is exact (CustomDiffusion360; method.md §4.8). Since
  ``W_fuse · [x ‖ Fy] = W_x · x + W_y · Fy``, the cache keeps the fused term ``W_y · Fy`` (in the UNet's dtype),
  and every call, cached or not, computes the block the same way. The cache key is
  (block, CFG branch, ``context.target_key``, rows, grid); it holds for one run (one prompt and reference
  bank): call :meth:`PoseContext.clear_cache` between runs, and set ``target_key`` when target cameras
  change mid-run (sampling windows).

Row layout: hidden states are ``[R, h·w, C]`` with ``R = B·F`` rows ordered branch-major (``row = b·F + f``,
the layout of CFG batches ``[uncond frames…, cond frames…]``); row ``r`` is target frame ``r % F``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvcustom_core.cameras import CameraSet
from mvcustom_core.customization.featurenerf import FeatureNeRF, FeatureNeRFConfig, FeatureNeRFOutput
from mvcustom_core.backbone.hooks import FeatureHook
from mvcustom_core.backbone.schedule import check_fraction, leading_steps

__all__ = ["PoseContext", "PoseConditionedBlock", "install_pose_blocks", "pose_blocks", "remove_pose_blocks",
           "spatial_transformer_blocks", "select_blocks", "PoseBlockError", "pose_step_relay", "active_pose_steps",
           "install_prerender", "block_grid"]

Mode = Literal["off", "capture", "render"]


class PoseBlockError(ValueError):
    """Pose blocks used with inconsistent cameras, references or backbone."""


@dataclass
class PoseContext:
    """State shared by all pose-conditioned blocks of one UNet (see the module docstring).

    Attributes:
        mode: ``"off"``, ``"capture"`` or ``"render"``.
        target_cams: F target cameras (``render``), in normalized scene units.
        ref_cams: N reference cameras.
        references: block name → reference tokens ``[Bb, N, C, h, w]``; ``Bb`` = 1 (shared by all
            branches) or one entry per CFG branch (branch ``b`` uses entry ``min(b, Bb - 1)``; a call whose
            ``branch`` is ``"cond"`` alone — CFG 1 or sequential CFG — uses the last entry).
        outputs: block name → list of FeatureNeRF outputs of the last forward, one per branch.
        jitter: stratified jitter of ray samples (training) or fixed bins (inference).
        generator: random source of the jitter.
        ray_chunk: rays rendered at once (overrides ``workspace``).
        workspace: scratch bytes one FeatureNeRF chunk may use (:mod:`mvcustom_core.memory`); None = the default cap.
        keep_outputs: keep each render's FeatureNeRF outputs in ``outputs`` (losses, previews); the sampler
            turns it off so the Fy cache holds only the fused term.
        step: the sampler's 0-based step index (set by :func:`pose_step_relay`).
        branch: the CFG branch label of the current model call (``"uncond+cond"``, ``"uncond"``, ``"cond"``).
        active_steps: fuse only while ``step < active_steps``; None = every step (pose-block ratio 1).
        cache_rendered: reuse each block's first rendered Fy for later calls with the same key.
        cache_dtype: dtype the fused term ``W_y · Fy`` is rounded to, cached or not (None: the UNet's);
            float16 halves the cache of a float32 UNet (docs/performance.md measures the effect).
        target_key: hashable id of ``target_cams`` for the cache (change it when the cameras change).
    """

    mode: Mode = "off"
    target_cams: CameraSet | None = None
    ref_cams: CameraSet | None = None
    references: dict[str, Tensor] = field(default_factory=dict)
    outputs: dict[str, list[FeatureNeRFOutput]] = field(default_factory=dict)
    jitter: bool = False
    generator: torch.Generator | None = None
    ray_chunk: int | None = None
    workspace: int | None = None
    keep_outputs: bool = True
    step: int = 0
    branch: str = "uncond+cond"
    active_steps: int | None = None
    cache_rendered: bool = False
    cache_dtype: torch.dtype | None = None
    target_key: Hashable = None
    _grid: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    _capture: dict[str, list[Tensor]] = field(default_factory=dict, repr=False)
    _rendered: dict[tuple, tuple[Tensor, list[FeatureNeRFOutput]]] = field(default_factory=dict, repr=False)

    def pose_active(self) -> bool:
        """Whether the pose blocks fuse at the current step (pose-block ratio)."""
        return self.active_steps is None or self.step < self.active_steps

    def clear_cache(self) -> None:
        """Drop cached Fy maps (call between runs: new prompt, references or cameras)."""
        self._rendered = {}

    def begin_capture(self) -> None:
        """Start recording reference tokens; rows of each forward are reference views in order."""
        self.mode = "capture"
        self._capture = {}

    def end_capture(self, ref_cams: CameraSet, branches: int = 1) -> None:
        """Turn captured rows ``[Bb·N, h·w, C]`` (accumulated over calls) into the reference bank."""
        n = ref_cams.num_frames
        bank = {}
        for name, parts in self._capture.items():
            rows = torch.cat(parts)
            if rows.shape[0] != branches * n:
                raise PoseBlockError(f"captured {rows.shape[0]} reference rows at {name}, expected "
                                     f"{branches} branch(es) × {n} reference cameras")
            h, w = self._grid[name]
            bank[name] = rows.reshape(branches, n, h, w, -1).permute(0, 1, 4, 2, 3).contiguous()
        self.references, self.ref_cams, self.mode, self._capture = bank, ref_cams, "off", {}

    def frame_count(self) -> int:
        if self.target_cams is None:
            raise PoseBlockError("pose blocks are in 'render' mode but no target cameras were set")
        return self.target_cams.num_frames


class Fusion(nn.Linear):
    """``W_fuse · [x ‖ Fy]`` (Linear(2C → C), no bias, initialised ``[I | 0]``) computed as ``W_x · x + W_y · Fy``.

    The two halves are separate products so that the second one, which depends only on the rendered map, can
    be cached (:meth:`project_rendered`) while every call, cached or not, adds the same two terms.
    """

    def __init__(self, width: int) -> None:
        super().__init__(2 * width, width, bias=False)
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, :width].copy_(torch.eye(width))

    def project_rendered(self, fy: Tensor) -> Tensor:
        """``W_y · Fy``: ``[..., C] -> [..., C]``."""
        return F.linear(fy, self.weight[:, self.out_features:])

    def forward(self, x: Tensor, rendered_term: Tensor) -> Tensor:  # type: ignore[override]
        """``W_x · x + rendered_term`` with ``rendered_term = project_rendered(Fy)``."""
        return F.linear(x, self.weight[:, :self.out_features]) + rendered_term


class PoseConditionedBlock(nn.Module):
    """A diffusers ``BasicTransformerBlock`` (``norm_type="layer_norm"``) with a FeatureNeRF branch.

    Args:
        block: the original block; kept as a submodule, its parameters untouched.
        name: the block's path in the UNet (its key in the reference bank).
        context: the shared :class:`PoseContext`.
        config: FeatureNeRF configuration (``channels`` must equal the block width).
    """

    def __init__(self, block: nn.Module, name: str, context: PoseContext, config: FeatureNeRFConfig) -> None:
        super().__init__()
        if getattr(block, "norm_type", None) != "layer_norm" or getattr(block, "attn2", None) is None:
            raise PoseBlockError(f"{name}: pose blocks need a layer-norm transformer block with text "
                                 f"cross-attention (SD1.x), got norm_type={getattr(block, 'norm_type', None)!r}")
        width = block.norm1.normalized_shape[0]
        if config.channels != width:
            raise PoseBlockError(f"{name}: FeatureNeRF has {config.channels} channels, the block {width}")
        self.block = block
        self.name = name
        self.context = context
        self.featurenerf = FeatureNeRF(config)
        self.fuse = Fusion(width)
        self.grid_hook: torch.utils.hooks.RemovableHandle | None = None

    def own_state(self) -> dict[str, Tensor]:
        """Detached copies of the block's own weights (FeatureNeRF, fusion): never the wrapped block's
        (``block.*``), which are the backbone's."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("block.")}

    def load_own_state(self, state: Mapping[str, Tensor]) -> Any:
        """Copy :meth:`own_state` weights into the block (``load_state_dict(strict=False)``'s result).

        Raises:
            PoseBlockError: ``state`` holds keys of the wrapped block. On a per-run view
                (:func:`~mvcustom_core.backbone.module_view.module_view`) its tensors are the shared backbone's
                memory: loading them would change the model every other run uses.
        """
        foreign = sorted(k for k in state if k.startswith("block."))
        if foreign:
            raise PoseBlockError(f"{self.name}: the weights hold {len(foreign)} of the wrapped transformer block's "
                                 f"own tensors, such as {foreign[0]!r}; pose weights never include the backbone's")
        return self.load_state_dict(state, strict=False)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None,
                encoder_hidden_states: Tensor | None = None, encoder_attention_mask: Tensor | None = None,
                timestep: Tensor | None = None, cross_attention_kwargs: dict[str, Any] | None = None,
                class_labels: Tensor | None = None, added_cond_kwargs: dict | None = None) -> Tensor:
        ctx = self.context
        if ctx.mode != "render" or self.name not in ctx.references or not ctx.pose_active():
            out = self.block(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                             timestep, cross_attention_kwargs, class_labels, added_cond_kwargs)
            if ctx.mode == "capture":
                ctx._capture.setdefault(self.name, []).append(out.detach())
            return out

        blk = self.block
        kwargs = dict(cross_attention_kwargs or {})
        x = hidden_states + blk.attn1(blk.norm1(hidden_states), attention_mask=attention_mask, **kwargs)
        x = x + blk.attn2(blk.norm2(x), encoder_hidden_states=encoder_hidden_states,
                          attention_mask=encoder_attention_mask, **kwargs)
        term = self.rendered_term(x.shape[0], x.dtype, x.device, self.context._grid[self.name],
                                  encoder_hidden_states, encoder_attention_mask, kwargs)
        x = self.fuse(x, term.to(x.dtype))
        return x + blk.ff(blk.norm3(x))

    def rendered_term(self, rows: int, dtype: torch.dtype, device: torch.device, grid: tuple[int, int],
                      text: Tensor | None, text_mask: Tensor | None = None, kwargs: dict | None = None) -> Tensor:
        """``W_y · Fy`` ``[R, h·w, C]`` for R = B·F rows of hidden states of ``dtype`` on an ``(h, w)`` grid, the B
        branches rendered together (:meth:`FeatureNeRF.render_branches`), rounded to ``context.cache_dtype``;
        cached for later calls when ``context.cache_rendered`` (method.md §4.8).

        Args:
            text, text_mask: the block's ``encoder_hidden_states`` ``[R, L, D]`` and its mask.
        """
        ctx = self.context
        kwargs = kwargs or {}
        n_frames = ctx.frame_count()
        if rows % n_frames:
            raise PoseBlockError(f"{self.name}: batch of {rows} rows is not a multiple of {n_frames} target frames")
        h, w = grid
        key = None
        if ctx.cache_rendered:
            # Valid for one run (fixed prompt and references): callers clear it between runs.
            key = (self.name, ctx.branch, ctx.target_key, rows, (h, w))
            if key in ctx._rendered:
                term, outs = ctx._rendered[key]
                if ctx.keep_outputs:
                    ctx.outputs[self.name] = outs
                return term
        bank = ctx.references[self.name]
        blk = self.block

        def text_fn_of(branch: int):
            sl = slice(branch * n_frames, (branch + 1) * n_frames)
            branch_text = None if text is None else text[sl]
            branch_mask = None if text_mask is None else text_mask[sl]

            def text_fn(g: Tensor, frame: int) -> Tensor:
                # One frame's point features [P, C] through this block's own text cross-attention (method.md §4.1).
                states = None if branch_text is None else branch_text[frame:frame + 1].to(dtype)
                mask = None if branch_mask is None else branch_mask[frame:frame + 1]
                return blk.attn2(blk.norm2(g.to(dtype))[None], encoder_hidden_states=states, attention_mask=mask,
                                 **kwargs)[0].float()
            return text_fn

        # Entry per CFG branch ([uncond, cond]); a call that runs only the cond branch still uses cond's.
        n_branches = rows // n_frames
        entries = [bank.shape[0] - 1 if ctx.branch == "cond" else min(b, bank.shape[0] - 1) for b in range(n_branches)]
        with torch.autocast(device_type=device.type, enabled=False):
            outputs = self.featurenerf.render_branches(
                bank[entries].float(), ctx.ref_cams, ctx.target_cams, (h, w),
                text_fns=[text_fn_of(b) for b in range(n_branches)], jitter=ctx.jitter, generator=ctx.generator,
                ray_chunk=ctx.ray_chunk, workspace=ctx.workspace)
        terms = [self.fuse.project_rendered(out.features.flatten(2).transpose(1, 2).to(dtype))  # [F, h·w, C]
                 .to(ctx.cache_dtype or dtype) for out in outputs]
        if not ctx.keep_outputs:
            outputs = []
        term = torch.cat(terms) if len(terms) > 1 else terms[0]
        if ctx.keep_outputs:
            ctx.outputs[self.name] = outputs
        if key is not None:
            ctx._rendered[key] = (term, outputs)
        return term


def spatial_transformer_blocks(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, block)`` of every spatial ``BasicTransformerBlock`` in UNet order (motion modules excluded)."""
    found = []
    for name, module in unet.named_modules():
        if ".attentions." in f".{name}" and name.rsplit(".", 2)[-2] == "transformer_blocks" \
                and "motion_modules" not in name and hasattr(module, "attn2"):
            found.append((name, module))
    return found


def select_blocks(names: list[str], which: str = "every_other") -> list[str]:
    """Pick the pose-conditioned blocks: ``"every_other"`` (default, from the first), ``"all"``, or
    a comma-separated list of block names or indices into ``names``."""
    if which == "all":
        return list(names)
    if which == "every_other":
        return names[::2]
    chosen = []
    for item in (s.strip() for s in which.split(",") if s.strip()):
        if item.isdigit() and int(item) < len(names):
            chosen.append(names[int(item)])
        elif item in names:
            chosen.append(item)
        else:
            raise PoseBlockError(f"pose block {item!r} is neither an index < {len(names)} nor a block name")
    return chosen


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return root.get_submodule(path), leaf


def install_pose_blocks(unet: nn.Module, context: PoseContext, which: str = "every_other",
                        config_overrides: dict | None = None) -> list[str]:
    """Wrap the chosen spatial transformer blocks of ``unet`` in :class:`PoseConditionedBlock` (in place).

    Each wrapped block's token grid size is recorded by a pre-hook on its ``Transformer2DModel`` parent.

    Returns:
        the names of the wrapped blocks (keys of ``context.references``).
    """
    names = [n for n, _ in spatial_transformer_blocks(unet)]
    if not names:
        raise PoseBlockError("the UNet has no spatial transformer blocks to condition on pose")
    chosen = select_blocks(names, which)
    for name in chosen:
        parent, leaf = _parent(unet, name)
        block = parent[int(leaf)]
        cfg = FeatureNeRFConfig(channels=block.norm1.normalized_shape[0], **(config_overrides or {}))
        wrapped = PoseConditionedBlock(block, name, context, cfg).to(next(block.parameters()).device)
        parent[int(leaf)] = wrapped
        transformer = unet.get_submodule(name.rsplit(".transformer_blocks.", 1)[0])

        def record_grid(_module, args, kwargs, _name=name):
            sample = args[0] if args else kwargs["hidden_states"]
            context._grid[_name] = (sample.shape[-2], sample.shape[-1])

        wrapped.grid_hook = transformer.register_forward_pre_hook(record_grid, with_kwargs=True)
    return chosen


def block_grid(unet: nn.Module, name: str, latent_size: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` token grid of the transformer block at ``name`` when the UNet's input is ``latent_size``.

    Down block i and the up block working at the same level see the latent halved i times by diffusers'
    downsamplers (stride-2 3×3 convolutions with padding 1: ``⌈h / 2⌉``); the mid block the lowest level.
    """
    parts = name.split(".")
    n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
    if parts[0] == "down_blocks":
        level = int(parts[1])
    elif parts[0] == "up_blocks":
        level = n_up - 1 - int(parts[1])
    elif parts[0] == "mid_block":
        level = n_down - 1
    else:
        raise PoseBlockError(f"cannot tell the resolution level of {name!r}")
    h, w = latent_size
    for _ in range(level):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def install_prerender(unet: nn.Module, context: PoseContext) -> torch.utils.hooks.RemovableHandle:
    """Render every pose block's ``W_y · Fy`` before a render-mode UNet call builds any activation (when the Fy
    cache is on), so the render's scratch never adds to the UNet's own peak; the blocks then find it cached.

    The terms are exactly what the blocks would compute: same rows, text states, grids and code path
    (:meth:`PoseConditionedBlock.rendered_term`). A call with an attention mask is left to the blocks.
    """
    blocks = list(pose_blocks(unet))

    def prerender(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        ctx = context
        if ctx.mode != "render" or not ctx.cache_rendered or not ctx.pose_active():
            return
        if kwargs.get("encoder_attention_mask") is not None or kwargs.get("cross_attention_kwargs"):
            return
        sample = args[0] if args else kwargs["sample"]
        text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
        rows = sample.shape[0] * (sample.shape[2] if sample.dim() == 5 else 1)  # video [N, C, F, h, w] or images
        param = next(unet.parameters())
        for block in blocks:
            if block.name in ctx.references:
                grid = block_grid(unet, block.name, tuple(sample.shape[-2:]))
                block.rendered_term(rows, param.dtype, param.device, grid, text)

    return unet.register_forward_pre_hook(prerender, with_kwargs=True)


def pose_blocks(unet: nn.Module) -> Iterator[PoseConditionedBlock]:
    """The installed pose-conditioned blocks, in UNet order."""
    return (m for m in unet.modules() if isinstance(m, PoseConditionedBlock))


def remove_pose_blocks(unet: nn.Module) -> None:
    """Put the original blocks back and remove the grid pre-hooks."""
    for name, module in list(unet.named_modules()):
        if isinstance(module, PoseConditionedBlock):
            module.grid_hook.remove()
            parent, leaf = _parent(unet, name)
            parent[int(leaf)] = module.block


def active_pose_steps(ratio: float, steps: int) -> int | None:
    """Pose-active steps for a pose-block ratio in [0, 1]: :func:`~mvcustom_core.backbone.schedule.leading_steps`,
    ``⌊ratio · steps + ½⌋`` (0.25 of 50 is 13, 0.75 is 38), the rule DFR and CLC fractions follow; None for
    ratio 1 (always on)."""
    try:
        check_fraction(ratio, "pose-block ratio")
    except ValueError as error:
        raise PoseBlockError(str(error)) from None
    return None if float(ratio) == 1.0 else leading_steps(ratio, steps)


class _PoseStepRelay(FeatureHook):
    """A feature hook that changes nothing and forwards the sampler's ``step``/``branch`` to a PoseContext."""

    def __init__(self, layer_names: list[str], context: PoseContext) -> None:
        self._context = context
        super().__init__(layer_names, lambda name, step, features: None)

    @property
    def step(self) -> int:
        return self._context.step

    @step.setter
    def step(self, value: int) -> None:
        self._context.step = int(value)

    @property
    def branch(self) -> str:
        return self._context.branch

    @branch.setter
    def branch(self, value: str) -> None:
        self._context.branch = value


def pose_step_relay(unet: nn.Module, context: PoseContext) -> FeatureHook:
    """A :class:`~mvcustom_core.backbone.hooks.FeatureHook` for ``sample(hooks=...)`` that keeps
    ``context.step`` and ``context.branch`` in sync with the sampler (it never alters features)."""
    names = [n for n, m in unet.named_modules() if isinstance(m, PoseConditionedBlock)]
    if not names:
        raise PoseBlockError("pose_step_relay: the UNet has no pose-conditioned blocks installed")
    return _PoseStepRelay(names, context)
