"""Customization nodes against the core: files written where ComfyUI looks, inputs named in errors, cancel/resume."""

from __future__ import annotations

import importlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from mvcustom_core.backbone.tiny import tiny_backbone
from mvcustom_core.customization.file_format import load_customization
from mvcustom_core.customization.reference_poses import turntable_reference_cameras
from mvcustom_core.customization.training import checkpoint_path_for, load_checkpoint

from .conftest import PACK_NAME, run_node

SMALL = dict(class_word="dog", name="subject", steps=2, frames=2, references=1, samples=4, seed=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def nodes(pack, host, comfy_dirs, tmp_path, monkeypatch):
    """The node module, with ComfyUI's models folder pointed at a fresh temporary folder."""
    monkeypatch.setattr(host["folder_paths"], "models_dir", str(tmp_path / "models"), raising=False)
    return importlib.import_module(f"{PACK_NAME}.nodes.customization")


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone(seed=0)


@pytest.fixture(scope="module")
def photos(subject_turntable):
    render, cams = subject_turntable(4)
    return render.rgb.permute(0, 2, 3, 1).contiguous(), render.mask[:, 0].contiguous(), cams


def test_train_writes_customization_and_embedding_that_the_loader_lists(nodes, backbone, photos, tmp_path, caplog):
    images, masks, cams = photos
    caplog.set_level("INFO")
    cust, prompt = run_node(nodes.TrainCustomization, backbone=backbone, images=images, masks=masks,
                            cameras=cams, **SMALL).args
    models = tmp_path / "models"
    path = models / "mvcustom" / "subject.safetensors"
    assert path.is_file() and prompt == "photo of a embedding:subject dog"
    emb = load_file(str(models / "embeddings" / "subject.safetensors"))
    assert list(emb) == ["emb_params"] and torch.equal(emb["emb_params"], cust.token_embedding)
    assert cust.training["steps_done"] == 2 and cust.ref_cams.num_frames == 4  # bank: min(8, 4 photos)
    logged = [r.getMessage() for r in caplog.records if "TrainCustomization: step" in r.getMessage()]
    assert logged[-1].startswith("TrainCustomization: step 2/2 total ")  # loss reported with progress

    # A motion module kept in the same folder is not offered as a customization.
    save_file({"down_blocks.0.motion_modules.0.weight": torch.zeros(2)}, str(models / "mvcustom" / "mm.safetensors"))
    assert nodes.list_customizations() == ["subject.safetensors"]
    loaded, loaded_prompt = run_node(nodes.LoadCustomization, customization="subject.safetensors").args
    assert loaded_prompt == prompt
    for name in cust.blocks:
        assert torch.equal(loaded.references[name], cust.references[name])
    assert torch.equal(loaded.token_embedding, load_customization(path).token_embedding)


def test_bad_inputs_are_named(nodes, backbone, photos):
    images, masks, cams = photos
    train = nodes.TrainCustomization
    base = dict(backbone=backbone, images=images, masks=masks, cameras=cams, **SMALL)
    cases = [
        (dict(images=images[:1], masks=masks[:1], cameras=cams[:1]), "input 'images'.*1 reference image"),
        (dict(cameras=cams[:3]), "input 'cameras'.*3 cameras for 4 images"),
        (dict(masks=torch.cat([masks[:3], torch.zeros_like(masks[:1])])), r"input 'masks'.*masks\[3\] is all zero"),
        (dict(masks=torch.ones_like(masks)), r"input 'masks'.*all one"),
        (dict(images=images[:, :60, :60], masks=masks[:, :60, :60]), "input 'images'.*multiples of 8"),
        (dict(name="../escape"), "input 'name'"),
        (dict(class_word=" "), "input 'class_word'"),
        (dict(backbone=object()), "input 'backbone'"),
        (dict(bg_weight=-1.0), "input 'bg_weight'.*≥ 0"),
        (dict(reference_dropout=1.5), r"input 'reference_dropout'.*must be in \[0, 1\]"),
        (dict(regularization_images=images[:2], regularization_captions="a dog\na cat\na cow"),
         r"input 'regularization_captions' must hold one caption per regularization picture \(2\)"),
        (dict(regularization_images=images[:2, :32, :32], regularization_captions="a dog"),
         r"input 'regularization_images'.*are 32x32, the photos 64x64"),
    ]
    for override, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            run_node(train, **{**base, **override})
    with pytest.raises(ValueError, match="input 'customization' must name a customization file in models/mvcustom"):
        run_node(nodes.LoadCustomization, customization="absent.safetensors")


def test_cancel_keeps_a_checkpoint_and_the_next_run_resumes(nodes, backbone, photos, mm, tmp_path):
    images, masks, cams = photos
    args = dict(backbone=backbone, images=images, masks=masks, cameras=cams, **SMALL)
    ckpt = checkpoint_path_for(tmp_path / "models" / "mvcustom" / "subject.safetensors")
    mm.interrupt_requested = True  # the user pressed Cancel: seen at the first progress update
    with pytest.raises(mm.InterruptProcessingException):
        run_node(nodes.TrainCustomization, **args)
    assert load_checkpoint(ckpt)["step"] == 1
    assert not (tmp_path / "models" / "mvcustom" / "subject.safetensors").exists()
    cust, _ = run_node(nodes.TrainCustomization, **args).args
    assert cust.training["steps_done"] == 2 and load_checkpoint(ckpt)["step"] == 2


def test_reference_cameras_node_matches_the_core_turntable(nodes, photos):
    images, _, _ = photos
    (cams,) = run_node(nodes.ReferenceCameras, images=images, mode="turntable", elevation_deg=30.0,
                       fov_y_deg=45.0, start_azimuth_deg=10.0, clockwise=False).args
    expected = turntable_reference_cameras(4, (64, 64), elevation_deg=30.0, fov_y_deg=45.0, start_azimuth_deg=10.0)
    torch.testing.assert_close(cams.c2w, expected.c2w)
    torch.testing.assert_close(cams.K, expected.K)
    with pytest.raises(ValueError, match="input 'images'.*at least 2"):
        run_node(nodes.ReferenceCameras, images=images[:1], mode="turntable", elevation_deg=30.0,
                 fov_y_deg=45.0, start_azimuth_deg=0.0, clockwise=False)
