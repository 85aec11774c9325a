"""Every file input of every node resolves inside its own ComfyUI folder, refusing the rest with one message that
tells nothing about the server's files; writes never replace a file the pack did not write for the same subject."""

from __future__ import annotations

import hashlib
import importlib
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mvcustom_core.customization.training import checkpoint_path_for
from mvcustom_core.trajectories import make_trajectory

from .conftest import PACK_NAME, run_node
from .test_customization_nodes import backbone, photos  # noqa: F401  (fixtures: the tiny backbone, 4 subject views)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

SMALL = dict(class_word="dog", steps=1, frames=2, references=1, samples=4, seed=3)


@pytest.fixture
def world(host, comfy_dirs, tmp_path, monkeypatch, realestate_pose_files):
    """ComfyUI's folders in tmp_path with a readable file of each kind *outside* them, and links leading out."""
    models = tmp_path / "models"
    monkeypatch.setattr(host["folder_paths"], "models_dir", str(models), raising=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    poses = outside / "poses.txt"
    shutil.copy(realestate_pose_files[0], poses)
    inp = comfy_dirs["input"]
    shutil.copy(realestate_pose_files[0], inp / "good.txt")
    (inp / "link_out.txt").symlink_to(poses)
    (inp / "dir_out").symlink_to(outside, target_is_directory=True)
    return dict(input=inp, output=comfy_dirs["output"], models=models, outside=outside, poses=poses)


def _bad_names(world, name):
    """Names that must all be refused alike: absolute, climbing out, NUL, links out, missing."""
    outside = world["outside"] / name
    return [str(outside), f"../outside/{name}", f"../../{world['outside'].parent.name}/outside/{name}",
            f"{name}\0.txt", "link_out.txt", f"dir_out/{name}", "no_such_file.txt", "C:\\\\x\\" + name]


def _refused_alike(execute, validate, names: list[str], pattern: str) -> dict[str, str]:
    """Every name refused by ``execute(name)`` with ``pattern`` and the same words at queue time (``validate``),
    the messages differing only in the echoed value: nothing tells whether or why a name exists."""
    messages = {}
    for name in names:
        with pytest.raises(ValueError, match=pattern) as raised:
            execute(name)
        messages[name] = str(raised.value)
        assert validate(name) == messages[name]
    shapes = {m.replace(repr(v[:120]), "<value>") for v, m in messages.items()}
    assert len(shapes) == 1, shapes
    return messages


def test_load_trajectory_refuses_everything_outside_the_input_folder_alike(node, run, world):
    load = node("MVC_LoadTrajectory")
    assert len(run(load, file="good.txt").args[0]) > 1
    names = _bad_names(world, "poses.txt")
    messages = _refused_alike(lambda name: run(load, file=name), lambda name: load.validate_inputs(file=name), names,
                              r"^MVCustom Load Trajectory: input 'file' must name a camera file or COLMAP folder in "
                              r"ComfyUI's input folder; ")
    assert all(load.fingerprint_inputs(file=name, format="auto") == name for name in names)  # no error, no read
    assert all(str(world["input"]) not in m.replace(repr(v), "") for v, m in messages.items())


def test_output_annotation_reads_inside_the_output_folder_only(node, run, world):
    load = node("MVC_LoadTrajectory")
    shutil.copy(world["poses"], world["output"] / "saved.txt")
    assert len(run(load, file="saved.txt [output]").args[0]) > 1
    with pytest.raises(ValueError, match=r"input 'file' must name a camera file or COLMAP folder in ComfyUI's "
                                         r"output folder; '\.\./outside/poses\.txt \[output\]' is not one"):
        run(load, file="../outside/poses.txt [output]")


def test_wrong_format_for_a_good_file_names_format(node, run, world):
    load = node("MVC_LoadTrajectory")
    with pytest.raises(ValueError, match=r"^MVCustom Load Trajectory: input 'format' does not fit 'good\.txt': good\.txt "
                                         r"is not part of a COLMAP model") as raised:
        run(load, file="good.txt", format="colmap")
    assert "cameras.txt: file not found" not in str(raised.value) and str(world["input"]) not in str(raised.value)
    (world["input"] / "model").mkdir()
    (world["input"] / "model" / "cameras.txt").write_text("# empty\n")
    with pytest.raises(ValueError, match=r"^MVCustom Load Trajectory: input 'format' does not fit 'model': model is a "
                                         r"folder; format 'realestate10k' reads a single file"):
        run(load, file="model", format="realestate10k")


def test_load_customization_refuses_a_file_outside_models(node, run, world):
    from mvcustom_core.customization.file_format import FORMAT_NAME

    save_file({"x": torch.zeros(1)}, str(world["outside"] / "subject.safetensors"), metadata={"format": FORMAT_NAME})
    load = importlib.import_module(f"{PACK_NAME}.nodes.customization").LoadCustomization
    _refused_alike(lambda name: run_node(load, customization=name),
                   lambda name: load.validate_inputs(customization=name), _bad_names(world, "subject.safetensors"),
                   r"^MVCustom Load Customization: input 'customization' must name a customization file in "
                   r"models/mvcustom; ")


def test_corrupt_customization_is_named_without_server_paths(node, run, world):
    folder = world["models"] / "mvcustom"
    folder.mkdir(parents=True)
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    nodes = importlib.import_module(f"{PACK_NAME}.nodes.customization")
    with pytest.raises(ValueError, match=r"^MVCustom Load Customization: input 'customization' 'broken\.safetensors' "
                                         r"could not be read as an MVCustom customization: ") as raised:
        run_node(nodes.LoadCustomization, customization="broken.safetensors")
    assert str(world["models"]) not in str(raised.value)


def test_load_backbone_refuses_files_outside_its_model_folders(node, run, world):
    (world["outside"] / "sd.safetensors").write_bytes(b"")
    load = node("MVC_LoadBackbone")
    for name in (str(world["outside"] / "sd.safetensors"), "../outside/sd.safetensors", "sd.safetensors\0"):
        with pytest.raises(ValueError, match=r"^MVCustom Load Backbone: input 'checkpoint' must name a model file in "
                                             r"models/checkpoints; "):
            run(load, checkpoint=name, motion_module="mm.safetensors")


def test_evaluation_model_folders_stay_in_models(node, run, world):
    frames = torch.rand(2, 32, 32, 3)
    cams = make_trajectory("orbit", 2, image_size=(32, 32))
    (world["outside"] / "clip").mkdir()
    for name in (str(world["outside"] / "clip"), "../outside/clip", "dir_out"):
        with pytest.raises(ValueError, match=r"^MVCustom Evaluate Views: input 'clip_folder' must name a model folder "
                                             r"in models/mvcustom_eval; "):
            run(node("MVC_EvaluateViews"), images=frames, trajectory=cams, pose_accuracy=False, clip_folder=name)


def test_save_refuses_a_linked_subfolder_that_leads_outside(node, run, world):
    (world["output"] / "escape").symlink_to(world["outside"], target_is_directory=True)
    cams = make_trajectory("static", 1)
    for prefix in ("escape/traj", "escape/deeper/traj", "/abs/traj", "a\0/traj"):
        with pytest.raises(ValueError, match=r"^MVCustom Save Trajectory: input 'filename_prefix' must be a path "
                                             r"inside ComfyUI's output folder"):
            run(node("MVC_SaveTrajectory"), trajectory=cams, filename_prefix=prefix, format="realestate10k")
    assert sorted(p.name for p in world["outside"].iterdir()) == ["poses.txt"]  # nothing made outside


# ------------------------------------------------------------------------------------------------ training
def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def views(photos):
    images, masks, cameras = photos
    return dict(images=images, masks=masks, cameras=cameras)


def test_training_never_replaces_a_file_it_did_not_write_for_this_subject(node, world, backbone, views):
    train = node("MVC_TrainCustomization")
    embeddings = world["models"] / "embeddings"
    embeddings.mkdir(parents=True)
    precious = embeddings / "precious.safetensors"
    save_file({"emb_params": torch.ones(1, 32)}, str(precious))  # a user's own embedding of that name
    before = _digest(precious)
    with pytest.raises(ValueError, match=r"^MVCustom Train Customization: input 'name' would replace "
                                         r"models/embeddings/precious\.safetensors, which MVCustom did not write for "
                                         r"this subject; choose another name or turn on 'overwrite'"):
        run_node(train, backbone=backbone, name="precious", **views, **SMALL)
    assert _digest(precious) == before
    assert not (world["models"] / "mvcustom" / "precious.safetensors").exists()  # refused before any work
    assert not checkpoint_path_for(world["models"] / "mvcustom" / "precious.safetensors").exists()

    run_node(train, backbone=backbone, name="precious", overwrite=True, **views, **SMALL)  # explicit: replaced
    assert load_file(str(precious))["emb_params"].shape == (1, 32) and _digest(precious) != before
    first = _digest(precious)
    run_node(train, backbone=backbone, name="precious", **views, **{**SMALL, "steps": 2})  # same photos: its own
    assert _digest(precious) != first

    other = {**views, "images": views["images"].flip(0), "masks": views["masks"].flip(0)}
    with pytest.raises(ValueError, match=r"input 'name' would replace models/mvcustom/precious\.safetensors, "
                                         r"models/embeddings/precious\.safetensors"):
        run_node(train, backbone=backbone, name="precious", resume=False, **other, **SMALL)  # another subject


def test_training_name_and_resume_errors_name_their_input(node, world, backbone, views):
    train = node("MVC_TrainCustomization")
    for bad in ("with\0nul", "../up", "a/b", ".hidden", "  ", "v2:stream", "nul"):
        with pytest.raises(ValueError, match=r"^MVCustom Train Customization: input 'name' must be a plain file name"):
            run_node(train, backbone=backbone, name=bad, **views, **SMALL)
    ckpt = checkpoint_path_for(world["models"] / "mvcustom" / "subj.safetensors")
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(ValueError, match=r"^MVCustom Train Customization: input 'resume' is invalid: "
                                         r"models/mvcustom/subj\.safetensors\.training: not a readable training "
                                         r"checkpoint") as raised:
        run_node(train, backbone=backbone, name="subj", resume=True, **views, **SMALL)
    assert str(world["models"]) not in str(raised.value)
    with pytest.raises(ValueError, match=r"input 'name' would replace models/mvcustom/subj\.safetensors\.training"):
        run_node(train, backbone=backbone, name="subj", resume=False, **views, **SMALL)  # not ours either
    assert ckpt.read_bytes() == b"PK\x03\x04 not a checkpoint"


def test_training_with_regularization_pictures_replaces_its_own_checkpoint(node, world, backbone, views):
    """A checkpoint also records the regularization pictures it was trained with; it still belongs to its subject,
    so training the same subject again without resuming replaces it instead of refusing it as someone else's."""
    train = node("MVC_TrainCustomization")
    regularization = dict(regularization_images=views["images"][:2].flip(-1), regularization_captions="a dog",
                          reference_dropout=1.0)
    run_node(train, backbone=backbone, name="reg", **views, **SMALL, **regularization)
    ckpt = checkpoint_path_for(world["models"] / "mvcustom" / "reg.safetensors")
    first = _digest(ckpt)
    run_node(train, backbone=backbone, name="reg", resume=False, **views, **{**SMALL, "seed": 4}, **regularization)
    assert _digest(ckpt) != first
    other = {**regularization, "regularization_captions": "a cat"}
    with pytest.raises(ValueError, match=r"^MVCustom Train Customization: input 'resume' is invalid: .*other "
                                         r"regularization pictures or captions"):
        run_node(train, backbone=backbone, name="reg", resume=True, **views, **{**SMALL, "seed": 4, "steps": 2},
                 **other)
    run_node(train, backbone=backbone, name="reg", resume=True, **views, **{**SMALL, "seed": 4, "steps": 2},
             **regularization)  # the same set resumes
    assert torch.load(ckpt, weights_only=True)["step"] == 2
