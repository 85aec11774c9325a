"""Customization file: exact round trip, apply_customization reproduces the trained UNet, wrong backbones refused."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from mvcustom_core.backbone.tiny import tiny_backbone
from mvcustom_core.customization.file_format import (
    FORMAT_VERSION, BackboneMismatchError, CustomizationFileError, apply_customization, backbone_fingerprint,
    customization_from_unet, load_customization, save_customization, stored_reference_bank)
from mvcustom_core.customization.pose_block import PoseContext, install_pose_blocks, pose_blocks
from mvcustom_core.customization.training import capture_reference_bank
from mvcustom_core.synthetic import turntable_cameras


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def unet():
    return tiny_backbone(seed=0).unet


def _metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _inputs(frames: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)


@pytest.fixture(scope="module")
def trained(unet):
    """A UNet with pose blocks whose weights are far from their initialisation, its context and customization."""
    src, ctx = copy.deepcopy(unet), PoseContext()
    torch.manual_seed(0)
    install_pose_blocks(src, ctx, "every_other", config_overrides={"num_samples": 6})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in pose_blocks(src):
            for p in block.featurenerf.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
            block.fuse.weight.add_(torch.randn(block.fuse.weight.shape, generator=g) * 0.1)
    refs = turntable_cameras(3, radius=1.0, image_size=(64, 64), start_azimuth_deg=10.0)
    latents, text = _inputs(3, seed=2)
    capture_reference_bank(src, ctx, latents, refs, [torch.zeros_like(text), text], timestep=0)
    cust = customization_from_unet(src, ctx, token="<mvc-subject>", class_word="car",
                                   token_embedding=torch.randn(32, generator=g), training={"steps": 7})
    return src, ctx, cust


def test_round_trip_is_exact(trained, tmp_path):
    _, _, cust = trained
    path = save_customization(tmp_path / "subject.safetensors", cust)
    back = load_customization(path)
    assert back.blocks == cust.blocks and back.featurenerf == cust.featurenerf
    assert back.backbone == cust.backbone and back.training == {"steps": 7}
    assert (back.token, back.class_word, back.prompt()) == ("<mvc-subject>", "car", "photo of a <mvc-subject> car")
    for name in cust.blocks:
        assert back.weights[name].keys() == cust.weights[name].keys()
        assert all(torch.equal(back.weights[name][k], v) for k, v in cust.weights[name].items())
        assert torch.equal(back.references[name], cust.references[name])
        assert back.references[name].shape[:2] == (2, 3)  # uncond + cond branch, 3 views
    assert torch.equal(back.ref_cams.K, cust.ref_cams.K) and torch.equal(back.ref_cams.c2w, cust.ref_cams.c2w)
    assert back.ref_cams.image_size == (64, 64)
    assert torch.equal(back.token_embedding, cust.token_embedding.reshape(1, -1))
    assert not list(tmp_path.glob(".*.tmp"))


def test_applied_customization_renders_like_the_trained_unet(unet, trained, tmp_path):
    src, src_ctx, cust = trained
    dst = copy.deepcopy(unet)
    ctx = apply_customization(dst, load_customization(save_customization(tmp_path / "c.safetensors", cust)))
    assert [b.name for b in pose_blocks(dst)] == cust.blocks
    targets = turntable_cameras(2, radius=1.0, image_size=(64, 64), start_azimuth_deg=55.0)
    x, text = _inputs(2, seed=3)
    # Two CFG branches as the sampler batches them: [uncond frames, cond frames].
    video = torch.cat([x, x]).reshape(2, 2, 4, 8, 8).permute(0, 2, 1, 3, 4)
    texts = torch.cat([torch.zeros_like(text).expand(2, -1, -1), text.expand(2, -1, -1)])

    def render(model, context):
        context.mode, context.target_cams, context.jitter = "render", targets, False
        with torch.no_grad():
            return model(video, torch.tensor([500]), encoder_hidden_states=texts).sample

    trained_bank = render(src, src_ctx)  # the float32 bank the training captured
    applied = render(dst, ctx)
    full_bank = dict(src_ctx.references)
    src_ctx.references = {k: v.float() for k, v in cust.references.items()}
    try:
        assert torch.equal(render(src, src_ctx), applied)  # the trained UNet given the stored bank: bit for bit
    finally:
        src_ctx.references = full_bank
    # The stored bank is rounded to float16: the output moves far less than the pose blocks move it.
    with torch.no_grad():
        plain = unet(video, torch.tensor([500]), encoder_hidden_states=texts).sample
    pose_effect = (plain - trained_bank).abs().max()
    assert pose_effect > 1e-4  # the pose blocks really act
    assert (applied - trained_bank).abs().max() < 2e-3 * pose_effect
    with pytest.raises(CustomizationFileError, match="already has pose blocks"):
        apply_customization(dst, cust)


def test_the_reference_bank_is_kept_and_written_in_float16(trained, tmp_path):
    _, ctx, cust = trained
    path = save_customization(tmp_path / "subject.safetensors", cust)
    on_disk = load_file(str(path))
    for name in cust.blocks:
        full = ctx.references[name]
        assert full.dtype == torch.float32
        assert cust.references[name].dtype == on_disk[f"reference.{name}"].dtype == torch.float16
        # Round to nearest: each token within half a float16 step (2^-11 relative) of the captured float32.
        err = (cust.references[name].float() - full).abs()
        assert bool((err <= full.abs() * 2.0**-11 + 2.0**-25).all())
        assert err.max() > 0  # really rounded
    # A file written before the bank was stored in float16 holds float32: it reads as float16, the same values.
    old = dict(on_disk)
    for name in cust.blocks:
        old[f"reference.{name}"] = ctx.references[name].clone()
    save_file(old, str(tmp_path / "old.safetensors"), metadata=_metadata(path))
    back = load_customization(tmp_path / "old.safetensors")
    assert all(torch.equal(back.references[n], cust.references[n]) for n in cust.blocks)


def test_a_bank_beyond_the_float16_range_stays_float32():
    bank = torch.tensor([1.0, -7.0e4, 3.0]).reshape(1, 1, 3, 1, 1)
    kept = stored_reference_bank(bank)
    assert kept.dtype == torch.float32 and torch.equal(kept, bank)
    assert stored_reference_bank(bank / 10).dtype == torch.float16


def test_another_backbone_is_refused_naming_the_difference(trained):
    _, _, cust = trained
    other = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    with pytest.raises(BackboneMismatchError, match="width 32.*width 16|another backbone"):
        apply_customization(other, cust)
    assert next(pose_blocks(other), None) is None  # nothing was installed
    wider_text = copy.deepcopy(cust)
    wider_text.backbone = {**cust.backbone, "cross_attention_dim": 768}
    with pytest.raises(BackboneMismatchError, match="text width 768"):
        apply_customization(other, wider_text)


def test_fingerprint_lists_spatial_blocks_with_widths_whether_wrapped_or_not(unet, trained):
    plain = backbone_fingerprint(unet)
    assert plain == backbone_fingerprint(trained[0])
    assert plain["cross_attention_dim"] == 32
    assert [w for _, w in plain["blocks"]] == [32, 32, 32, 64]  # 3 blocks at 32 channels, mid block at 64
    assert all("motion_modules" not in n for n, _ in plain["blocks"])


def test_foreign_newer_and_broken_files_are_refused(trained, tmp_path):
    _, _, cust = trained
    embedding = tmp_path / "emb.safetensors"
    save_file({"emb_params": torch.zeros(1, 32)}, str(embedding))
    with pytest.raises(CustomizationFileError, match="not an MVCustom customization"):
        load_customization(embedding)
    good = save_customization(tmp_path / "good.safetensors", cust)
    meta = _metadata(good)
    newer = tmp_path / "newer.safetensors"
    save_file(load_file(str(good)), str(newer), metadata={**meta, "version": str(FORMAT_VERSION + 1)})
    with pytest.raises(CustomizationFileError, match="newer"):
        load_customization(newer)
    missing = tmp_path / "missing.safetensors"
    tensors = {k: v for k, v in load_file(str(good)).items() if not k.startswith("reference.")}
    save_file(tensors, str(missing), metadata=meta)
    with pytest.raises(CustomizationFileError, match="no reference bank"):
        load_customization(missing)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CustomizationFileError, match="truncated"):
        load_customization(truncated)
    with pytest.raises(CustomizationFileError, match="no such"):
        load_customization(tmp_path / "absent.safetensors")
    assert json.loads(meta["blocks"]) == cust.blocks


@pytest.mark.parametrize("damage", ["config", "missing"])
def test_weights_that_do_not_fit_are_refused_and_leave_the_backbone_plain(unet, trained, damage):
    """A refused file must not leave pose blocks behind: the next (good) customization must still apply."""
    _, _, cust = trained
    bad = copy.deepcopy(cust)
    last = bad.blocks[-1]  # fails after the earlier blocks were installed and loaded
    if damage == "config":  # header says 8 point frequencies, the tensors were trained with 16
        bad.featurenerf[last] = {**bad.featurenerf[last], "point_freqs": 8}
    else:
        del bad.weights[last]["featurenerf.view_score.weight"]
    dst = copy.deepcopy(unet)
    x, text = _inputs(2, seed=5)
    video = x.permute(1, 0, 2, 3)[None]
    with torch.no_grad():
        plain = dst(video, torch.tensor([500]), encoder_hidden_states=text.expand(2, -1, -1)).sample
    with pytest.raises(CustomizationFileError, match=f"pose block {last} weights do not fit"):
        apply_customization(dst, bad)
    assert next(pose_blocks(dst), None) is None
    assert dst.state_dict().keys() == unet.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(dst(video, torch.tensor([500]), encoder_hidden_states=text.expand(2, -1, -1)).sample,
                           plain)
    apply_customization(dst, cust)
    assert [b.name for b in pose_blocks(dst)] == cust.blocks


def test_applied_to_a_bfloat16_backbone_the_fusion_follows_the_block_dtype(unet, trained):
    src, src_ctx, cust = trained
    half = copy.deepcopy(unet).to(torch.bfloat16)
    ctx = apply_customization(half, cust)
    assert all(b.fuse.weight.dtype == torch.bfloat16 and next(b.featurenerf.parameters()).dtype == torch.float32
               for b in pose_blocks(half))
    targets = turntable_cameras(2, radius=1.0, image_size=(64, 64), start_azimuth_deg=55.0)
    x, text = _inputs(2, seed=4)
    video = x.permute(1, 0, 2, 3)[None]  # [1, 4, F, h, w]
    outs = []
    for model, context, dtype in ((src, src_ctx, torch.float32), (half, ctx, torch.bfloat16)):
        context.mode, context.target_cams, context.jitter = "render", targets, False
        with torch.no_grad():
            outs.append(model(video.to(dtype), torch.tensor([500]),
                              encoder_hidden_states=text.expand(2, -1, -1).to(dtype)).sample.float())
    # bfloat16 keeps 8 bits of mantissa: the two agree to a few percent, not bit for bit.
    assert (outs[1] - outs[0]).norm() / outs[0].norm() < 0.05


def test_a_file_carrying_the_backbones_own_weights_is_refused_and_writes_nothing(unet, trained, tmp_path):
    """A customization stores only its pose weights. Keys under ``block.`` name the wrapped transformer block's
    weights, which on a per-run view alias the shared backbone's memory: loading them would overwrite the model
    every other graph uses. Such a file (hand-made or from another tool) is refused before anything is loaded."""
    from mvcustom_core.backbone.module_view import module_view

    _, _, cust = trained
    first = cust.blocks[0]
    bad = copy.deepcopy(cust)
    bad.weights[first]["block.attn1.to_q.weight"] = torch.zeros_like(
        dict(unet.named_modules())[first].attn1.to_q.weight)
    path = save_customization(tmp_path / "foreign.safetensors", bad)
    shared = copy.deepcopy(unet)
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    view = module_view(shared)
    with pytest.raises(CustomizationFileError, match=rf"pose block {first} weights .*'block\.attn1\.to_q\.weight'"):
        apply_customization(view, load_customization(path))
    assert all(torch.equal(shared.state_dict()[k], v) for k, v in before.items())
    assert next(pose_blocks(view), None) is None
