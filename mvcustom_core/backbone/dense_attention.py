"""Dense spatio-temporal attention for AnimateDiff motion modules (MVCustom §3.3, method.md §3.1).

AnimateDiff's motion module folds ``[B·F, C, H, W]`` into ``[B·H·W, F, C]`` and attends over frames
only, so a pixel can only mix with the *same* pixel of other frames. MVCustom replaces this by
attention over all frames and positions, ``[B, F·H·W, C]``, optionally restricted to a k×k spatial
window (all frames inside it). The weights are unchanged; only the token grouping inside the
temporal self-attentions changes, and the per-frame sinusoidal position encoding that the
transformer block adds before each attention stays on every token.

Convention (window):
    A query at (f, y, x) attends to keys (f', y', x') for every frame f' and y' in
    ``[sy(y), sy(y) + ky)``, x' in ``[sx(x), sx(x) + kx)`` with ``k* = min(k, axis length)`` and
    ``s(i) = clamp(i - (k* - 1) // 2, 0, L - k*)``: the window is centred on the query (odd k; even
    k reaches one pixel further down/right than up/left) and is shifted, not cut, at the borders, as
    in neighborhood attention (Hassani et al., CVPR 2023, "Neighborhood Attention Transformer", §3.1).
    Every query therefore sees exactly ``F·ky·kx`` keys; k = 1 is AnimateDiff's temporal attention
    exactly, and k >= max(H, W) is full dense attention.

Implementations (``impl``):
    ``"tiled"``   (``"auto"`` for k > 1) each t×t query tile (all frames) attends to the union of its queries'
                 windows, a (t+k−1)² region of every frame, under a boolean mask, with SDPA. Never the
                 full ``(F·H·W)²`` matrix: one tile's scores at a time. Runs anywhere, differentiable.
    ``"gather"``  every position's window is gathered (``index_select``) and attended without a mask,
                 batched over positions: exact work, but keys are copied k² times (slower on CPU).
    ``"flex"``    ``torch.nn.attention.flex_attention`` with a block mask (compiled on CUDA; on CPU
                 the eager flex path materializes the scores: correctness only).
    k = 1 under ``"auto"`` is AnimateDiff's per-pixel grouping (one SDPA over frames, no mask).
    Full attention (``window=None`` or k >= max(H, W)) is one SDPA call, queries chunked on the CPU
    to a memory budget. Measurements behind the choice: docs/sampler.md.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F_
from torch import Tensor

from ..checks import check_shape

__all__ = [
    "window_starts",
    "window_mask",
    "dense_attention",
    "windowed_attention_reference",
    "DEFAULT_CHUNK_ELEMENTS",
    "DenseSpatioTemporalAttnProcessor",
    "enable_dense_attention",
    "disable_dense_attention",
    "set_dense_window",
    "dense_attention_window",
    "set_motion_attention",
    "motion_attention_window",
    "set_dense_chunk_elements",
    "motion_modules",
    "motion_modules_bypassed",
]

Impl = Literal["auto", "tiled", "gather", "flex"]

# Upper bound on the elements of one chunk's scores + gathered keys/values (2**26 fp32 = 256 MiB).
DEFAULT_CHUNK_ELEMENTS = 1 << 26


def _check_window(window: int | None) -> None:
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        raise ValueError(f"window must be a positive int or None (full attention), got {window!r}")


def _check_impl(impl: str) -> None:
    if impl not in ("auto", "tiled", "gather", "flex"):
        raise ValueError(f"impl must be 'auto', 'tiled', 'gather' or 'flex', got {impl!r}")


def window_starts(length: int, window: int, device: torch.device | str | None = None) -> Tensor:
    """First index of the (clamped) window of every position along one axis.

    Args:
        length: axis length L.
        window: window size k (>= 1); clamped to L.

    Returns:
        LongTensor [L]: ``clamp(i - (k - 1) // 2, 0, L - k)``.

    Example:
        >>> window_starts(5, 3).tolist()
        [0, 0, 1, 2, 2]
    """
    _check_window(window)
    k = min(window, length)
    i = torch.arange(length, device=device)
    return (i - (k - 1) // 2).clamp(0, length - k)


def window_mask(height: int, width: int, window: int | None, device: torch.device | str | None = None) -> Tensor:
    """Spatial attention mask of the window convention, for reference code and tests.

    Returns:
        BoolTensor [H·W, H·W]: entry (q, k) is True where key position k lies in the window of query
        position q (positions flattened row-major, ``y·W + x``). ``window=None`` gives all True.
    """
    if window is None:
        return torch.ones(height * width, height * width, dtype=torch.bool, device=device)

    def axis(length: int) -> Tensor:  # [L, L]
        k = min(window, length)
        s = window_starts(length, window, device)[:, None]
        j = torch.arange(length, device=device)[None, :]
        return (j >= s) & (j < s + k)

    my, mx = axis(height), axis(width)
    return (my[:, None, :, None] & mx[None, :, None, :]).reshape(height * width, height * width)


def windowed_attention_reference(q: Tensor, k: Tensor, v: Tensor, window: int | None,
                                 scale: float | None = None) -> Tensor:
    """Naive dense attention with an explicit ``[F·H·W, F·H·W]`` mask: the specification.

    Args:
        q, k, v: [B, heads, F, H, W, d].

    Returns:
        [B, heads, F, H, W, d].
    """
    dims = check_shape(q, "B N F H W D", "q")
    check_shape(k, "B N F H W D", "k", dims)
    check_shape(v, "B N F H W D", "v", dims)
    b, n, f, h, w, d = q.shape
    spatial = window_mask(h, w, window, q.device)
    mask = spatial.repeat(f, f)  # frame-independent: [F·H·W, F·H·W]
    out = F_.scaled_dot_product_attention(q.reshape(b, n, f * h * w, d), k.reshape(b, n, f * h * w, d),
                                          v.reshape(b, n, f * h * w, d), attn_mask=mask, scale=scale)
    return out.reshape(b, n, f, h, w, d)


def _full_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None, chunk_elements: int) -> Tensor:
    """All frames and positions; queries chunked when the score matrix would exceed the budget on CPU
    (CUDA SDPA kernels are memory-efficient and take the whole sequence)."""
    b, n, f, h, w, d = q.shape
    tokens = f * h * w
    qf, kf, vf = (t.reshape(b, n, tokens, d) for t in (q, k, v))
    rows = tokens if q.is_cuda else max(1, chunk_elements // max(1, b * n * tokens))
    if rows >= tokens:
        out = F_.scaled_dot_product_attention(qf, kf, vf, scale=scale)
    else:
        out = torch.cat([F_.scaled_dot_product_attention(qf[:, :, i:i + rows], kf, vf, scale=scale)
                         for i in range(0, tokens, rows)], dim=2)
    return out.reshape(b, n, f, h, w, d)


def _gather_windowed(q: Tensor, k: Tensor, v: Tensor, window: int, scale: float | None,
                     chunk_elements: int) -> Tensor:
    """Windowed attention by gathering each position's window; batched over positions."""
    b, n, f, h, w, d = q.shape
    ky, kx = min(window, h), min(window, w)
    iy = window_starts(h, window, q.device)[:, None] + torch.arange(ky, device=q.device)  # [H, ky]
    ix = (window_starts(w, window, q.device)[:, None] + torch.arange(kx, device=q.device)).reshape(-1)  # [W·kx]
    keys = f * ky * kx
    per_row = b * n * w * (2 * keys * d + f * keys + 2 * f * d)  # gathered k, v + scores + q, out
    rows = max(1, min(h, chunk_elements // max(1, per_row)))
    outs = []
    for r0 in range(0, h, rows):
        r = min(rows, h - r0)
        idx = iy[r0:r0 + r].reshape(-1)

        def gather(t: Tensor) -> Tensor:  # [B, n, F, H, W, d] -> [B·n·R·W, F·ky·kx, d]
            g = t.index_select(3, idx).index_select(4, ix)  # [B, n, F, R·ky, W·kx, d]
            g = g.view(b, n, f, r, ky, w, kx, d).permute(0, 1, 3, 5, 2, 4, 6, 7)  # [B, n, R, W, F, ky, kx, d]
            return g.reshape(b * n * r * w, keys, d)

        qc = q[:, :, :, r0:r0 + r].permute(0, 1, 3, 4, 2, 5).reshape(b * n * r * w, f, d)  # [B·n·R·W, F, d]
        oc = F_.scaled_dot_product_attention(qc, gather(k), gather(v), scale=scale)
        outs.append(oc.view(b, n, r, w, f, d).permute(0, 1, 4, 2, 3, 5))  # [B, n, F, R, W, d]
    return torch.cat(outs, dim=3)


def _tile_size(window: int, f: int, b: int, n: int, d: int, chunk_elements: int) -> int:
    """Square query tile: max(4, ceil(k/2)) (fastest of 4/8/16 on CPU for k = 3, 7 at 16² and 32² latents,
    docs/sampler.md), halved until the masked scores and the key region fit the budget."""
    t = max(4, (window + 1) // 2)
    while t > 1:
        region = (t + window - 1) ** 2
        if b * n * f * (f * t * t * region + 3 * region * d) <= chunk_elements:  # scores + k, v, q
            break
        t = max(1, t // 2)
    return t


def _tiled_windowed(q: Tensor, k: Tensor, v: Tensor, window: int, scale: float | None,
                    chunk_elements: int, tile: int | None = None) -> Tensor:
    """Windowed attention by query tiles: each t×t tile (all frames) attends to the union of its
    queries' windows, a (t+k-1)² region, under a boolean mask. Keys are copied ~((t+k-1)/t)² times
    instead of k² times (gather path); scores cost ((t+k-1)/k)² of the ideal."""
    b, n, f, h, w, d = q.shape
    ky, kx = min(window, h), min(window, w)
    sy, sx = window_starts(h, window, q.device), window_starts(w, window, q.device)
    t = tile or _tile_size(window, f, b, n, d, chunk_elements)
    out = torch.empty_like(q)
    for y0 in range(0, h, t):
        y1 = min(h, y0 + t)
        ry0, ry1 = int(sy[y0]), int(sy[y1 - 1]) + ky
        jy = torch.arange(ry0, ry1, device=q.device)
        my = (jy[None] >= sy[y0:y1, None]) & (jy[None] < sy[y0:y1, None] + ky)  # [ty, RY]
        for x0 in range(0, w, t):
            x1 = min(w, x0 + t)
            rx0, rx1 = int(sx[x0]), int(sx[x1 - 1]) + kx
            jx = torch.arange(rx0, rx1, device=q.device)
            mx = (jx[None] >= sx[x0:x1, None]) & (jx[None] < sx[x0:x1, None] + kx)  # [tx, RX]
            spatial = (my[:, None, :, None] & mx[None, :, None, :]).reshape((y1 - y0) * (x1 - x0), -1)
            mask = spatial.repeat(f, f)  # [F·ty·tx, F·RY·RX], frame-independent
            qt = q[:, :, :, y0:y1, x0:x1].reshape(b, n, -1, d)
            kt = k[:, :, :, ry0:ry1, rx0:rx1].reshape(b, n, -1, d)
            vt = v[:, :, :, ry0:ry1, rx0:rx1].reshape(b, n, -1, d)
            ot = F_.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
            out[:, :, :, y0:y1, x0:x1] = ot.view(b, n, f, y1 - y0, x1 - x0, d)
    return out


@functools.lru_cache(maxsize=32)
def _flex_block_mask(f: int, h: int, w: int, window: int, device: str):
    """Block mask of the window convention over tokens ``(f·H + y)·W + x``; cached per shape (building
    it evaluates the mask on every block pair)."""
    from torch.nn.attention.flex_attention import create_block_mask

    ky, kx = min(window, h), min(window, w)
    sy, sx = window_starts(h, window, device), window_starts(w, window, device)
    hw, tokens = h * w, f * h * w

    def mask_mod(bi, hi, qi, ki):
        qy, qx = (qi % hw) // w, qi % w
        ty, tx = (ki % hw) // w, ki % w
        y0, x0 = sy[qy], sx[qx]
        return (ty >= y0) & (ty < y0 + ky) & (tx >= x0) & (tx < x0 + kx)

    return create_block_mask(mask_mod, None, None, tokens, tokens, device=device)


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex_windowed(q: Tensor, k: Tensor, v: Tensor, window: int, scale: float | None,
                   compile: bool | None = None) -> Tensor:
    """flex_attention with a block mask of the window convention; compiled by default on CUDA only
    (a CPU compile took 82 s for one shape here, the eager path materializes the scores)."""
    from torch.nn.attention.flex_attention import flex_attention

    b, n, f, h, w, d = q.shape
    tokens = f * h * w
    block_mask = _flex_block_mask(f, h, w, window, str(q.device))
    attend = _compiled_flex_attention() if (q.is_cuda if compile is None else compile) else flex_attention
    out = attend(*(t.reshape(b, n, tokens, d) for t in (q, k, v)), block_mask=block_mask, scale=scale)
    return out.reshape(b, n, f, h, w, d)


def dense_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int | None = None, scale: float | None = None,
                    impl: Impl = "auto", chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Tensor:
    """Attention over all frames and positions, optionally within a k×k spatial window.

    Args:
        q, k, v: [B, heads, F, H, W, d].
        window: k (see the module's Convention) or None for full attention.
        scale: softmax scale, default ``d ** -0.5``.
        impl: ``"auto"``, ``"tiled"``, ``"gather"`` or ``"flex"`` (module docstring).
        chunk_elements: memory budget of one chunk in tensor elements (CPU full, tiled, gather paths).

    Returns:
        [B, heads, F, H, W, d].
    """
    dims = check_shape(q, "B N F H W D", "q")
    check_shape(k, "B N F H W D", "k", dims)
    check_shape(v, "B N F H W D", "v", dims)
    _check_window(window)
    _check_impl(impl)
    h, w = dims["H"], dims["W"]
    if window is None or window >= max(h, w):
        return _full_attention(q, k, v, scale, chunk_elements)
    if impl == "tiled" or (impl == "auto" and window > 1):
        return _tiled_windowed(q, k, v, window, scale, chunk_elements)
    if impl == "auto" and window == 1:  # AnimateDiff's own grouping: per pixel, over frames
        b, n, f, h, w, d = q.shape
        # [B·H·W, heads, F, d]: a view (no copy) of the processor's [B·H·W, F, heads·d] projections
        per_pixel = [t.permute(0, 3, 4, 1, 2, 5).reshape(b * h * w, n, f, d) for t in (q, k, v)]
        out = F_.scaled_dot_product_attention(*per_pixel, scale=scale)
        return out.view(b, h, w, n, f, d).permute(0, 3, 4, 1, 2, 5)
    if impl == "gather":
        return _gather_windowed(q, k, v, window, scale, chunk_elements)
    return _flex_windowed(q, k, v, window, scale)


class DenseSpatioTemporalAttnProcessor:
    """diffusers attention processor for the temporal self-attentions of one motion module.

    The motion module hands its attentions ``[B·H·W, F, C]`` tokens (per-frame position encoding
    already added); this processor regroups them to ``[B, F·H·W, C]`` (windowed or full), attends,
    and returns the original layout. The tokens alone do not carry (H, W): a forward pre-hook that
    ``enable_dense_attention`` installs on the motion module writes it on the module's attentions for
    the duration of the call (on the modules themselves, so a deep copy of the model stays correct).
    """

    def __init__(self, window: int | None = None, impl: Impl = "auto",
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> None:
        _check_window(window)
        _check_impl(impl)
        self.window = window
        self.impl = impl
        self.chunk_elements = chunk_elements

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError("dense spatio-temporal attention is self-attention only "
                                      "(got encoder_hidden_states or attention_mask)")
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError("dense spatio-temporal attention: spatial_norm/group_norm are not supported")
        spatial_shape = getattr(attn, _SHAPE_ATTR, None)
        if spatial_shape is None:
            raise RuntimeError("DenseSpatioTemporalAttnProcessor has no spatial shape: install it with "
                               "enable_dense_attention(unet), which hooks the motion modules")
        h, w = spatial_shape
        rows, f, _ = hidden_states.shape
        if rows % (h * w):
            raise ValueError(f"dense attention: {rows} token groups is not a multiple of H·W = {h}·{w}")
        b, heads = rows // (h * w), attn.heads
        residual = hidden_states

        def split(t: Tensor) -> Tensor:  # [B·H·W, F, heads·d] -> [B, heads, F, H, W, d]
            return t.view(b, h, w, f, heads, -1).permute(0, 4, 3, 1, 2, 5)

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = dense_attention(q, k, v, window=self.window, scale=attn.scale, impl=self.impl,
                              chunk_elements=self.chunk_elements)
        out = out.permute(0, 3, 4, 2, 1, 5).reshape(rows, f, -1).to(q.dtype)  # [B·H·W, F, heads·d]
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@dataclass
class _DenseAttentionState:
    processors: list[DenseSpatioTemporalAttnProcessor] = field(default_factory=list)
    saved: dict[Any, Any] = field(default_factory=dict)  # Attention module -> its previous processor
    handles: list[Any] = field(default_factory=list)


_STATE_ATTR = "_mvcustom_dense_attention"
_SHAPE_ATTR = "_mvcustom_spatial_shape"


def _attentions(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.transformer_blocks.modules() if hasattr(m, "processor")]


def _record_spatial_shape(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    x = args[0] if args else kwargs["hidden_states"]  # [B·F, C, H, W]
    for attn in _attentions(module):
        setattr(attn, _SHAPE_ATTR, (int(x.shape[-2]), int(x.shape[-1])))


def _clear_spatial_shape(module: torch.nn.Module, _args: tuple, _output: Any) -> None:
    for attn in _attentions(module):  # no stale shape for a later call from elsewhere
        setattr(attn, _SHAPE_ATTR, None)


def motion_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The AnimateDiff motion modules (``AnimateDiffTransformer3D``) of a model, by module path."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    return {name: m for name, m in unet.named_modules() if isinstance(m, AnimateDiffTransformer3D)}


def enable_dense_attention(unet: torch.nn.Module, window: int | None = None, *, impl: Impl = "auto",
                           chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Make every motion module's temporal self-attention dense spatio-temporal.

    Args:
        unet: a diffusers ``UNetMotionModel`` (or any module holding ``AnimateDiffTransformer3D``s).
        window: spatial window k, or None for full attention; k = 1 equals the original module.
        impl, chunk_elements: see ``dense_attention``.

    Returns:
        Number of motion modules converted. Calling again replaces the previous settings;
        ``disable_dense_attention`` restores the previous processors exactly.
    """
    from diffusers.models.attention_processor import Attention

    _check_window(window)
    _check_impl(impl)
    modules = motion_modules(unet)
    if not modules:
        raise ValueError(f"enable_dense_attention: {type(unet).__name__} has no AnimateDiff motion modules "
                         "(AnimateDiffTransformer3D); load a motion adapter first")
    disable_dense_attention(unet)
    state = _DenseAttentionState()
    for module in modules.values():
        proc = DenseSpatioTemporalAttnProcessor(window, impl, chunk_elements)
        attns = [a for a in module.transformer_blocks.modules() if isinstance(a, Attention) and not a.is_cross_attention]
        for attn in attns:
            state.saved[attn] = attn.processor
            attn.set_processor(proc)
        state.handles.append(module.register_forward_pre_hook(_record_spatial_shape, with_kwargs=True))
        state.handles.append(module.register_forward_hook(_clear_spatial_shape))
        state.processors.append(proc)
    setattr(unet, _STATE_ATTR, state)
    return len(modules)


def disable_dense_attention(unet: torch.nn.Module) -> bool:
    """Restore the processors that ``enable_dense_attention`` replaced; True if it was enabled."""
    state = getattr(unet, _STATE_ATTR, None)
    if state is None:
        return False
    for attn, proc in state.saved.items():
        attn.set_processor(proc)
    for handle in state.handles:
        handle.remove()
    delattr(unet, _STATE_ATTR)
    return True


def set_dense_window(unet: torch.nn.Module, window: int | None) -> None:
    """Change the window of installed dense attention in place (progressive training, ``WindowSchedule``)."""
    _check_window(window)
    state = getattr(unet, _STATE_ATTR, None)
    if state is None:
        raise RuntimeError("set_dense_window: dense attention is not enabled; call enable_dense_attention first")
    for proc in state.processors:
        proc.window = window


def dense_attention_window(unet: torch.nn.Module) -> int | None:
    """The current window (None = full); raises if dense attention is not enabled."""
    state = getattr(unet, _STATE_ATTR, None)
    if state is None:
        raise RuntimeError("dense attention is not enabled on this model")
    return state.processors[0].window


def set_motion_attention(unet: torch.nn.Module, window: int | None, *, impl: Impl = "auto",
                         chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> None:
    """Run the motion modules with ``window``: 1 = AnimateDiff's own temporal attention (the module's original
    processors, bit for bit), k > 1 = dense attention in a k x k window, None = full dense attention."""
    _check_window(window)
    if window == 1:
        if not motion_modules(unet):
            raise ValueError(f"set_motion_attention: {type(unet).__name__} has no AnimateDiff motion modules")
        disable_dense_attention(unet)
    else:
        enable_dense_attention(unet, window, impl=impl, chunk_elements=chunk_elements)


def motion_attention_window(unet: torch.nn.Module) -> int | None:
    """The attention the motion modules run: the dense window (None = full), or 1 without dense attention."""
    state = getattr(unet, _STATE_ATTR, None)
    return 1 if state is None else state.processors[0].window


class _SkipMotionModule(torch.nn.Module):
    """Stands in for an ``AnimateDiffTransformer3D``, which returns ``x + residual(x)``: returns ``x``."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states


@contextlib.contextmanager
def motion_modules_bypassed(unet: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``unet`` without its motion modules: every frame then goes through the spatial (image) UNet alone,
    independent of the other frames in the batch. The modules are put back on exit, also after an error.

    A model without motion modules (``UNet2DConditionModel``) is used as it is.
    """
    swapped = []
    try:
        for name, module in motion_modules(unet).items():
            path, _, leaf = name.rpartition(".")
            parent = unet.get_submodule(path)
            parent[int(leaf)] = _SkipMotionModule()
            swapped.append((parent, int(leaf), module))
        yield unet
    finally:
        for parent, leaf, module in swapped:
            parent[leaf] = module


def set_dense_chunk_elements(unet: torch.nn.Module, chunk_elements: int) -> int | None:
    """Set the per-chunk element budget of installed dense attention (the sampler sizes it from its memory
    workspace); returns the previous value, or None (nothing changed) when dense attention is not enabled."""
    state = getattr(unet, _STATE_ATTR, None)
    if state is None:
        return None
    previous = state.processors[0].chunk_elements
    for proc in state.processors:
        proc.chunk_elements = max(1, int(chunk_elements))
    return previous
