"""Customization training on the tiny backbone and the synthetic subject.

Checks: the FeatureNeRF losses fall; only FeatureNeRF, fusion and the token change while the backbone is
left exactly as it was; an interrupted run (exception in the progress callback, or a process killed with
SIGKILL after its first checkpoint) resumed from its checkpoint equals an uninterrupted run bit for bit.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mvcustom_core.backbone.tiny import tiny_backbone
from mvcustom_core.customization.pose_block import pose_blocks
from mvcustom_core.customization.reference_poses import prepare_reference_set
from mvcustom_core.customization.token import class_word_embedding, subject_token_embedding
from mvcustom_core.customization import training
from mvcustom_core.customization.subject_files import subject_of
from mvcustom_core.customization.training import (
    RegularizationSet, TrainingConfig, TrainingError, bank_indices, load_checkpoint, reference_digest, sample_timesteps,
    spread_references, train_customization)
from mvcustom_core.synthetic import SyntheticScene, turntable_cameras

REPO = Path(__file__).resolve().parents[2]
SIZE = 64


def _reference_set():
    cams = turntable_cameras(6, elevation_deg=20.0, radius=2.5, image_size=(SIZE, SIZE), fov_y_deg=45.0)
    render = SyntheticScene(seed=1, ground=False).render(cams)
    return prepare_reference_set(render.rgb, render.mask, cams, center=torch.zeros(3))


def _config(**overrides) -> TrainingConfig:
    base = dict(class_word="dog", steps=4, frames=2, references=2, bank_views=3, lr=1e-2, token_lr=1e-3,
                featurenerf={"num_samples": 8}, checkpoint_every=2, seed=5)
    return TrainingConfig(**{**base, **overrides})


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone(seed=0)


@pytest.fixture(scope="module")
def reference():
    return _reference_set()


@pytest.fixture(scope="module")
def uninterrupted(backbone, reference):
    return train_customization(backbone, reference, _config())


def _assert_same_customization(a, b):
    assert a.blocks == b.blocks
    for name in a.blocks:
        assert a.weights[name].keys() == b.weights[name].keys()
        for key in a.weights[name]:
            assert torch.equal(a.weights[name][key], b.weights[name][key]), (name, key)
        assert torch.equal(a.references[name], b.references[name]), name
    assert torch.equal(a.token_embedding, b.token_embedding)


def test_losses_fall_and_only_the_intended_parameters_change(backbone, reference):
    before = {m: copy.deepcopy(getattr(backbone, m).state_dict()) for m in ("unet", "vae", "text_encoder")}
    flags = {m: [p.requires_grad for p in getattr(backbone, m).parameters()] for m in ("unet", "vae", "text_encoder")}
    vocab = len(backbone.tokenizer)
    result = train_customization(backbone, reference, _config(steps=16, checkpoint_every=100))
    fnerf = [r["fg"] + r["bg"] for r in result.losses]
    assert sum(fnerf[-4:]) < 0.7 * sum(fnerf[:4]), fnerf

    # The backbone is exactly as before: same tensors, no pose blocks, no token, same vocabulary and flags.
    for m, state in before.items():
        after = getattr(backbone, m).state_dict()
        assert after.keys() == state.keys(), m
        assert all(torch.equal(after[k], state[k]) for k in state), m
    assert next(pose_blocks(backbone.unet), None) is None
    assert subject_token_embedding(backbone.text_encoder) is None
    assert len(backbone.tokenizer) == vocab
    assert {m: [p.requires_grad for p in getattr(backbone, m).parameters()] for m in flags} == flags

    # What was trained moved away from its initialisation.
    c = result.customization
    for name in c.blocks:
        width = c.featurenerf[name]["channels"]
        fuse = c.weights[name]["fuse.weight"]
        assert (fuse[:, :width] - torch.eye(width)).abs().max() > 0  # the identity half trains too
        assert fuse[:, width:].abs().max() > 0  # the Fy half starts at zero
        assert c.weights[name]["featurenerf.decoder.weight"].abs().max() > 0  # zero-initialised density head
    init = class_word_embedding(backbone.text_encoder, backbone.tokenizer, "dog")
    assert (c.token_embedding[0] - init).abs().max() > 0

    # Bank: both CFG branches, views spread over the photos, stored with their cameras.
    idx = bank_indices(len(reference), 3)
    for name in c.blocks:
        assert c.references[name].shape[:2] == (2, 3)
    torch.testing.assert_close(c.ref_cams.c2w, reference.cameras.c2w[idx])


def test_interrupted_run_resumes_to_the_uninterrupted_result(backbone, reference, uninterrupted, tmp_path):
    ckpt = tmp_path / "run.ckpt"

    def stop_at_three(done, total, losses):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_customization(backbone, reference, _config(), checkpoint=ckpt, progress=stop_at_three)
    assert load_checkpoint(ckpt)["step"] == 3  # the interrupt wrote the last completed step
    resumed = train_customization(backbone, reference, _config(), checkpoint=ckpt)
    assert resumed.resumed_from == 3 and len(resumed.losses) == 1
    _assert_same_customization(resumed.customization, uninterrupted.customization)
    assert resumed.losses[-1] == uninterrupted.losses[-1]


def test_process_killed_after_first_checkpoint_resumes_to_the_same_result(backbone, reference, uninterrupted,
                                                                          tmp_path):
    ckpt = tmp_path / "killed.ckpt"
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_customization_training import _config, _reference_set
        from mvcustom_core.backbone.tiny import tiny_backbone
        from mvcustom_core.customization.training import train_customization

        def die(done, total, losses):
            if done == 3:  # after the checkpoint at step 2, before the one at step 4
                os.kill(os.getpid(), signal.SIGKILL)

        train_customization(tiny_backbone(seed=0), _reference_set(), _config(), checkpoint={str(ckpt)!r},
                            progress=die)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert load_checkpoint(ckpt)["step"] == 2
    resumed = train_customization(backbone, reference, _config(), checkpoint=ckpt)
    assert resumed.resumed_from == 2
    _assert_same_customization(resumed.customization, uninterrupted.customization)


def test_a_checkpoint_carrying_backbone_weights_is_refused_and_the_backbone_kept(reference, tmp_path):
    """Pose weights of a checkpoint never include the wrapped transformer block's (``block.*``): on the run's view
    those tensors are the shared backbone's memory, so resuming must refuse them, not load them."""
    shared = tiny_backbone(seed=0)
    before = {k: v.clone() for k, v in shared.unet.state_dict().items()}
    ckpt = tmp_path / "a.ckpt"
    train_customization(shared, reference, _config(steps=1, checkpoint_every=1), checkpoint=ckpt)
    state = load_checkpoint(ckpt)
    name = next(iter(state["pose"]))
    state["pose"][name]["block.attn1.to_q.weight"] = torch.zeros_like(before[f"{name}.attn1.to_q.weight"])
    torch.save(state, ckpt)
    with pytest.raises(TrainingError, match=rf"a\.ckpt: {name}: .*'block\.attn1\.to_q\.weight'"):
        train_customization(shared, reference, _config(steps=2, checkpoint_every=1), checkpoint=ckpt)
    assert all(torch.equal(shared.unet.state_dict()[k], v) for k, v in before.items())


def test_checkpoint_with_other_settings_and_bad_settings_are_refused(backbone, reference, tmp_path):
    ckpt = tmp_path / "a.ckpt"
    train_customization(backbone, reference, _config(steps=1, checkpoint_every=1), checkpoint=ckpt)
    with pytest.raises(TrainingError, match="other settings"):
        train_customization(backbone, reference, _config(steps=2, lr=5e-3), checkpoint=ckpt)
    other = copy.copy(reference)
    other.images = reference.images.flip(0)
    with pytest.raises(TrainingError, match="other photos"):
        train_customization(backbone, other, _config(steps=2, checkpoint_every=1), checkpoint=ckpt)
    with pytest.raises(TrainingError, match="steps must be"):
        train_customization(backbone, reference, _config(steps=0))
    with pytest.raises(TrainingError, match="class_word"):
        train_customization(backbone, reference, _config(class_word=" "))
    half = SimpleNamespace(unet=copy.deepcopy(backbone.unet).to(torch.bfloat16), vae=backbone.vae,
                           text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer)
    with pytest.raises(TrainingError, match="needs float32"):
        train_customization(half, reference, _config())


def test_training_timesteps_follow_their_distributions():
    """Cubic: P(t < xT) = P(u > (1 − x)^(1/3)) = 1 − (1 − x)^(1/3), biased to high noise; uniform: x."""
    cubic = sample_timesteps(torch.Generator().manual_seed(0), 20000, 1000, "cubic")
    uniform = sample_timesteps(torch.Generator().manual_seed(0), 20000, 1000, "uniform")
    assert int(cubic.min()) >= 0 and int(cubic.max()) <= 999 and cubic.dtype == torch.int64
    for x in (0.1, 0.5, 0.9):
        assert abs(float((cubic < x * 1000).double().mean()) - (1 - (1 - x) ** (1 / 3))) < 0.01
        assert abs(float((uniform < x * 1000).double().mean()) - x) < 0.01


def test_cubic_timesteps_are_customdiffusion360s_draw():
    """CubicSampling: idx = ⌊(1 − u³)(T − 1)⌋ for the same u (torch.rand in float64)."""
    u = torch.rand((500,), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = ((1 - u**3) * 999).floor().long()
    assert torch.equal(sample_timesteps(torch.Generator().manual_seed(3), 500, 1000, "cubic"), expected)


def test_references_are_spread_evenly_around_the_subject():
    assert spread_references(torch.arange(10, 22), 4, 0).tolist() == [10, 13, 16, 19]
    assert spread_references(torch.arange(10, 22), 4, 5).tolist() == [15, 18, 21, 12]
    assert spread_references(torch.arange(5), 8, 1).tolist() == [1, 2, 3, 4, 0]  # fewer photos than asked
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):  # 14 photos, 2 targets: 4 references, cyclic gaps of 3 among the other 12
        targets, refs = training._sample_step(gen, 14, 2, 4)
        others = [i for i in range(14) if i not in targets.tolist()]
        positions = sorted(others.index(r) for r in refs.tolist())
        gaps = [(b - a) % 12 for a, b in zip(positions, positions[1:] + positions[:1])]
        assert gaps == [3, 3, 3, 3] and not set(refs.tolist()) & set(targets.tolist())


def test_step_inputs_follow_customdiffusion360s_dropout():
    refs, targets = torch.randn(3, 4, 8, 8), torch.randn(2, 4, 8, 8)
    picture = torch.randn(4, 8, 8)
    plain = training._step_inputs(refs, targets, "photo of a V dog", drop_text=False, drop_refs=False)
    assert plain[0] is refs and plain[2] is targets and plain[1] == plain[3] == "photo of a V dog"
    no_text = training._step_inputs(refs, targets, "photo of a V dog", drop_text=True, drop_refs=False)
    assert no_text[1] == no_text[3] == ""
    dropped = training._step_inputs(refs, targets, "photo of a V dog", drop_text=True, drop_refs=True)
    assert not dropped[0].any() and dropped[1] == "" and dropped[2] is targets and dropped[3] == "photo of a V dog"
    regularized = training._step_inputs(refs, targets, "photo of a V dog", drop_text=False, drop_refs=True,
                                        regularization=(picture, "a dog on grass"))
    assert not regularized[0].any() and regularized[1] == ""
    assert torch.equal(regularized[2], picture.expand(2, -1, -1, -1)) and regularized[3] == "a dog on grass"


def test_reference_dropout_and_regularization_pictures(backbone, reference, tmp_path):
    """With every step's references dropped the FeatureNeRF losses are off; regularization pictures must have
    the photos' size and one caption each, and a checkpoint resumes only with the same pictures."""
    dropped = train_customization(backbone, reference, _config(steps=2, reference_dropout=1.0))
    assert all(r["fg"] == r["bg"] == r["rgb"] == 0.0 and r["denoise"] > 0 for r in dropped.losses)
    pictures = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    reg = RegularizationSet(pictures, ["a dog on grass", "a dog in snow"])
    ckpt = tmp_path / "dog.training"
    train_customization(backbone, reference, _config(steps=2, reference_dropout=0.5), checkpoint=ckpt,
                        regularization=reg)
    for other in (RegularizationSet(pictures.flip(0), reg.captions), None):
        with pytest.raises(TrainingError, match=r"other regularization pictures or captions \(or without them\)"):
            train_customization(backbone, reference, _config(steps=3, reference_dropout=0.5), checkpoint=ckpt,
                                regularization=other)
    assert subject_of(ckpt) == reference_digest(reference)  # still the subject's file, whatever the regularization
    with pytest.raises(TrainingError, match=r"2 regularization images but 1 captions"):
        train_customization(backbone, reference, _config(), regularization=RegularizationSet(pictures, ["x"]))
    with pytest.raises(TrainingError, match=r"regularization images are 32x32, the photos 64x64"):
        train_customization(backbone, reference, _config(),
                            regularization=RegularizationSet(pictures[..., :32, :32], reg.captions))


def test_a_host_running_under_inference_mode_still_trains(backbone, uninterrupted):
    """ComfyUI executes every node under torch.inference_mode; training switches it off for itself."""
    with torch.inference_mode():
        reference = _reference_set()  # inference tensors, as a node's inputs are
        result = train_customization(backbone, reference, _config())
    _assert_same_customization(result.customization, uninterrupted.customization)


def test_weights_created_under_inference_mode_train_like_any_other(uninterrupted, reference):
    """A host's models are loaded under inference mode (ComfyUI's Load Checkpoint, LoRA patching): training runs
    on per-run views whose tensors alias them as ordinary tensors, with the same result and no copy."""
    frozen = tiny_backbone(seed=0)
    with torch.inference_mode():  # what a host's move to its device does to every tensor
        for module in (frozen.unet, frozen.vae, frozen.text_encoder):
            module._apply(lambda t: t.clone())
    assert all(p.is_inference() for p in frozen.unet.parameters())
    result = train_customization(frozen, reference, _config())
    _assert_same_customization(result.customization, uninterrupted.customization)
    assert all(p.is_inference() for p in frozen.unet.parameters())  # still the host's own tensors
