"""The README's demo: every stage writes its files, and what it writes is what the stage computed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mvcustom_core.cameras import load_camera_file
from mvcustom_core.customization import load_customization
from mvcustom_core.demo import DEMO_WORLD, PREVIEW_PRESETS, main, step_printer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # Few customization and sampler steps: the test checks what is written, the pictures are docs/tiny_world.md's.
    assert main(["--out", str(out), "--frames", "4", "--size", "32", "--customize-steps", "2",
                 "--sample-steps", "3"]) == 0
    return out


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_trajectory_previews_are_pictures(demo_out):
    for name in PREVIEW_PRESETS:
        picture = _png(demo_out / "trajectories" / f"{name}.png")
        assert picture.shape == (480, 480, 3) and picture.std() > 10  # frustums drawn, not a blank canvas


def test_synthetic_and_dfr_grids_show_the_subject_and_the_disocclusions(demo_out):
    rgb, mask = _png(demo_out / "synthetic" / "rgb.png"), _png(demo_out / "synthetic" / "mask.png")
    assert rgb.shape == mask.shape == (32, 4 * 32 + 3 * 2, 3)
    subject = mask[..., 0] > 127
    assert 0.02 < subject.mean() < 0.8
    coverage = _png(demo_out / "dfr" / "coverage.png")[..., 0] > 127
    geometry = _png(demo_out / "synthetic" / "depth.png").sum(-1) > 30  # colour-mapped depth; the sky is black
    assert not (coverage & ~geometry).any()  # the sky is no geometry: never covered
    tiles = [slice(i * 34, i * 34 + 32) for i in range(4)]
    seen = [(coverage[:, t] & geometry[:, t]).sum() / geometry[:, t].sum() for t in tiles]
    # The anchor (middle frame, index 2) sees most of itself (grazing ground and depth edges are culled);
    # every other view has regions the anchor cannot see.
    assert seen[2] > 0.6 and all(seen[2] > seen[i] + 0.1 for i in (0, 1, 3))


def test_pipeline_customizes_samples_exports_and_scores_a_held_out_world(demo_out):
    from mvcustom_core.eval.reprojection import MAX_PSNR_DB
    from mvcustom_core.eval.world_ablation import make_case

    case = make_case(DEMO_WORLD)
    folder = demo_out / "pipeline"
    custom = load_customization(folder / f"{case.spec.category}.safetensors")
    assert custom.class_word == case.spec.category and custom.blocks
    from mvcustom_core.backbone.tiny_world import load_tiny_world_pose_prior
    from mvcustom_core.customization.training import pose_weights_digest

    from mvcustom_core.eval.world_ablation import CUSTOMIZE_LR

    assert custom.training["pose_init"] == pose_weights_digest(load_tiny_world_pose_prior().weights)
    assert custom.training["config"]["lr"] == custom.training["config"]["token_lr"] == CUSTOMIZE_LR
    cams = load_camera_file(folder / "export" / "transforms.json")
    assert len(cams) == 8
    torch.testing.assert_close(cams.c2w.float(), case.targets.c2w.float(), rtol=0, atol=1e-5)  # the world's orbit
    assert _png(folder / "frames.png").shape == (64, 8 * 64 + 7 * 2, 3)
    truth = _png(folder / "ground_truth.png")
    tiles = np.stack([truth[:, i * 66:i * 66 + 64] for i in range(8)]).astype(np.float64) / 255
    expected = case.truth.rgb.permute(0, 2, 3, 1).numpy()
    assert np.abs(tiles - expected).max() <= 1 / 255 + 1e-6
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["prompt"] == case.prompt()
    true = scores["ground_truth"]  # the true views scored like generated ones: every score at its best
    assert true["background_psnr"] == MAX_PSNR_DB and true["background_ssim"] > 0.999
    assert true["subject_iou"] > 0.8 and true["azimuth_error_deg"] < 1.0
    for name in ("mvcustom", "customization_only"):
        assert set(scores[name]) == set(true)
        assert 0.0 <= scores[name]["subject_iou"] <= 1.0 and 5.0 < scores[name]["background_psnr"] < MAX_PSNR_DB


def test_pipeline_refuses_a_training_world():
    with pytest.raises(SystemExit):
        main(["--world", "1000"])


def test_the_customization_prints_its_progress(capsys):
    report = step_printer("customization", every=25)
    for done in range(1, 61):
        report(done, 60, {"total": 0.5})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0].strip() for line in lines] == [
        "customization: step 25/60", "customization: step 50/60", "customization: step 60/60"]
    assert all("loss 0.5000" in line for line in lines)
