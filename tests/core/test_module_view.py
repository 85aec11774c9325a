"""Per-run module views: shared memory, own structure; and SD1.x modules over weights already in memory."""

from __future__ import annotations

import copy

import pytest
import torch

from mvcustom_core.backbone.dense_attention import dense_attention_window, enable_dense_attention
from mvcustom_core.backbone.loading import (CheckpointError, build_backbone, export_ldm_state_dict,
                                            sd15_modules_from_state, shipped_config)
from mvcustom_core.backbone.module_view import module_view, shared_tensor
from mvcustom_core.backbone.tiny import TINY_CONFIGS, tiny_backbone, tiny_components, tiny_motion_adapter
from mvcustom_core.customization.pose_block import PoseContext, install_pose_blocks, pose_blocks
from mvcustom_core.customization.token import add_subject_token, subject_token_embedding

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

TINY = {k: shipped_config(v) for k, v in TINY_CONFIGS.items()}


def _video_eps(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, text = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(3, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, 10, encoder_hidden_states=text).sample


def test_shared_tensor_aliases_memory_and_frees_inference_tensors_for_autograd():
    with torch.inference_mode():
        weight = torch.randn(3, 4)[:, 1:]  # a strided view with an offset
    alias = shared_tensor(weight)
    assert alias.data_ptr() == weight.data_ptr() and alias.stride() == weight.stride()
    assert torch.equal(alias, weight) and not alias.is_inference()
    x = torch.randn(2, 3, requires_grad=True)
    (x @ alias).sum().backward()  # with `weight` itself: "Inference tensors cannot be saved for backward"
    torch.testing.assert_close(x.grad, weight.sum(1).expand(2, 3))


def test_patches_on_a_view_never_reach_the_original():
    backbone = tiny_backbone(seed=0)
    original = backbone.unet
    modules_before = dict(original.named_modules())
    eps_before = _video_eps(original)

    view = module_view(original)
    assert all(a.data_ptr() == b.data_ptr() and a is not b
               for a, b in zip(view.parameters(), original.parameters()))
    assert torch.equal(_video_eps(view), eps_before)  # a view is the same function

    enable_dense_attention(view, None)  # processors, forward hooks, a state attribute
    install_pose_blocks(view, PoseContext())  # submodule swaps and pre-hooks
    view.requires_grad_(False)
    text_view = module_view(backbone.text_encoder)
    add_subject_token(text_view, copy.deepcopy(backbone.tokenizer), "<v>", class_word="dog")

    assert not torch.equal(_video_eps(view), eps_before)  # dense attention changed the view's function
    assert dict(original.named_modules()) == modules_before and next(pose_blocks(original), None) is None
    assert all(p.requires_grad for p in original.parameters())
    assert subject_token_embedding(backbone.text_encoder) is None and subject_token_embedding(text_view) is not None
    with pytest.raises(RuntimeError, match="not enabled"):
        dense_attention_window(original)
    assert all(len(m._forward_pre_hooks) == 0 for m in original.modules())
    assert torch.equal(_video_eps(original), eps_before)


def test_a_submodule_reached_twice_stays_one_module():
    shared = torch.nn.Linear(2, 2)
    root = torch.nn.ModuleDict({"a": shared, "b": torch.nn.Sequential(shared)})
    view = module_view(root)
    assert view["a"] is view["b"][0] and view["a"] is not shared


def test_sd15_modules_over_in_memory_weights_are_zero_copy_and_equal():
    components = tiny_components(seed=1)
    with torch.inference_mode():  # as a host loads its models
        state = {k: v.clone() for k, v in export_ldm_state_dict(components).items()}
    built = sd15_modules_from_state(state, config=TINY, name="MODEL")
    pointers = {v.data_ptr() for v in state.values()}
    for module in (built.unet, built.vae, built.text_encoder):
        assert all(p.data_ptr() in pointers and not p.is_inference() for p in module.parameters())
    g = torch.Generator().manual_seed(0)
    x, text, ids = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g), torch.arange(77)[None]
    with torch.no_grad():
        assert torch.equal(built.unet(x, 5, encoder_hidden_states=text).sample,
                           components.unet(x, 5, encoder_hidden_states=text).sample)
        assert torch.equal(built.text_encoder(ids).last_hidden_state,
                           components.text_encoder(ids).last_hidden_state)
        image = torch.rand(1, 3, 16, 16, generator=g)
        assert torch.equal(built.vae.encode(image).latent_dist.mean, components.vae.encode(image).latent_dist.mean)


def test_sd15_modules_from_state_builds_only_what_is_asked_and_casts_on_request():
    state = export_ldm_state_dict(tiny_components(seed=1))
    unet_only = sd15_modules_from_state({k: v for k, v in state.items() if k.startswith("model.")}, parts=["unet"],
                                        config=TINY, dtype=torch.bfloat16)
    assert unet_only.vae is None and unet_only.text_encoder is None
    assert {p.dtype for p in unet_only.unet.parameters()} == {torch.bfloat16}  # cast: a copy, by request


def test_sd15_modules_from_state_names_the_source_and_the_first_missing_key():
    state = export_ldm_state_dict(tiny_components(seed=1))
    with pytest.raises(CheckpointError, match=r"^MODEL: not an SD1\.x UNet: missing \d+ of 686 keys"):
        sd15_modules_from_state(state, parts=["unet"], name="MODEL")  # tiny weights against SD1.5's layout


def test_backbone_from_views_runs_under_autograd_with_inference_weights():
    with torch.inference_mode():
        components, adapter = tiny_components(seed=2), tiny_motion_adapter(seed=2)
    unet = build_backbone(components, adapter)
    assert all(not p.is_inference() for p in unet.parameters())
    x = torch.randn(1, 4, 2, 8, 8, requires_grad=True)
    unet(x, 3, encoder_hidden_states=torch.randn(2, 77, 32)).sample.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_view_in_another_dtype_casts_floating_tensors_only_and_for_itself():
    with torch.inference_mode():  # a host's weights
        module = torch.nn.Linear(3, 2).to(torch.bfloat16)
        module.register_buffer("ids", torch.arange(4))
    view = module_view(module, torch.float32)
    assert view.weight.dtype == torch.float32 and not view.weight.is_inference()
    assert torch.equal(view.weight, module.weight.float()) and view.weight.data_ptr() != module.weight.data_ptr()
    assert view.ids.data_ptr() == module.ids.data_ptr() and view.ids.dtype == torch.int64  # not floating: aliased
    assert module.weight.dtype == torch.bfloat16
    same = module_view(module, torch.bfloat16)
    assert same.weight.data_ptr() == module.weight.data_ptr()  # nothing to cast: no copy
    x = torch.randn(1, 3, requires_grad=True)
    view(x).sum().backward()
    torch.testing.assert_close(x.grad, module.weight.float().sum(0, keepdim=True))
