"""The README's demo: every stage writes its files, and what it writes is what the stage computed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mvcustom_core.cameras import load_camera_file
from mvcustom_core.customization import load_customization
from mvcustom_core.demo import PREVIEW_PRESETS, main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["--out", str(out), "--frames", "4", "--size", "32"]) == 0
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


def test_pipeline_writes_a_loadable_customization_and_exported_cameras(demo_out):
    custom = load_customization(demo_out / "pipeline" / "toy.safetensors")
    assert custom.class_word == "toy" and custom.blocks
    cams = load_camera_file(demo_out / "pipeline" / "export" / "transforms.json")
    assert len(cams) == 4
    radii = cams.centers.norm(dim=-1)
    torch.testing.assert_close(radii, torch.ones_like(radii), rtol=0, atol=1e-5)  # the orbit in the normalized frame
    frames = _png(demo_out / "pipeline" / "frames.png")
    assert frames.shape == (64, 4 * 64 + 3 * 2, 3)
