"""Pose-conditioned blocks inside a tiny diffusers UNet: exactness when off/at init, capture, row→camera routing."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.customization.pose_block import (
    PoseBlockError, PoseConditionedBlock, PoseContext, active_pose_steps, install_pose_blocks, pose_blocks,
    pose_step_relay, remove_pose_blocks, select_blocks, spatial_transformer_blocks)

TEXT_DIM = 16


def _unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=8).eval()


def _ring(n: int, offset: float = 0.0) -> CameraSet:
    az = torch.arange(n, dtype=torch.float32) * (2 * torch.pi / n) + offset
    eye = torch.stack([torch.sin(az), torch.full_like(az, -0.3), -torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3)), 45.0, (8, 8))


def _inputs(rows: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 4, 8, 8, generator=g), torch.full((rows,), 500),
            torch.randn(rows, 7, TEXT_DIM, generator=g))


def _captured(unet, ctx, refs: CameraSet):
    x, t, text = _inputs(refs.num_frames, seed=7)
    ctx.begin_capture()
    with torch.no_grad():
        unet(x, t, text)
    ctx.end_capture(refs)


def test_block_selection_covers_spatial_blocks_only():
    unet = _unet()
    names = [n for n, _ in spatial_transformer_blocks(unet)]
    assert len(names) == 2 + 1 + 4  # down: 2 blocks × 1 layer; mid: 1; up: 2 blocks × 2 layers
    assert all(".transformer_blocks." in n and "motion_modules" not in n for n in names)
    assert select_blocks(names) == names[::2]
    assert select_blocks(names, "0,mid_block.attentions.0.transformer_blocks.0") == [
        names[0], "mid_block.attentions.0.transformer_blocks.0"]
    with pytest.raises(PoseBlockError, match="'99'"):
        select_blocks(names, "99")


def test_off_mode_and_fresh_blocks_reproduce_the_backbone_bit_for_bit():
    unet, ctx = _unet(), PoseContext()
    x, t, text = _inputs(3)
    with torch.no_grad():
        plain = unet(x, t, text).sample
    chosen = install_pose_blocks(unet, ctx, "all")
    assert len(list(pose_blocks(unet))) == len(chosen) == 7
    with torch.no_grad():
        assert torch.equal(unet(x, t, text).sample, plain)  # mode "off"

    refs = _ring(4, offset=0.3)
    _captured(unet, ctx, refs)
    ctx.mode, ctx.target_cams = "render", _ring(3)
    with torch.no_grad():
        fused = unet(x, t, text).sample
    # W_fuse = [I | 0] and a zero density head: the pretrained path is unchanged at initialisation.
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-6)
    assert set(ctx.outputs) == set(chosen)
    remove_pose_blocks(unet)
    with torch.no_grad():
        assert torch.equal(unet(x, t, text).sample, plain)


def test_capture_stores_block_outputs_on_each_grid():
    unet, ctx = _unet(), PoseContext()
    chosen = install_pose_blocks(unet, ctx, "all")
    refs = _ring(2)
    _captured(unet, ctx, refs)
    sizes = {name: tuple(bank.shape) for name, bank in ctx.references.items()}
    assert set(sizes) == set(chosen)
    for name, shape in sizes.items():
        hw = 4 if name.startswith("mid_block") or name.startswith("down_blocks.1") or name.startswith("up_blocks.0") else 8
        width = 32 if hw == 4 else 16
        assert shape == (1, 2, width, hw, hw), name
    with pytest.raises(PoseBlockError, match="expected 2 branch"):
        ctx.begin_capture()
        with torch.no_grad():
            unet(*_inputs(2))
        ctx.end_capture(refs, branches=2)


def _make_block_see_geometry(block: PoseConditionedBlock) -> None:
    """Give the FeatureNeRF a density and the fusion a path for the rendered features."""
    with torch.no_grad():
        block.featurenerf.decoder.weight.normal_(0, 0.5)
        c = block.fuse.out_features
        block.fuse.weight[:, c:] = torch.eye(c)


def test_each_row_renders_its_own_target_camera_and_branch_text():
    unet, ctx = _unet(), PoseContext()
    install_pose_blocks(unet, ctx, "0")
    block = next(pose_blocks(unet))
    _make_block_see_geometry(block)
    _captured(unet, ctx, _ring(3, offset=0.2))
    targets = _ring(4)
    x, t, text = _inputs(4)
    # Two CFG branches of 4 frames; identical latents in both, different texts.
    x2, t2, text2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([text, text.flip(0) * 0.5])
    ctx.mode, ctx.target_cams = "render", targets
    with torch.no_grad():
        out = unet(x2, t2, text2).sample
        features = [o.features for o in ctx.outputs[block.name]]
    assert len(features) == 2 and not torch.allclose(features[0], features[1])
    assert not torch.allclose(out[:4], out[4:])

    # Permuting the target cameras and the rows together permutes the rendered features.
    perm = torch.tensor([2, 0, 3, 1])
    ctx.target_cams = CameraSet(K=targets.K[perm], c2w=targets.c2w[perm], image_size=targets.image_size)
    with torch.no_grad():
        unet(x[perm], t[perm], text[perm])
    torch.testing.assert_close(ctx.outputs[block.name][0].features, features[0][perm], rtol=1e-5, atol=1e-6)


def test_training_gradients_reach_only_featurenerf_and_fusion():
    unet, ctx = _unet(), PoseContext()
    install_pose_blocks(unet, ctx, "every_other")
    unet.requires_grad_(False)
    for block in pose_blocks(unet):
        block.featurenerf.requires_grad_(True)
        block.fuse.requires_grad_(True)
    _captured(unet, ctx, _ring(2))
    ctx.mode, ctx.target_cams, ctx.jitter = "render", _ring(2), True
    x, t, text = _inputs(2)
    denoise = unet(x, t, text).sample.square().mean()
    opacity = sum(out.opacity.mean() for outs in ctx.outputs.values() for out in outs)
    (denoise + opacity).backward()
    block = next(pose_blocks(unet))
    # W_fuse's Fy half starts at zero, so the denoising loss reaches FeatureNeRF only through it;
    # the FeatureNeRF losses (here opacity) train the field from the first step.
    assert block.fuse.weight.grad[:, block.fuse.out_features:].abs().sum() > 0
    assert block.featurenerf.decoder.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in unet.named_parameters() if "featurenerf" not in n and "fuse" not in n)


def test_render_without_cameras_or_with_a_wrong_batch_is_refused():
    unet, ctx = _unet(), PoseContext()
    install_pose_blocks(unet, ctx, "0")
    _captured(unet, ctx, _ring(2))
    ctx.mode = "render"
    with pytest.raises(PoseBlockError, match="no target cameras"):
        unet(*_inputs(3))
    ctx.target_cams = _ring(2)
    with pytest.raises(PoseBlockError, match="not a multiple of 2"):
        unet(*_inputs(3))


def test_pose_ratio_turns_the_blocks_into_plain_blocks_after_the_active_steps():
    unet, ctx = _unet(), PoseContext()
    x, t, text = _inputs(2)
    with torch.no_grad():
        plain = unet(x, t, text).sample
    install_pose_blocks(unet, ctx, "0", config_overrides={"num_samples": 8})
    _make_block_see_geometry(next(pose_blocks(unet)))
    _captured(unet, ctx, _ring(2, offset=0.4))
    ctx.mode, ctx.target_cams = "render", _ring(2)
    ctx.active_steps = active_pose_steps(0.5, 4)
    assert ctx.active_steps == 2 and active_pose_steps(1.0, 50) is None and active_pose_steps(0.0, 50) == 0
    # Halves round up (round() would go to even: 12 and 38, or 2 of 5 and 4 of 7 for one ratio).
    assert [active_pose_steps(r, 50) for r in (0.25, 0.5, 0.75)] == [13, 25, 38]
    assert active_pose_steps(0.5, 5) == 3 and active_pose_steps(0.5, 7) == 4
    with torch.no_grad():
        ctx.step = 1
        fused = unet(x, t, text).sample
        ctx.step = 2
        after = unet(x, t, text).sample
    assert not torch.allclose(fused, plain, atol=1e-4)
    assert torch.equal(after, plain)
    with pytest.raises(PoseBlockError, match=r"\[0, 1\]"):
        active_pose_steps(1.5, 10)


def test_first_step_cache_renders_once_and_is_exact():
    unet, ctx = _unet(), PoseContext()
    install_pose_blocks(unet, ctx, "0", config_overrides={"num_samples": 8})
    block = next(pose_blocks(unet))
    _make_block_see_geometry(block)
    _captured(unet, ctx, _ring(2, offset=0.4))
    ctx.mode, ctx.target_cams = "render", _ring(2)
    calls = []
    render = block.featurenerf.render_branches
    block.featurenerf.render_branches = lambda *a, **k: calls.append(1) or render(*a, **k)
    x1, t, text = _inputs(2, seed=1)
    x2 = _inputs(2, seed=2)[0]  # other noisy latents, same prompt and cameras (a later step)
    with torch.no_grad():
        expected = [unet(x, t, text).sample for x in (x1, x2)]
        assert len(calls) == 2
        ctx.cache_rendered = True
        cached = [unet(x, t, text).sample for x in (x1, x2)]
    assert len(calls) == 3  # rendered at the first cached call only
    assert all(torch.equal(a, b) for a, b in zip(cached, expected))
    ctx.target_key = "other window"
    with torch.no_grad():
        unet(x1, t, text)
    assert len(calls) == 4  # new cameras key: rendered again
    ctx.clear_cache()
    assert not ctx._rendered


def test_step_relay_forwards_the_sampler_step_and_branch():
    unet, ctx = _unet(), PoseContext()
    install_pose_blocks(unet, ctx, "every_other")
    relay = pose_step_relay(unet, ctx)
    assert relay.layer_names == [b.name for b in pose_blocks(unet)]
    relay.step, relay.branch = 7, "cond"
    assert (ctx.step, ctx.branch) == (7, "cond")
    x, t, text = _inputs(1)
    with relay.installed(unet), torch.no_grad():
        assert torch.equal(unet(x, t, text).sample, remove_and_run(unet, x, t, text))


def remove_and_run(unet, x, t, text):
    ctx = next(pose_blocks(unet)).context
    mode, ctx.mode = ctx.mode, "off"
    out = unet(x, t, text).sample
    ctx.mode = mode
    return out
