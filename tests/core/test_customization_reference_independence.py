"""A reference's captured tokens do not depend on the other references (method.md §4.2).

CustomDiffusion360's image UNet computes each reference on its own; our reference stream bypasses the motion
modules for the same property. Checked on the tiny backbone with full dense attention (the motion modules mix all
frames and positions), on the inference bank capture and inside a real training run: a reference's tokens are the
same, to float32 rounding, whether it is captured alone, with others added, with others removed, or reordered.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mvcustom_core.backbone.dense_attention import enable_dense_attention, motion_modules, motion_modules_bypassed
from mvcustom_core.backbone.sampler import make_scheduler
from mvcustom_core.backbone.tiny import tiny_backbone
from mvcustom_core.customization import training
from mvcustom_core.customization.pose_block import PoseContext, install_pose_blocks, remove_pose_blocks
from mvcustom_core.customization.reference_poses import prepare_reference_set
from mvcustom_core.customization.training import TrainingConfig, capture_reference_bank, train_customization

SIZE = 64
TOL = dict(rtol=1e-5, atol=1e-5)  # float32 rounding of differently batched kernels

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def backbone():
    backbone = tiny_backbone(seed=0)
    enable_dense_attention(backbone.unet, None)  # full: every frame and position mixes in the motion modules
    return backbone


@pytest.fixture(scope="module")
def reference(subject_turntable):
    render, cams = subject_turntable(6, SIZE)
    return prepare_reference_set(render.rgb, render.mask, cams, center=torch.zeros(3))


def _bank(unet, ctx, latents, cams, texts, noise, order) -> dict[str, torch.Tensor]:
    """Capture the references ``order`` (indices); returns block -> ``[branches, len(order), C, h, w]``."""
    capture_reference_bank(unet, ctx, latents[order], cams[order], texts, 10, noise[order], make_scheduler("ddim"))
    return {name: bank.clone() for name, bank in ctx.references.items()}


def test_inference_bank_tokens_do_not_depend_on_the_other_references(backbone, reference):
    unet, ctx = copy.deepcopy(backbone.unet), PoseContext()
    install_pose_blocks(unet, ctx)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(5, 4, SIZE // 8, SIZE // 8, generator=g)
    noise = torch.randn(latents.shape, generator=g)
    texts = [torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)]  # uncond, cond
    cams = reference.cameras

    base = _bank(unet, ctx, latents, cams, texts, noise, [0, 1, 2, 3])
    for order in ([0, 1, 2, 3, 4], [0, 2], [3, 1, 0, 2], [2]):  # added, removed, reordered, alone
        bank = _bank(unet, ctx, latents, cams, texts, noise, order)
        for name in base:
            for pos, ref in enumerate(order):
                if ref < 4:
                    torch.testing.assert_close(bank[name][:, pos], base[name][:, ref], **TOL)

    # The property is not vacuous: through the motion modules (one video of references) view 0 moves with the others.
    ctx.begin_capture()
    with torch.no_grad():
        for order in ([0, 1, 2, 3], [0, 2]):
            training.unet_epsilon(unet, latents[order], 10, texts[1])
    mixed = {name: torch.cat(parts) for name, parts in ctx._capture.items()}
    ctx.mode = "off"
    # (The first pose block precedes every motion module; the later ones see their mixing.)
    assert [torch.allclose(rows[0], rows[4], **TOL) for rows in mixed.values()] == [True] + [False] * (len(mixed) - 1)


def test_training_captures_each_reference_on_its_own(backbone, reference, monkeypatch):
    """Every capture a real training run makes (per-step references and the final two-branch bank) equals the
    same references captured one at a time, at the same weights, noise and timestep."""
    original = training.capture_reference_bank
    checked = []

    def capture_and_compare(unet, ctx, latents, ref_cams, texts, timestep, noise=None, scheduler=None):
        alone = []
        for i in range(latents.shape[0]):
            original(unet, ctx, latents[i:i + 1], ref_cams[i:i + 1], texts, timestep, noise[i:i + 1], scheduler)
            alone.append(dict(ctx.references))
        original(unet, ctx, latents, ref_cams, texts, timestep, noise, scheduler)
        for name, bank in ctx.references.items():
            for i, single in enumerate(alone):
                torch.testing.assert_close(bank[:, i:i + 1], single[name], **TOL)
        checked.append((latents.shape[0], len(texts)))

    monkeypatch.setattr(training, "capture_reference_bank", capture_and_compare)
    config = TrainingConfig(class_word="dog", steps=2, frames=2, references=3, bank_views=4, lr=1e-2,
                            featurenerf={"num_samples": 8}, seed=5)
    train_customization(copy.deepcopy(backbone), reference, config)
    assert checked == [(3, 1), (3, 1), (4, 2)]  # two training steps, then the inference bank (uncond + cond)


def test_bypass_restores_the_motion_modules_even_after_an_error():
    unet = tiny_backbone(seed=0).unet
    before = motion_modules(unet)
    with pytest.raises(RuntimeError, match="inside"):
        with motion_modules_bypassed(unet):
            assert motion_modules(unet) == {}
            raise RuntimeError("inside")
    assert motion_modules(unet) == before
    remove_pose_blocks(unet)  # a no-op on a clean UNet: nothing else was left installed
