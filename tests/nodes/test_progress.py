"""Progress for long node loops (every update an interrupt checkpoint) and the sampler's latent previews through
ComfyUI's previewer, as KSampler sends them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mvcustom_core.backbone.tiny import tiny_backbone
from mvcustom_core.trajectories import make_trajectory

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def bars(host):
    instances = host["comfy.utils"].ProgressBar.instances
    before = len(instances)
    return lambda: instances[before:]


@pytest.fixture
def previews(host):
    lp = host["latent_preview"]
    lp.enabled, lp.made[:] = True, []
    yield lp
    lp.enabled = False


def _text(seed):
    return [[torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(seed)), {}]]


def test_sampler_sends_a_latent_preview_of_the_frames_each_step(node, run, bars, previews):
    cams = make_trajectory("orbit", 5, image_size=(64, 48), fov_y_deg=50.0, radius=1.8)
    backbone = SimpleNamespace(unet=tiny_backbone(0).unet.eval())
    run(node("MVC_MVCustomSampler"), model=backbone, trajectory=cams, positive=_text(1), negative=_text(2), seed=0,
        steps=3, cfg=2.0, pose_ratio=1.0, window=16, overlap=4)
    (bar,) = [b for b in bars() if b.total == 3]
    assert bar.current == 3 and [p[0] for p in bar.previews] == ["JPEG"] * 3
    (previewer,) = previews.made
    assert type(previewer.latent_format).__name__ == "SD15"  # SD1.x latent colours, as KSampler's for SD1.5
    # five 8x6 latent frames tiled 3 across, 2 down: [1, 4, 2·8, 3·6]
    assert [tuple(x.shape) for x in previewer.latents] == [(1, 4, 16, 18)] * 3
    first = previewer.latents[-1][0]
    assert torch.isfinite(first).all() and first[:, 8:, 12:].abs().sum() == 0  # the sixth tile is empty


def test_sampler_without_previews_still_reports_progress(node, run, bars, host):
    assert not host["latent_preview"].enabled  # ComfyUI's default: --preview-method none
    cams = make_trajectory("orbit", 2, image_size=(32, 32), fov_y_deg=50.0, radius=1.8)
    backbone = SimpleNamespace(unet=tiny_backbone(0).unet.eval())
    run(node("MVC_MVCustomSampler"), model=backbone, trajectory=cams, positive=_text(1), negative=_text(2), seed=0,
        steps=2, cfg=2.0, pose_ratio=1.0, window=16, overlap=4)
    (bar,) = [b for b in bars() if b.total == 2]
    assert bar.previews == [None, None]


def test_trajectory_preview_of_thousands_of_cameras_reports_progress_and_stops_on_cancel(node, run, bars, mm):
    cams = make_trajectory("orbit", 2048)
    run(node("MVC_TrajectoryPreview"), trajectory=cams, width=256, height=256, title="")
    (bar,) = bars()
    assert (bar.total, bar.current) == (2, 2)
    mm.interrupt_requested = True
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(node("MVC_TrajectoryPreview"), trajectory=cams, width=256, height=256, title="")
    finally:
        mm.interrupt_requested = False


def test_decode_and_export_report_per_chunk_and_file(node, run, bars, comfy_dirs):
    backbone = tiny_backbone(0)
    latent = {"samples": torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(0))}
    (images,) = run(node("MVC_DecodeLatent"), backbone=backbone, latent=latent).args
    (bar,) = bars()
    assert (bar.total, bar.current) == (6, 6)
    cams = make_trajectory("orbit", 6, image_size=tuple(images.shape[1:3]))
    run(node("MVC_ExportViews"), images=images, trajectory=cams)
    assert [(b.total, b.current) for b in bars()[1:]] == [(8, 8)]  # 6 frames, transforms.json, the end
