"""Per-run views of shared modules: the core's counterpart of ComfyUI's ``ModelPatcher.clone()``.

A host keeps one copy of each model and hands it to every graph that uses it; anything one run installs on
it (pose-conditioned blocks, the subject token, dense-attention processors, forward hooks, gradient flags)
would be seen by the next run. :func:`module_view` gives each run its own module *tree* over the same
*memory*: every module object is new (its own submodule, hook and attribute dicts), every parameter and
buffer is a new tensor object aliasing the original storage. Swapping a submodule, setting a processor,
registering a hook or flipping ``requires_grad`` on the view leaves the original untouched; the weights
themselves are shared, so a view costs no weight memory (module objects only).

Writing into a view's tensors in place (``param.data.add_``) would still change the original: views are
for patches that add or replace modules, never for in-place weight edits.

Convention:
    - Aliases are made with inference mode off, so tensors created under ``torch.inference_mode`` (every
      node of a ComfyUI graph runs in it, including Load Checkpoint and the weight patching of LoRAs) can
      take part in autograd through a view (subject-token and FeatureNeRF training, frozen weights).
    - A module reachable twice in the original is one module in the view (shared submodules stay shared).
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn

__all__ = ["shared_tensor", "module_view"]

M = TypeVar("M", bound=nn.Module)

# nn.Module's per-instance containers (torch/nn/modules/module.py, Module.__init__); a view needs its own.
_DICTS = ("_backward_pre_hooks", "_backward_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
          "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
          "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
          "_load_state_dict_post_hooks")


def shared_tensor(tensor: Tensor) -> Tensor:
    """A new tensor object over ``tensor``'s memory (same storage, offset, shape and strides; no copy).

    Unlike ``tensor.detach()``, the result is an ordinary tensor even when ``tensor`` was created under
    ``torch.inference_mode``, so autograd may save it for backward (frozen weights of a trained branch).
    """
    with torch.inference_mode(False):
        alias = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        return alias.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.shape, tensor.stride())


def _view_tensor(tensor: Tensor, dtype: torch.dtype | None) -> Tensor:
    if dtype is None or not tensor.is_floating_point() or tensor.dtype == dtype:
        return shared_tensor(tensor)
    with torch.inference_mode(False):  # an ordinary tensor, as the aliases are
        return tensor.to(dtype)


def _view_parameter(param: nn.Parameter | None, dtype: torch.dtype | None) -> nn.Parameter | None:
    if param is None:
        return None
    with torch.inference_mode(False):
        return nn.Parameter(_view_tensor(param, dtype), requires_grad=param.requires_grad)


def module_view(module: M, dtype: torch.dtype | None = None) -> M:
    """A structural copy of ``module`` whose parameters and buffers alias the original's memory.

    Args:
        module: any ``nn.Module`` (a diffusers UNet, a transformers text encoder, ...).
        dtype: cast floating tensors of another dtype to this one (copies, for this view only; e.g. the float32 a
            training run needs over half-precision weights); None aliases every tensor.

    Returns:
        a module of the same classes and attributes; its submodules, parameter/buffer/hook dicts and
        ``__dict__`` are its own, its tensors share storage with ``module``'s (``data_ptr`` equal) unless cast.

    Example:
        >>> lin = torch.nn.Linear(2, 2)
        >>> view = module_view(lin)
        >>> view.weight.data_ptr() == lin.weight.data_ptr(), view.weight is lin.weight
        (True, False)
        >>> view.register_forward_hook(lambda *a: None) is not None and len(lin._forward_hooks)
        0
    """
    memo: dict[int, nn.Module] = {}

    def view_of(original: nn.Module) -> nn.Module:
        if id(original) in memo:
            return memo[id(original)]
        view = object.__new__(type(original))
        memo[id(original)] = view
        state = dict(original.__dict__)
        for name in _DICTS:
            if name in state:
                state[name] = type(state[name])(state[name])
        state["_non_persistent_buffers_set"] = set(state.get("_non_persistent_buffers_set", ()))
        state["_parameters"] = {k: _view_parameter(p, dtype) for k, p in original._parameters.items()}
        state["_buffers"] = {k: None if b is None else _view_tensor(b, dtype) for k, b in original._buffers.items()}
        state["_modules"] = {k: None if m is None else view_of(m) for k, m in original._modules.items()}
        view.__dict__.update(state)
        return view

    return view_of(module)
