"""Extension points of the sampler: per-step hooks on latents / x̂0, and feature hooks at named layers.

The sampler knows nothing of DFR or CLC (architecture.md, "Seams"): those are plans that install
hooks. With no hooks the sampler is the plain sampler, bit for bit; a hook that returns its input
unchanged (or None) leaves every result bit-identical.

Step hook: a callable ``hook(ctx: StepContext) -> Tensor | None`` (or an object with such an
``on_step`` method), called after each scheduler step; a returned tensor replaces ``ctx.latents``
(x_{t-1}) for the following steps. Hooks run in order and each sees the previous one's replacement.

Feature hook: ``FeatureHook(layer_names, fn)`` with ``fn(name, step, features) -> Tensor | None``,
installed as forward hooks on the named modules (``hookable_layers(unet)`` lists candidates) during
sampling and removed afterwards, also when sampling is interrupted. ``features`` is the module's
output tensor (the first element when the module returns a tuple, ``.sample`` for an output object),
folded as ``[N·F, ...]``: N = 2 with batched classifier-free guidance, the unconditional frames first
(``FeatureHook.branch == "uncond+cond"``); with sequential guidance ``fn`` runs once per branch
(``branch`` = ``"uncond"`` then ``"cond"``), N = 1. Motion modules and spatial blocks see
``[N·F, C, h, w]``; transformer blocks inside them see tokens ``[N·F, h·w, C]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["StepContext", "StepHook", "FeatureHook", "hookable_layers", "run_step_hooks", "HOOKABLE_TYPES"]


@dataclass
class StepContext:
    """What a step hook sees after scheduler step ``step`` (0-based) of ``total``.

    Attributes:
        step, total: step index and number of steps.
        t: the scheduler timestep of this step (0-dim tensor).
        latents_in: x_t, the latents that went into the model, [F, 4, h, w].
        noise_pred: the guided noise prediction ε, [F, 4, h, w].
        x0_pred: the scheduler's x̂0 (``pred_original_sample``), [F, 4, h, w].
        latents: x_{t-1}, the scheduler's result (or the previous hook's replacement), [F, 4, h, w].
        scheduler: the diffusers scheduler in use (``alphas_cumprod``, ``add_noise``, ``timesteps``).
        generator: the sampler's torch.Generator (CPU), for hooks that draw noise reproducibly.
    Latents are in the diffusion space (VAE latents × 0.18215), float32.
    """

    step: int
    total: int
    t: Tensor
    latents_in: Tensor
    noise_pred: Tensor
    x0_pred: Tensor
    latents: Tensor
    scheduler: Any
    generator: torch.Generator


StepHook = Callable[[StepContext], "Tensor | None"]


def run_step_hooks(hooks: Sequence[Any], ctx: StepContext) -> Tensor:
    """Apply step hooks in order; returns the (possibly replaced) ``ctx.latents``."""
    for hook in hooks:
        fn = hook.on_step if hasattr(hook, "on_step") else hook
        out = fn(ctx)
        if out is not None:
            if not isinstance(out, Tensor) or out.shape != ctx.latents.shape:
                got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"step hook {getattr(fn, '__qualname__', fn)!r} returned {got}; "
                                 f"expected latents of shape {list(ctx.latents.shape)}")
            ctx.latents = out.to(ctx.latents.dtype)
    return ctx.latents


# Module classes whose outputs are meaningful features to read or replace.
HOOKABLE_TYPES = (
    "BasicTransformerBlock", "Transformer2DModel", "AnimateDiffTransformer3D", "ResnetBlock2D",
    "CrossAttnDownBlockMotion", "DownBlockMotion", "CrossAttnUpBlockMotion", "UpBlockMotion",
    "UNetMidBlockCrossAttnMotion", "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D",
    "UNetMidBlock2DCrossAttn",
)


def hookable_layers(unet: torch.nn.Module) -> list[str]:
    """Module paths of ``unet`` a ``FeatureHook`` can attach to (blocks, resnets, transformers, motion modules).

    Example names: ``down_blocks.1.attentions.0.transformer_blocks.0`` (spatial transformer block),
    ``down_blocks.0.motion_modules.0`` (motion module output), ``mid_block``.
    """
    return [name for name, m in unet.named_modules() if name and type(m).__name__ in HOOKABLE_TYPES]


def _first_tensor(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if hasattr(output, "sample") and isinstance(output.sample, Tensor):
        return output.sample
    raise TypeError(f"FeatureHook: cannot find a feature tensor in a {type(output).__name__} output")


def _with_first_tensor(output: Any, new: Tensor) -> Any:
    """``output`` with its feature tensor replaced by ``new`` everywhere it is returned.

    A down block returns ``(hidden_states, skips)`` whose last skip *is* ``hidden_states`` (the same tensor, which
    the up block's skip connection reads): both places get ``new``.
    """
    if isinstance(output, Tensor):
        return new
    if isinstance(output, (tuple, list)):
        old = output[0]

        def swap(item: Any) -> Any:
            if isinstance(item, (tuple, list)):
                return type(item)(new if x is old else x for x in item)
            return item

        return type(output)([new, *(swap(x) for x in output[1:])])
    output.sample = new
    return output


class FeatureHook:
    """Read or replace the outputs of named UNet modules during sampling.

    Args:
        layer_names: module paths (see ``hookable_layers``).
        fn: ``fn(name, step, features) -> Tensor | None``; a returned tensor (same shape) replaces
            the module output. ``step`` is the sampler's 0-based step index.

    The sampler sets ``step`` and ``branch`` before each model call and calls ``install``/``remove``;
    it can also be used directly: ``with hook.installed(unet): ...``.
    """

    def __init__(self, layer_names: Iterable[str], fn: Callable[[str, int, Tensor], "Tensor | None"]) -> None:
        self.layer_names = list(layer_names)
        if not self.layer_names:
            raise ValueError("FeatureHook needs at least one layer name")
        self.fn = fn
        self.step = -1
        self.branch = "uncond+cond"
        self._handles: list[Any] = []

    def install(self, unet: torch.nn.Module) -> "FeatureHook":
        if self._handles:
            raise RuntimeError("FeatureHook is already installed; remove() it first")
        modules = dict(unet.named_modules())
        missing = [n for n in self.layer_names if n not in modules]
        if missing:
            raise ValueError(f"FeatureHook: no module named {missing} in {type(unet).__name__}; "
                             f"hookable layers include {hookable_layers(unet)[:8]} (see hookable_layers(unet))")
        for name in self.layer_names:
            self._handles.append(modules[name].register_forward_hook(self._make_hook(name)))
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def installed(self, unet: torch.nn.Module) -> "_Installed":
        return _Installed(self, unet)

    def _make_hook(self, name: str) -> Callable:
        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
            features = _first_tensor(output)
            new = self.fn(name, self.step, features)
            if new is None or new is features:
                return None  # keep the module's own output object untouched
            if not isinstance(new, Tensor) or new.shape != features.shape:
                got = list(new.shape) if isinstance(new, Tensor) else type(new).__name__
                raise ValueError(f"FeatureHook fn at {name!r} returned {got}; expected {list(features.shape)}")
            return _with_first_tensor(output, new.to(features.dtype))

        return hook


class _Installed:
    def __init__(self, hook: FeatureHook, unet: torch.nn.Module) -> None:
        self.hook, self.unet = hook, unet

    def __enter__(self) -> FeatureHook:
        return self.hook.install(self.unet)

    def __exit__(self, *exc: Any) -> None:
        self.hook.remove()
