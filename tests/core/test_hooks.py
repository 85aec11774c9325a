"""Sampler extension points: step hooks (latents / x̂0) and named-layer FeatureHooks."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.backbone.hooks import FeatureHook, StepContext, hookable_layers
from mvcustom_core.backbone.sampler import sample

F, SIZE = 2, 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py (also: unet, text)


@pytest.fixture(scope="module")
def plain(unet, text):
    cond, uncond = text
    return sample(unet, cond, uncond, F, SIZE, SIZE, steps=3, cfg=4.0, seed=0)


def _run(unet, text, hooks, **kw):
    cond, uncond = text
    return sample(unet, cond, uncond, F, SIZE, SIZE, steps=3, cfg=4.0, seed=0, hooks=hooks, **kw)


def test_step_hook_sees_every_step_with_consistent_tensors(unet, text, plain):
    seen: list[StepContext] = []

    def record(ctx: StepContext):
        seen.append(ctx)
        return ctx.latents  # unchanged: results must stay bit-identical

    out = _run(unet, text, [record])
    assert torch.equal(out, plain)
    assert [c.step for c in seen] == [0, 1, 2] and all(c.total == 3 for c in seen)
    assert [int(c.t) for c in seen] == [667, 334, 1]  # "leading" spacing, steps_offset 1
    a = seen[0].scheduler.alphas_cumprod
    for c in seen:
        for x in (c.latents_in, c.noise_pred, c.x0_pred, c.latents):
            assert x.shape == (F, 4, SIZE // 8, SIZE // 8)
        a_t = a[int(c.t)]  # x̂0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t
        torch.testing.assert_close(c.x0_pred, (c.latents_in - (1 - a_t).sqrt() * c.noise_pred) / a_t.sqrt())
    for prev, nxt in zip(seen, seen[1:]):
        assert torch.equal(nxt.latents_in, prev.latents)
    assert torch.equal(seen[-1].latents, out)


def test_step_hook_none_and_object_hooks_are_identity(unet, text, plain):
    class Observer:
        def __init__(self):
            self.steps = []

        def on_step(self, ctx):
            self.steps.append(ctx.step)

    obs = Observer()
    assert torch.equal(_run(unet, text, [obs, lambda ctx: None]), plain)
    assert obs.steps == [0, 1, 2]


def test_step_hook_replacement_feeds_the_next_step(unet, text, plain):
    replaced = {}

    def halve_at_step0(ctx):
        if ctx.step == 0:
            replaced["x"] = ctx.latents * 0.5
            return replaced["x"]
        if ctx.step == 1:
            replaced["seen"] = ctx.latents_in
        return None

    out = _run(unet, text, [halve_at_step0])
    assert torch.equal(replaced["seen"], replaced["x"])
    assert (out - plain).abs().max() > 1e-3
    # chained hooks: the second sees the first's replacement
    zeros = _run(unet, text, [lambda ctx: torch.zeros_like(ctx.latents), lambda ctx: ctx.latents + 1.0])
    assert torch.equal(zeros, torch.ones_like(plain))
    with pytest.raises(ValueError, match="expected latents"):
        _run(unet, text, [lambda ctx: ctx.latents[:1]])


def test_hookable_layers_lists_spatial_and_motion_layers(unet):
    names = hookable_layers(unet)
    for expected in ["down_blocks.0.attentions.0.transformer_blocks.0", "down_blocks.0.motion_modules.0",
                     "mid_block", "up_blocks.1.resnets.0", "down_blocks.1.motion_modules.0"]:
        assert expected in names
    modules = dict(unet.named_modules())
    assert all(n in modules for n in names)


def test_feature_hook_called_per_step_with_layout_and_identity_is_bit_identical(unet, text, plain):
    layers = ["down_blocks.0.attentions.0.transformer_blocks.0", "down_blocks.0.motion_modules.0"]
    calls = []

    def fn(name, step, features):
        calls.append((name, step, tuple(features.shape), hook.branch))
        return features.clone()  # a new tensor with equal values

    hook = FeatureHook(layers, fn)
    out = _run(unet, text, [hook])
    assert torch.equal(out, plain)
    # 2 CFG branches × F frames batched; spatial block sees tokens [N·F, h·w, C], motion module [N·F, C, h, w]
    per_step = [(layers[0], (2 * F, 64, 32)), (layers[1], (2 * F, 32, 8, 8))]
    expected = [(n, s, shape, "uncond+cond") for s in range(3) for n, shape in per_step]
    assert calls == expected
    assert all(not m._forward_hooks for m in unet.modules()), "hooks must be removed after sampling"


def test_feature_hook_sequential_cfg_runs_per_branch(unet, text):
    branches = []
    hook = FeatureHook(["mid_block"], lambda n, s, f: branches.append((s, hook.branch, f.shape[0])))
    _run(unet, text, [hook], cfg_batch=False)
    assert branches == [(s, b, F) for s in range(3) for b in ("uncond", "cond")]


def test_feature_hook_replacement_changes_output_only_from_its_step(unet, text, plain):
    def zero_late(name, step, features):
        return torch.zeros_like(features) if step >= 2 else None

    seen = []
    out = _run(unet, text, [FeatureHook(["up_blocks.1.motion_modules.1"], zero_late),
                            lambda ctx: seen.append(ctx.latents)])
    assert (out - plain).abs().max() > 1e-4
    first_two = []
    _run(unet, text, [lambda ctx: first_two.append(ctx.latents)])
    assert torch.equal(seen[0], first_two[0]) and torch.equal(seen[1], first_two[1])


def test_feature_hook_removed_on_interrupt_and_bad_names(unet, text):
    hook = FeatureHook(["mid_block"], lambda n, s, f: None)

    def interrupt():
        if hook.step >= 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(unet, text, [hook], interrupt=interrupt)
    assert all(not m._forward_hooks for m in unet.modules())
    with pytest.raises(ValueError, match="no module named"):
        FeatureHook(["down_blocks.9"], lambda n, s, f: None).install(unet)
    with pytest.raises(ValueError, match="at least one"):
        FeatureHook([], lambda n, s, f: None)
    bad = FeatureHook(["mid_block"], lambda n, s, f: f[:1])
    with pytest.raises(ValueError, match="expected"):
        _run(unet, text, [bad])
    assert all(not m._forward_hooks for m in unet.modules())


@pytest.mark.parametrize("layer", ["down_blocks.0", "down_blocks.1"])
def test_feature_hook_replacing_a_down_block_output_also_replaces_its_skip(unet, text, layer):
    """A down block returns (hidden_states, skips) with skips[-1] the very same tensor: the up block's skip
    connection reads it. Replacing the block's output must be the same as the block returning the replacement
    in both places (reference: the block's forward wrapped by hand), not only on the path to the next block."""
    block = dict(unet.named_modules())[layer]
    shift = lambda features: features + 0.5  # noqa: E731
    hooked = _run(unet, text, [FeatureHook([layer], lambda n, s, f: shift(f))])

    original = block.forward

    def forward(*args, **kwargs):
        hidden, skips = original(*args, **kwargs)
        assert skips[-1] is hidden
        new = shift(hidden)
        return new, (*skips[:-1], new)

    block.forward = forward
    try:
        reference = _run(unet, text, [])
    finally:
        del block.forward
    torch.testing.assert_close(hooked, reference, rtol=0, atol=0)
