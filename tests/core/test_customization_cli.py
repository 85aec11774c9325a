"""CLI: photos + masks on disk → customization file and ComfyUI embedding; bad input exits 2 naming it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mvcustom_core.cameras import save_camera_file
from mvcustom_core.customization.cli import main, read_photos, read_regularization
from mvcustom_core.customization.file_format import load_customization
from mvcustom_core.files import save_png
from mvcustom_core.synthetic import turntable_cameras


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def photo_folders(tmp_path, subject_turntable):
    render, _ = subject_turntable(4)
    images, masks = tmp_path / "photos", tmp_path / "masks"
    for i in range(4):
        save_png(render.rgb[i], images / f"view_{i:02}.png")
        save_png(render.mask[i], masks / f"view_{i:02}.png")
    return images, masks, render


def test_read_photos_matches_the_rendered_pixels_to_8_bits(photo_folders):
    images, masks, render = photo_folders
    photos, mask_list = read_photos(images, masks)
    assert len(photos) == 4 and photos[0].shape == (3, 64, 64) and mask_list[0].shape == (1, 64, 64)
    torch.testing.assert_close(torch.stack(photos), render.rgb, rtol=0, atol=0.5 / 255 + 1e-6)
    torch.testing.assert_close(torch.stack(mask_list), render.mask, rtol=0, atol=0)


def test_train_writes_the_customization_and_embedding_then_info_describes_it(photo_folders, tmp_path, capsys):
    images, masks, _ = photo_folders
    out, emb = tmp_path / "models" / "subject.safetensors", tmp_path / "embeddings" / "subject.safetensors"
    code = main(["train", "--images", str(images), "--masks", str(masks), "--turntable", "--elevation", "20",
                 "--fov", "45", "--tiny", "--class-word", "dog", "--steps", "2", "--frames", "2",
                 "--references", "1", "--bank-views", "2", "--samples", "4", "--checkpoint-every", "1",
                 "--out", str(out), "--embedding", str(emb)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "step 2/2" in printed and f"embedding:{emb.stem}" in printed
    c = load_customization(out)
    assert c.class_word == "dog" and c.ref_cams.num_frames == 2 and c.training["steps_done"] == 2
    assert torch.equal(load_file(str(emb))["emb_params"], c.token_embedding)
    assert (out.parent / "subject.safetensors.training").is_file()
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["prompt"] == "photo of a <mvc-subject> dog" and info["reference_views"] == 2


def test_bad_inputs_exit_2_with_a_message_naming_them(photo_folders, tmp_path, capsys):
    images, masks, _ = photo_folders
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes((images / "view_00.png").read_bytes())
    common = ["--turntable", "--tiny", "--class-word", "dog", "--out", str(tmp_path / "x.safetensors")]
    assert main(["train", "--images", str(one), "--masks", str(masks)] + common) == 2
    assert "--masks: 4 mask files for 1 photos" in capsys.readouterr().err
    assert main(["train", "--images", str(images)] + common) == 2
    assert "no alpha channel" in capsys.readouterr().err
    assert main(["train", "--images", str(images), "--masks", str(masks), "--steps", "0"] + common) == 2
    assert "steps must be" in capsys.readouterr().err
    three = save_camera_file(turntable_cameras(3, image_size=(64, 64)), tmp_path / "transforms.json")
    assert main(["train", "--images", str(images), "--masks", str(masks), "--cameras", str(three), "--tiny",
                 "--class-word", "dog", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "cameras: 3 cameras for 4 images" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "absent.safetensors")]) == 2
    assert "no such customization file" in capsys.readouterr().err


def test_regularization_folder_reads_pictures_with_their_captions(photo_folders, tmp_path, capsys):
    images, masks, render = photo_folders
    reg = tmp_path / "reg"
    save_png(render.rgb[0], reg / "b.png")
    save_png(render.rgb[1], reg / "a.png")
    (reg / "a.txt").write_text("a dog on grass\n")
    (reg / "b.txt").write_text("\ufeffa dog in snow")  # a byte-order mark (Notepad) is not part of the caption
    pictures = read_regularization(reg, (32, 32))
    assert pictures.captions == ["a dog on grass", "a dog in snow"] and pictures.images.shape == (2, 3, 32, 32)
    common = ["train", "--images", str(images), "--masks", str(masks), "--turntable", "--tiny", "--class-word",
              "dog", "--steps", "1", "--frames", "1", "--references", "1", "--bank-views", "1", "--samples", "4",
              "--reference-dropout", "1", "--out", str(tmp_path / "x.safetensors")]
    assert main(common + ["--regularization", str(reg)]) == 0
    (reg / "a.txt").unlink()
    assert main(common + ["--regularization", str(reg)]) == 2
    assert "--regularization: a.png has no caption file a.txt" in capsys.readouterr().err
