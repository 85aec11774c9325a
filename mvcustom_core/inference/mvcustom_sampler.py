"""The MVCustom sampler: pose-conditioned blocks + DFR + CLC around the plain sampler core (method.md §7.4).

Per step ``i`` of ``S`` (DDIM, CFG 5 by default)::

    pose_on = i < ⌊r · S + ½⌋                   pose-block ratio r (default 1.0: every step)
    dfr_on  = i < ⌊f_dfr · S + ½⌋               feature replacement at the hooked layers (DFRHook; f_dfr = 0.7)
    ε       = CFG(unet(x_t, t, text, pose_on, dfr_on))
    x_{t-1} = ddim_step(ε, t, x_t)
    if i < ⌊f_clc · S + ½⌋: refresh the anchor-invisible latents (CLCHook; f_clc = 0.1)

One rounding rule for the three fractions (:func:`~mvcustom_core.backbone.schedule.leading_steps`), so each means the
same part of the schedule at any step count. Plans saved with an absolute DFR K or a CLC timestep τ keep those.

Everything is installed as hooks of :func:`mvcustom_core.backbone.sampler.sample` (the sampler knows
nothing of DFR or CLC). With no customization, no DFR and no CLC the call *is* the plain sampler, bit for
bit. Trajectories longer than ``window`` frames run through :class:`~mvcustom_core.inference.windows.WindowedUNet`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from mvcustom_core.backbone.dense_attention import set_dense_chunk_elements
from mvcustom_core.backbone.sampler import sample
from mvcustom_core.cameras import CameraSet
from mvcustom_core.checks import within
from mvcustom_core.customization.pose_block import (PoseBlockError, PoseContext, active_pose_steps,
                                                    install_prerender, pose_blocks, pose_step_relay)
from mvcustom_core.inference.clc import CLCError, CLCHook, CLCPlan, keep_mask
from mvcustom_core.inference.dfr import (AnchorGeometry, DFRError, DFRHook, DFRPlan, anchor_index, dfr_layers,
                                         resolve_anchor_geometry)
from mvcustom_core.inference.one_pass import OnePassAnchor, one_pass_bytes
from mvcustom_core.inference.windows import WindowedUNet, plan_windows
from mvcustom_core.memory import MemoryBudget, resolve_budget
from mvcustom_core.memory_estimate import RunMemory, plan_run_memory

__all__ = ["mvcustom_sample", "MVCustomRun", "prepare_run", "check_trajectory_in_scene", "DEFAULT_CFG", "DEFAULT_WINDOW", "DEFAULT_OVERLAP"]

DEFAULT_CFG = 5.0  # paper: 3 blurrier, 8 more flicker
DEFAULT_WINDOW = 16
DEFAULT_OVERLAP = 4


class MVCustomRun:
    """Hooks and model of one MVCustom sampling call (built by :func:`prepare_run`; inspect in tests).

    Attributes:
        model: the UNet or its :class:`WindowedUNet`.
        hooks: for ``sample(hooks=...)``.
        geometry: anchor geometry (None without DFR; one pass: None until the sampler built it).
        dfr, clc: the hooks (None when off).
        one_pass: the :class:`OnePassAnchor` hook of a one-pass plan (None otherwise).
        windows: frame windows.
        memory: the peak estimate and the choices made from it (CFG batching, chunk workspace).
    """

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.hooks: list[Any] = []
        self.geometry: AnchorGeometry | None = None
        self.dfr: DFRHook | None = None
        self.clc: CLCHook | None = None
        self.one_pass: OnePassAnchor | None = None
        self.windows: list[list[int]] = []
        self.memory: RunMemory | None = None
        self.dense_chunk_elements: int | None = None  # dense attention's chunk budget before the run
        self.unet: torch.nn.Module | None = None
        self.prerender: Any = None  # the pose blocks' pre-render hook on the UNet

    def release(self) -> None:
        """Undo what :func:`prepare_run` set on the UNet for this run (pre-render hook, dense attention chunks)."""
        if self.prerender is not None:
            self.prerender.remove()
            self.prerender = None
        if self.dense_chunk_elements is not None:
            set_dense_chunk_elements(self.unet, self.dense_chunk_elements)
            self.dense_chunk_elements = None


def check_trajectory_in_scene(unet: torch.nn.Module, cams: CameraSet) -> None:
    """Refuse target cameras whose rays cannot reach the subject: farther from the origin than FeatureNeRF's ``far``.

    Customizations live in a normalized scene frame (subject at the origin, reference cameras within radius 1;
    method.md §4.3) and the field samples rays on [near, far] = [0, 2] from each target camera, so a camera
    farther than ``far`` from the origin renders nothing of the subject: the trajectory was not normalized.
    """
    far = min(b.featurenerf.config.far for b in pose_blocks(unet))
    dist = cams.centers.norm(dim=-1)
    bad = (dist > far).nonzero().flatten().tolist()
    if bad:
        raise PoseBlockError(f"trajectory frame {bad[0]} is {float(dist[bad[0]]):.3g} units from the scene origin, "
                             f"beyond the customization's FeatureNeRF far plane ({far:g}); put the trajectory in the "
                             "customization's normalized frame (subject at the origin, cameras within ~1-2 units)")


def _pose_cache_dtype(choice: torch.dtype | str | None, unet_dtype: torch.dtype) -> torch.dtype | None:
    if choice == "auto":
        return torch.float16 if unet_dtype == torch.float32 else None
    if choice is None or isinstance(choice, torch.dtype):
        return choice
    raise ValueError(f"pose_cache_dtype must be 'auto', None or a torch dtype, got {choice!r}")


def _reset_pose_context(pose_context: PoseContext | None) -> None:
    """Put the customization's context back as it was before :func:`prepare_run` (after a run or a failed set-up)."""
    if pose_context is None:
        return
    pose_context.clear_cache()
    pose_context.mode = "off"
    pose_context.cache_rendered = False  # a later render with other cameras must not reuse this run's Fy
    pose_context.active_steps = None
    pose_context.target_key = None
    pose_context.keep_outputs = True
    pose_context.workspace = None
    pose_context.cache_dtype = None


def prepare_run(
    unet: torch.nn.Module,
    cams: CameraSet,
    *,
    pose_context: PoseContext | None = None,
    dfr: DFRPlan | None = None,
    clc: CLCPlan | None = None,
    steps: int = 50,
    pose_ratio: float = 1.0,
    window: int = DEFAULT_WINDOW,
    overlap: int = DEFAULT_OVERLAP,
    geometry: AnchorGeometry | None = None,
    cache_pose_features: bool = True,
    guided: bool = True,
    memory_budget: MemoryBudget | float | None = None,
    pose_cache_dtype: torch.dtype | str | None = "auto",
    vae: torch.nn.Module | None = None,
) -> MVCustomRun:
    """Build the model wrapper and hooks; sets up ``pose_context`` (render mode, cameras, ratio, cache).

    ``pose_cache_dtype``: dtype of the cached pose-block terms ``W_y · Fy``; ``"auto"`` = float16 for a float32
    UNet (half the cache; relative change of the final latents ~3e-5, docs/performance.md), else the UNet's;
    None = the UNet's.

    A DFR plan without a depth but with a depth model runs in one pass (:mod:`~mvcustom_core.inference.one_pass`):
    the geometry is built mid-sampling from the anchor's x̂0, decoded with ``vae``.

    Before any work the run's peak memory is estimated against ``memory_budget`` (a :class:`MemoryBudget`, GiB,
    or None = :func:`~mvcustom_core.memory.default_budget` of the UNet's device); that chooses CFG batching and
    the chunk workspace of FeatureNeRF, DFR, CLC and dense attention, or raises
    :class:`~mvcustom_core.memory.MemoryBudgetError` naming the inputs to change.
    """
    run = MVCustomRun()
    nf = cams.num_frames
    if clc is not None and dfr is None and geometry is None:
        raise CLCError("latent completion needs the anchor geometry of a DFR plan (connect a DFR plan; "
                       "a DFR fraction of 0 gives geometry without feature replacement)")
    layers: list[str] = []
    anchor = geometry.anchor if geometry is not None else None
    one_pass = dfr is not None and geometry is None and dfr.depth is None and dfr.depth_model is not None
    if dfr is not None:
        with within("dfr"):
            layers = dfr_layers(unet, dfr)
            anchor = anchor if anchor is not None else anchor_index(dfr.anchor, nf)
            if one_pass and vae is None:
                raise DFRError("a DFR plan with a depth model (one pass) decodes the anchor's x̂0 mid-sampling: "
                               "it needs the backbone's VAE")
    # Before the pose context is touched: a bad window / overlap must not leave it in render mode.
    run.windows = plan_windows(nf, window, overlap, anchor)

    has_pose = pose_context is not None and bool(pose_context.references)
    if has_pose and not any(True for _ in pose_blocks(unet)):
        raise PoseBlockError("the customization's pose context has a reference bank but the UNet has no pose "
                             "blocks installed (apply the customization to this backbone first)")
    device = next(unet.parameters()).device
    if not isinstance(memory_budget, MemoryBudget):
        memory_budget = resolve_budget(memory_budget, device)
    cache_dtype = _pose_cache_dtype(pose_cache_dtype, next(unet.parameters()).dtype)
    run.memory = plan_run_memory(unet, nf, cams.image_size, memory_budget, guided=guided,
                                 window=len(run.windows[0]), windows_total_frames=sum(map(len, run.windows)),
                                 pose_context=pose_context if has_pose else None, dfr_layers=len(layers),
                                 cache_dtype=cache_dtype,
                                 one_pass=one_pass_bytes(dfr, vae, cams.image_size) if one_pass else 0)
    # From here on the UNet and the pose context are set up for the run: an error puts them back.
    try:
        workspace = run.memory.workspace
        if pose_context is not None:
            pose_context.workspace = workspace
        run.unet = unet
        run.dense_chunk_elements = set_dense_chunk_elements(unet, workspace // (2 * 4))  # scores + softmax, fp32

        if dfr is not None and geometry is None and not one_pass:
            with within("dfr"):
                geometry = resolve_anchor_geometry(dfr, cams, unet=unet, pose_context=pose_context)[0]
        run.geometry = geometry
        if has_pose:
            check_trajectory_in_scene(unet, cams)
            pose_context.mode = "render"
            pose_context.target_cams = cams
            pose_context.target_key = None
            pose_context.jitter = False
            pose_context.active_steps = active_pose_steps(pose_ratio, steps)
            pose_context.cache_rendered = bool(cache_pose_features)
            pose_context.keep_outputs = False  # the Fy cache then holds only the fused term W_y · Fy
            pose_context.cache_dtype = cache_dtype
            pose_context.clear_cache()
            run.hooks.append(pose_step_relay(unet, pose_context))
            if cache_pose_features:
                run.prerender = install_prerender(unet, pose_context)

        if dfr is not None:
            run.dfr = DFRHook(geometry, layers, dfr.active_steps(steps))
            run.dfr.workspace = workspace
            run.hooks.append(run.dfr)

        if clc is not None:
            height, width = cams.image_size
            keep = None if one_pass else keep_mask(geometry.coverage((height // 8, width // 8)), geometry.anchor,
                                                   clc.erosion)
            run.clc = CLCHook(clc, keep)
            run.clc.workspace = workspace

        if one_pass:  # before CLC: it may act on the step the geometry is built at
            run.one_pass = OnePassAnchor(dfr, cams, vae=vae, dfr=run.dfr, clc=run.clc,
                                         clc_erosion=0 if clc is None else clc.erosion, unet=unet,
                                         pose_context=pose_context)
            run.hooks.append(run.one_pass)
        if run.clc is not None:
            run.hooks.append(run.clc)

        if len(run.windows) > 1:
            window_cams = {}

            def on_window(frames: Tensor | None) -> None:
                if run.dfr is not None:
                    run.dfr.frames = frames
                if has_pose:
                    key = None if frames is None else tuple(frames.tolist())
                    if key not in window_cams:
                        window_cams[key] = cams if frames is None else cams[frames]
                    pose_context.target_cams, pose_context.target_key = window_cams[key], key

            run.model = WindowedUNet(unet, run.windows, anchor, on_window)
        else:
            run.model = unet
    except BaseException:
        run.release()
        _reset_pose_context(pose_context)
        raise
    return run


def mvcustom_sample(
    unet: torch.nn.Module,
    cond: Tensor,
    uncond: Tensor | None,
    cams: CameraSet,
    *,
    pose_context: PoseContext | None = None,
    dfr: DFRPlan | None = None,
    clc: CLCPlan | None = None,
    seed: int = 0,
    steps: int = 50,
    cfg: float = DEFAULT_CFG,
    pose_ratio: float = 1.0,
    window: int = DEFAULT_WINDOW,
    overlap: int = DEFAULT_OVERLAP,
    scheduler: str = "ddim",
    scheduler_config: dict | None = None,
    callback: Callable[[int, int, Tensor], None] | None = None,
    interrupt: Callable[[], None] | None = None,
    run: MVCustomRun | None = None,
    cache_pose_features: bool = True,
    memory_budget: MemoryBudget | float | None = None,
    pose_cache_dtype: torch.dtype | str | None = "auto",
    vae: torch.nn.Module | None = None,
) -> Tensor:
    """Generate one latent frame per camera of the trajectory.

    Args:
        unet: a ``UNetMotionModel`` (with pose blocks installed when ``pose_context`` is given).
        cond, uncond: text states ``[1 | F, L, D]`` (CONDITIONING tensors).
        cams: the trajectory, F cameras in the customization's normalized scene frame; its ``image_size``
            is the output size (multiples of 8).
        pose_context: the customization's :class:`PoseContext` (reference bank); None = no pose blocks.
        dfr, clc: plans, each optional (CLC needs DFR's anchor geometry).
        seed, steps, cfg: as :func:`~mvcustom_core.backbone.sampler.sample`; CFG default 5 (paper).
        pose_ratio: pose blocks on the first ``⌊r·S + ½⌋`` steps (halves round up; ``leading_steps``).
        window, overlap: frames per model window and shared frames between windows.
        callback, interrupt: progress ``callback(step, total, x0)`` and interrupt check (raises).
        run: a prepared :class:`MVCustomRun` (tests inspect its hooks); default built here.
        cache_pose_features: render each pose block's Fy once and reuse it (exact; method.md §4.8).
        memory_budget, pose_cache_dtype: see :func:`prepare_run` (budget: a :class:`MemoryBudget`, GiB, or None =
            from the free memory).
        vae: the backbone's VAE, for a one-pass DFR plan (a depth model instead of a depth).

    Returns:
        latents ``[F, 4, H/8, W/8]`` in the diffusion space (× 0.18215), float32.
    """
    height, width = cams.image_size
    if run is None:
        run = prepare_run(unet, cams, pose_context=pose_context, dfr=dfr, clc=clc, steps=steps,
                          pose_ratio=pose_ratio, window=window, overlap=overlap,
                          cache_pose_features=cache_pose_features, guided=uncond is not None and cfg != 1.0,
                          memory_budget=memory_budget, pose_cache_dtype=pose_cache_dtype, vae=vae)
    hooks = list(run.hooks)
    try:
        return sample(run.model, cond, uncond, cams.num_frames, height, width, steps, cfg, scheduler, seed,
                      hooks=hooks, callback=callback, interrupt=interrupt, scheduler_config=scheduler_config,
                      cfg_batch=run.memory is None or run.memory.cfg_batch)
    finally:
        if run.one_pass is not None:
            run.geometry = run.one_pass.geometry
        run.release()
        _reset_pose_context(pose_context)
