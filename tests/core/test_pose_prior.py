"""Pose priors: the file round trip, customizations that start from one, and what is refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from mvcustom_core.backbone.tiny import tiny_backbone
from mvcustom_core.customization import backbone_fingerprint, prepare_reference_set
from mvcustom_core.customization.pose_prior import PosePrior, PosePriorError, load_pose_prior, save_pose_prior
from mvcustom_core.customization.training import (TrainingConfig, TrainingError, pose_weights_digest,
                                                  train_customization)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _config(**overrides) -> TrainingConfig:
    base = dict(class_word="dog", steps=2, frames=2, references=2, bank_views=3, lr=1e-2, token_lr=1e-3,
                featurenerf={"num_samples": 8}, checkpoint_every=1, seed=5, reference_dropout=0.0)
    return TrainingConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone(seed=0)


@pytest.fixture(scope="module")
def reference(subject_turntable):
    render, cams = subject_turntable(6)
    return prepare_reference_set(render.rgb, render.mask, cams, center=torch.zeros(3))


@pytest.fixture(scope="module")
def trained(backbone, reference):
    """A customization trained from the identity initialization: its pose weights serve as a prior below."""
    return train_customization(backbone, reference, _config()).customization


def _prior(customization, backbone) -> PosePrior:
    return PosePrior(customization.weights, "every_other", {"num_samples": 8}, backbone_fingerprint(backbone.unet),
                     {"steps": 2})


def test_a_prior_file_round_trips_and_repeats_its_bytes(trained, backbone, tmp_path):
    prior = _prior(trained, backbone)
    path = save_pose_prior(tmp_path / "prior.safetensors", prior)
    again = load_pose_prior(path)
    assert again.blocks == "every_other" and again.featurenerf == {"num_samples": 8}
    assert again.backbone == prior.backbone and again.training == {"steps": 2}
    assert again.weights.keys() == prior.weights.keys()
    for block, state in prior.weights.items():
        assert again.weights[block].keys() == state.keys()
        for name, value in state.items():
            assert torch.equal(again.weights[block][name], value.float()), (block, name)
    second = save_pose_prior(tmp_path / "second.safetensors", prior)
    assert second.read_bytes() == path.read_bytes()  # deterministic bytes: the manifest's hash holds


def test_files_that_are_not_priors_are_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(PosePriorError, match="not an MVCustom pose prior"):
        load_pose_prior(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(PosePriorError, match="not a readable safetensors file"):
        load_pose_prior(junk)


def test_a_customization_starts_from_the_prior(trained, backbone, reference):
    # With both learning rates 0 (AdamW's decay is scaled by the rate) the weights stay where they started.
    frozen = train_customization(backbone, reference, _config(steps=1, lr=0.0, token_lr=0.0, seed=9),
                                 pose_init=trained.weights).customization
    for block, state in trained.weights.items():
        for name, value in state.items():
            assert torch.equal(frozen.weights[block][name], value), (block, name)
    assert frozen.training["pose_init"] == pose_weights_digest(trained.weights)
    # From the identity initialization the same run keeps the identity fusion, not the prior's.
    plain = train_customization(backbone, reference, _config(steps=1, lr=0.0, token_lr=0.0, seed=9)).customization
    block = trained.blocks[0]
    width = plain.weights[block]["fuse.weight"].shape[0]
    assert torch.equal(plain.weights[block]["fuse.weight"][:, :width], torch.eye(width))
    assert not torch.equal(plain.weights[block]["fuse.weight"], trained.weights[block]["fuse.weight"])
    assert plain.training["pose_init"] is None


def test_a_prior_for_other_blocks_or_settings_is_refused_naming_pose_init(trained, backbone, reference):
    fewer = dict(list(trained.weights.items())[1:])
    with pytest.raises(TrainingError, match="pose initialization has blocks") as error:
        train_customization(backbone, reference, _config(steps=1), pose_init=fewer)
    assert error.value.argument == "pose_init"  # what a node names as the input that is wrong
    block = trained.blocks[0]
    wrong = {b: dict(s) for b, s in trained.weights.items()}
    wrong[block]["fuse.weight"] = torch.zeros(3, 3)
    with pytest.raises(TrainingError, match=f"pose initialization of {block} does not fit"):
        train_customization(backbone, reference, _config(steps=1), pose_init=wrong)
    assert backbone.unet is not None and not any("featurenerf" in n for n, _ in backbone.unet.named_parameters())


def test_a_checkpoint_resumes_only_from_the_same_prior(trained, backbone, reference, tmp_path):
    ckpt = tmp_path / "run.training"
    config = _config(steps=1)
    train_customization(backbone, reference, config, checkpoint=ckpt, pose_init=trained.weights)
    more = dataclasses.replace(config, steps=2)
    with pytest.raises(TrainingError, match="another pose initialization"):
        train_customization(backbone, reference, more, checkpoint=ckpt)
    resumed = train_customization(backbone, reference, more, checkpoint=ckpt, pose_init=trained.weights)
    assert resumed.resumed_from == 1 and len(resumed.losses) == 1
