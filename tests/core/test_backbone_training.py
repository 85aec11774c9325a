"""Backbone-stage training on the tiny backbone: data layout, sampling, frozen layers, loss, stop/resume, export."""

from __future__ import annotations

import copy
import json
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from mvcustom_core.backbone.dense_attention import dense_attention_window
from mvcustom_core.backbone.motion_module import (ATTENTION_WINDOW_KEY, inspect_motion_module, load_motion_module,
                                                  trained_attention_window)
from mvcustom_core.backbone.loading import open_state_file, shipped_config
from mvcustom_core.backbone.tiny import tiny_backbone
from mvcustom_core.backbone.training import (
    TrainConfig,
    diffusion_loss,
    find_checkpoints,
    freeze_for_motion_training,
    motion_state_dict,
    sample_noise,
    save_motion_module,
    train_motion_module,
    _encode_batch,
    _noise_scheduler,
)
from mvcustom_core.backbone.video_data import (
    StepSampler,
    VideoClipDataset,
    VideoDataError,
    collate_clips,
    scan_clips,
)

SIZE = 32  # pixels -> 4x4 latents at the top UNet level, 2x2 below


def moving_square(frames: int, shift: int, width: int = SIZE, height: int = SIZE) -> list[np.ndarray]:
    out = []
    for f in range(frames):
        a = np.full((height, width, 3), 40, np.uint8)
        x = (4 + 4 * f + shift) % (width - 8)
        a[8:16, x:x + 8] = (230, 120, 20)
        out.append(a)
    return out


def write_clip(folder, frames: list[np.ndarray], names=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(frames):
        Image.fromarray(a).save(folder / (names[i] if names else f"{i:03d}.png"))


@pytest.fixture
def clip_root(tmp_path):
    root = tmp_path / "clips"
    for c in range(2):
        write_clip(root / f"clip{c}", moving_square(5, 3 * c))
        (root / f"clip{c}.txt").write_text(f"square {c}\n")
    return root


@pytest.fixture(scope="module")
def tiny():
    return tiny_backbone(seed=0)


def small_config(**kw) -> TrainConfig:
    base = dict(steps=6, learning_rate=1e-3, window_start=1, window_end=3, window_steps=4, checkpoint_every=0,
                weight_decay=0.0, seed=3)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------ data
def test_captions_from_sidecar_csv_and_jsonl(tmp_path):
    a = tmp_path / "sidecar"
    write_clip(a / "x", moving_square(2, 0))
    write_clip(a / "y", moving_square(2, 1))
    (a / "x.txt").write_text(" a dog \n")
    (a / "y" / "caption.txt").write_text("a cat")
    assert [(c.name, c.caption) for c in scan_clips(a)] == [("x", "a dog"), ("y", "a cat")]

    b = tmp_path / "csv"
    write_clip(b / "set" / "x", moving_square(2, 0))
    (b / "captions.csv").write_text('clip,caption\nset/x,"red, running"\n')
    assert [(c.name, c.caption) for c in scan_clips(b)] == [("set/x", "red, running")]

    w = tmp_path / "webvid"  # WebVid's metadata CSV, videos extracted to frame folders
    write_clip(w / "1066" / "31147", moving_square(2, 0))
    write_clip(w / "2" / "77", moving_square(2, 0))
    (w / "captions.csv").write_text("videoid,contentUrl,duration,page_dir,name\n"
                                    "31147,https://x/31147.mp4,PT00H00M12S,1066,Aerial shot of a bay\n"
                                    "77,https://x/77.mp4,PT00H00M09S,2,\"Dog runs, slow motion\"\n")
    assert [(k.name, k.caption) for k in scan_clips(w)] == [("2/77", "Dog runs, slow motion"),
                                                             ("1066/31147", "Aerial shot of a bay")]

    c = tmp_path / "jsonl"
    write_clip(c / "x", moving_square(2, 0))
    (c / "captions.jsonl").write_text(json.dumps({"video": "x", "text": "blue"}) + "\n\n")
    assert [(k.name, k.caption) for k in scan_clips(c)] == [("x", "blue")]


def test_frames_in_natural_order(tmp_path):
    frames = moving_square(3, 0)
    write_clip(tmp_path / "c", frames, names=["f10.png", "f2.jpg", "f1.png"])
    write_clip(tmp_path / ".ipynb_checkpoints", frames)  # hidden folders are no clips
    (tmp_path / "c.txt").write_text("x")
    (clip,) = scan_clips(tmp_path)
    assert [p.name for p in clip.frames] == ["f1.png", "f2.jpg", "f10.png"]


def test_scan_errors_name_the_problem(tmp_path):
    write_clip(tmp_path / "a", moving_square(2, 0))
    with pytest.raises(VideoDataError, match=r"1 clips have no caption.*\['a'\]"):
        scan_clips(tmp_path)
    assert scan_clips(tmp_path, default_caption="")[0].caption == ""
    (tmp_path / "a.txt").write_text("ok")
    (tmp_path / "b.mp4").write_bytes(b"\0")
    try:
        import av  # noqa: F401
    except ImportError:
        with pytest.raises(VideoDataError, match=r"b\.mp4.*need PyAV"):
            scan_clips(tmp_path)
        assert [c.name for c in scan_clips(tmp_path, videos="skip")] == ["a"]
    (tmp_path / "captions.csv").write_text("clip,notes\na,x\n")
    with pytest.raises(VideoDataError, match=r"captions\.csv:2: needs a clip field"):
        scan_clips(tmp_path, videos="skip")
    with pytest.raises(VideoDataError, match="dataset folder not found"):
        scan_clips(tmp_path / "missing")


def test_item_is_the_centre_crop_scaled_to_minus_one_one(tmp_path):
    frames = [np.random.default_rng(i).integers(0, 256, (32, 48, 3), dtype=np.uint8) for i in range(6)]
    write_clip(tmp_path / "c", frames)
    (tmp_path / "c.txt").write_text("wide")
    dataset = VideoClipDataset(scan_clips(tmp_path), num_frames=3, size=(32, 32), stride=2)
    item = dataset[(0, 7)]
    # 6 frames, 3 wanted 2 apart: span 5, start in {0, 1}.
    start = dataset.frame_indices(6, torch.Generator().manual_seed(7))[0]
    assert start in (0, 1)
    expected = torch.stack([torch.from_numpy(frames[start + 2 * i][:, 8:40]).permute(2, 0, 1) for i in range(3)])
    torch.testing.assert_close(item["pixels"], expected.float() / 255 * 2 - 1, atol=1e-6, rtol=0)
    assert item["caption"] == "wide"
    # A stride too long for the clip is lowered so the frames still fit.
    for seed in range(8):
        picks = dataset.frame_indices(4, torch.Generator().manual_seed(seed))
        assert picks in ([0, 1, 2], [1, 2, 3])


def test_short_clips_are_left_out_with_a_warning(clip_root):
    write_clip(clip_root / "short", moving_square(2, 0))
    (clip_root / "short.txt").write_text("s")
    with pytest.warns(UserWarning, match=r"fewer than 4 frames.*short"):
        dataset = VideoClipDataset(scan_clips(clip_root), num_frames=4, size=(SIZE, SIZE))
    assert dataset.fingerprint() == ["clip0", "clip1"]


def test_step_sampler_partitions_epochs_and_resumes_mid_stream():
    n, batch, steps = 5, 4, 10
    whole = StepSampler(n, batch, seed=1, start_step=0, end_step=steps)
    items = list(whole)
    clips = [c for c, _ in items]
    for epoch in range(len(clips) // n):  # every epoch is a permutation of the clips
        assert sorted(clips[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert len({s for _, s in items}) == len(items)  # distinct per-sample seeds
    ranks = [list(StepSampler(n, batch, seed=1, start_step=0, end_step=steps, rank=r, world_size=2))
             for r in range(2)]
    for step in range(steps):
        assert ranks[0][2 * step:2 * step + 2] + ranks[1][2 * step:2 * step + 2] == items[4 * step:4 * step + 4]
    resumed = list(StepSampler(n, batch, seed=1, start_step=7, end_step=steps))
    assert resumed == items[7 * batch:]
    assert list(StepSampler(n, batch, seed=2, start_step=0, end_step=steps)) != items


# -------------------------------------------------------------------------------------------- training
def test_only_motion_modules_train(tiny):
    unet = copy.deepcopy(tiny.unet)
    names = freeze_for_motion_training(unet)
    assert names and all(".motion_modules." in f".{n}" for n in names)
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == set(names)
    assert set(names) == {n for n, _ in unet.named_parameters() if "motion_modules" in n}


def _fixed_eval_loss(backbone, dataset) -> float:
    """Mean loss over both clips and four fixed noise draws (same draws before and after training)."""
    scheduler = _noise_scheduler(small_config())
    total = 0.0
    with torch.no_grad():
        for draw in range(4):
            batch = collate_clips([dataset[(i, 1000 + 10 * draw + i)] for i in range(len(dataset))])
            latents, text = _encode_batch(backbone, batch, torch.device("cpu"), torch.float32)
            noise, timesteps = sample_noise(batch["seed"], latents.shape[1:], 1000)
            total += float(diffusion_loss(backbone.unet, latents, text, scheduler, noise, timesteps))
    return total / 4


def test_loss_decreases_and_spatial_layers_stay_frozen(tiny, clip_root, tmp_path):
    backbone = copy.deepcopy(tiny)
    dataset = VideoClipDataset(scan_clips(clip_root), num_frames=4, size=(SIZE, SIZE))
    before_state = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    from mvcustom_core.backbone.dense_attention import enable_dense_attention

    enable_dense_attention(backbone.unet, 3)  # evaluate both with the final window
    loss_before = _fixed_eval_loss(backbone, dataset)
    result = train_motion_module(backbone, dataset, tmp_path / "run",
                                 small_config(steps=30, window_steps=1, learning_rate=3e-3))
    backbone.unet.eval()
    loss_after = _fixed_eval_loss(backbone, dataset)
    assert result.step == 30 and not result.stopped and len(result.losses) == 30
    # Only the motion modules learn (the random spatial layers stay as they are): measured 0.70x after 30 steps.
    assert loss_after < 0.85 * loss_before, (loss_before, loss_after)
    after_state = backbone.unet.state_dict()
    changed = {k for k in before_state if not torch.equal(before_state[k], after_state[k])}
    assert changed and all(".motion_modules." in f".{k}" for k in changed)
    assert all(not p.requires_grad for p in backbone.vae.parameters())


def test_stop_by_sigterm_then_resume_equals_uninterrupted_run(tiny, clip_root, tmp_path):
    dataset = VideoClipDataset(scan_clips(clip_root), num_frames=4, size=(SIZE, SIZE))
    config = small_config(steps=4, window_steps=2, checkpoint_every=1, keep_checkpoints=2)  # windows 1, 1, 3, 3

    straight = copy.deepcopy(tiny)
    windows_straight = []
    train_motion_module(straight, dataset, tmp_path / "a", config,
                        progress=lambda p: windows_straight.append((p.step, p.window, p.loss)))

    def terminate_at_2(p):
        if p.step == 2:
            signal.raise_signal(signal.SIGTERM)

    first = copy.deepcopy(tiny)
    stopped = train_motion_module(first, dataset, tmp_path / "b", config, progress=terminate_at_2)
    assert stopped.stopped and stopped.step == 2 and stopped.motion_module is None
    assert [c.step for c in find_checkpoints(tmp_path / "b")] == [1, 2]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    resumed = copy.deepcopy(tiny)  # a fresh process: weights come from the checkpoint only
    windows_resumed = []
    done = train_motion_module(resumed, dataset, tmp_path / "b", config,
                               progress=lambda p: windows_resumed.append((p.step, p.window, p.loss)))
    assert done.step == 4 and not done.stopped
    assert [w for _, w, _ in windows_straight] == [1, 1, 3, 3]
    assert windows_resumed == windows_straight[2:]  # same windows and bit-identical losses from step 3 on
    assert dense_attention_window(resumed.unet) == dense_attention_window(straight.unet) == 3
    for name, tensor in motion_state_dict(straight.unet).items():
        torch.testing.assert_close(motion_state_dict(resumed.unet)[name], tensor, atol=1e-6, rtol=0)
    assert [c.step for c in find_checkpoints(tmp_path / "b")] == [3, 4]  # keep_checkpoints=2 pruned 1 and 2


def test_saved_motion_module_loads_with_the_animatediff_loader(tiny, tmp_path):
    unet = copy.deepcopy(tiny.unet)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "motion_modules" in name:
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    path = save_motion_module(unet, tmp_path / "mm.safetensors")
    source = open_state_file(path)
    info = inspect_motion_module(source)
    assert info.layout == "animatediff_motion_module" and info.has_mid_block and info.version == "v2"
    assert all(".temporal_transformer." in k for k in source.keys)
    adapter = load_motion_module(path, config=shipped_config("tiny/motion_adapter"))
    expected = motion_state_dict(unet)
    assert set(adapter.state_dict()) == set(expected)
    for name, tensor in adapter.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_resume_refuses_changed_settings_or_data(tiny, clip_root, tmp_path):
    dataset = VideoClipDataset(scan_clips(clip_root), num_frames=4, size=(SIZE, SIZE))
    train_motion_module(copy.deepcopy(tiny), dataset, tmp_path, small_config(steps=1))
    with pytest.raises(ValueError, match=r"cannot resume with a different learning_rate"):
        train_motion_module(copy.deepcopy(tiny), dataset, tmp_path, small_config(steps=2, learning_rate=5e-4))
    with pytest.raises(ValueError, match=r"the dataset changed"):
        train_motion_module(copy.deepcopy(tiny), VideoClipDataset(dataset.clips[:1], 4, (SIZE, SIZE)), tmp_path,
                            small_config(steps=2))
    with pytest.raises(ValueError, match=r"holds checkpoints"):
        train_motion_module(copy.deepcopy(tiny), dataset, tmp_path, small_config(steps=2), resume=False)
    with pytest.raises(ValueError, match=r"frame size 24x32 .* must be a multiple of 16"):
        train_motion_module(copy.deepcopy(tiny), VideoClipDataset(dataset.clips, 4, (24, 32)), tmp_path / "x",
                            small_config(steps=1))


def test_keyboard_interrupt_checkpoints_the_last_completed_step(tiny, clip_root, tmp_path):
    dataset = VideoClipDataset(scan_clips(clip_root), num_frames=4, size=(SIZE, SIZE))

    def interrupt_at_2(p):
        if p.step == 2:
            raise KeyboardInterrupt

    backbone = copy.deepcopy(tiny)
    result = train_motion_module(backbone, dataset, tmp_path, small_config(steps=5, gradient_checkpointing=True),
                                 progress=interrupt_at_2, handle_signals=False)
    assert result.stopped and result.step == 2 and result.checkpoint.name == "step-00000002"
    assert backbone.unet.is_gradient_checkpointing
    saved = load_motion_module(result.checkpoint / "motion_module.safetensors",
                               config=shipped_config("tiny/motion_adapter"))
    for name, tensor in motion_state_dict(backbone.unet).items():
        assert torch.equal(saved.state_dict()[name], tensor), name
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["global_batch"] == 1 and state["clips"] == ["clip0", "clip1"]


def test_command_line_trains_the_tiny_backbone(clip_root, tmp_path, repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_backbone_cli", repo_root / "scripts" / "train_backbone.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "run"
    args = ["--tiny", "--data", str(clip_root), "--output", str(out), "--frames", "3", "--height", "32", "--width",
            "32", "--steps", "2", "--window-end", "full", "--window-steps", "1", "--checkpoint-every", "1"]
    assert cli.main(args) == 0
    assert [c.step for c in find_checkpoints(out)] == [1, 2]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["window"]) for r in log] == [(1, 1), (2, None)]
    state = json.loads((out / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["config"]["window_end"] is None and state["window"] is None and state["clips"] == ["clip0", "clip1"]
    assert inspect_motion_module(open_state_file(out / "motion_module.safetensors")).layout == \
        "animatediff_motion_module"
    # Each file records the window its weights were last trained with: what Load Backbone's auto attention runs.
    assert trained_attention_window(out / "checkpoints" / "step-00000001" / "motion_module.safetensors") == 1
    assert trained_attention_window(out / "motion_module.safetensors") is None  # full
    with pytest.raises(SystemExit):  # the model files are required without --tiny
        cli.main(["--data", str(clip_root), "--output", str(out)])


def test_the_training_script_records_a_windowed_attention_in_the_motion_module(clip_root, tmp_path, repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_backbone_cli", repo_root / "scripts" / "train_backbone.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "run"
    args = ["--tiny", "--data", str(clip_root), "--output", str(out), "--frames", "3", "--height", "32", "--width",
            "32", "--steps", "3", "--window-end", "5", "--window-steps", "2", "--checkpoint-every", "1",
            "--log-every", "1"]
    assert cli.main(args) == 0
    windows = [json.loads(line)["window"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert windows == [1, 3, 5]
    for step, window in enumerate(windows, start=1):
        assert trained_attention_window(out / "checkpoints" / f"step-{step:08d}" / "motion_module.safetensors") \
            == window
    assert trained_attention_window(out / "motion_module.safetensors") == 5
    assert open_state_file(out / "motion_module.safetensors").metadata[ATTENTION_WINDOW_KEY] == "5"


def test_gradient_accumulation_equals_the_larger_batch(tiny, clip_root, tmp_path):
    dataset = VideoClipDataset(scan_clips(clip_root), num_frames=4, size=(SIZE, SIZE))
    whole, accumulated = copy.deepcopy(tiny), copy.deepcopy(tiny)
    a = train_motion_module(whole, dataset, tmp_path / "a", small_config(steps=1, batch_size=2))
    b = train_motion_module(accumulated, dataset, tmp_path / "b", small_config(steps=1, gradient_accumulation=2))
    assert a.losses == pytest.approx(b.losses, abs=1e-6)  # same clips, frames and noise in each step
    # Same (clipped) gradient: AdamW's first moment after step 1 is (1 - beta1) * g. The weights themselves may
    # differ by up to ~lr where g is near 0 (Adam divides by |g|), so they are not the quantity to compare.
    moments = [torch.load(run / "checkpoints" / "step-00000001" / "optimizer.pt", weights_only=True)
               ["optimizer"]["state"] for run in (tmp_path / "a", tmp_path / "b")]
    assert len(moments[0]) == len(moments[1]) > 100
    for key, state in moments[0].items():  # equal up to float32 summation order, relative to each tensor's scale
        scale = float(state["exp_avg"].abs().max())
        assert scale > 0 and float((moments[1][key]["exp_avg"] - state["exp_avg"]).abs().max()) <= 1e-5 * scale
    state = json.loads((b.checkpoint / "trainer_state.json").read_text())
    assert state["global_batch"] == 2
    # Resuming the accumulated run as a plain batch of 2 is the same computation, so it is allowed.
    more = train_motion_module(accumulated, dataset, tmp_path / "b", small_config(steps=2, batch_size=2))
    assert more.step == 2 and len(more.losses) == 1


def test_video_clips_are_decoded_through_pyav(tmp_path, monkeypatch):
    """PyAV is optional and not installed here: a stand-in with its API (open, streams, decode, to_ndarray)."""
    import importlib.machinery
    import sys
    import types

    frames = [np.full((40, 32, 3), 10 * i, np.uint8) for i in range(7)]

    class Frame:
        def __init__(self, array):
            self.array = array

        def to_ndarray(self, format):
            assert format == "rgb24"
            return self.array

    class Container:
        streams = types.SimpleNamespace(video=[types.SimpleNamespace(frames=len(frames))])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def decode(self, video):
            assert video == 0
            return (Frame(a) for a in frames)

    av = types.ModuleType("av")
    av.open = lambda path: Container()
    av.__spec__ = importlib.machinery.ModuleSpec("av", None)
    monkeypatch.setitem(sys.modules, "av", av)
    (tmp_path / "run.mp4").write_bytes(b"\0")
    (tmp_path / "captions.csv").write_text("video,caption\nrun,a run\n")  # suffix may be left out
    (clip,) = scan_clips(tmp_path)
    assert clip.is_video and clip.caption == "a run"
    dataset = VideoClipDataset([clip], num_frames=3, size=(32, 32), stride=3)
    item = dataset[(0, 5)]
    start = dataset.frame_indices(7, torch.Generator().manual_seed(5))[0]
    assert start == 0  # 7 frames, stride 3: span 7
    expected = [0, 30, 60]  # frames 0, 3, 6 (value 10·i), centre rows 4..36 of 40
    torch.testing.assert_close(item["pixels"], torch.tensor(expected, dtype=torch.float32).view(3, 1, 1, 1)
                               .expand(3, 3, 32, 32) / 255 * 2 - 1, atol=1e-6, rtol=0)
    with pytest.raises(VideoDataError, match="fewer than num_frames=8"):
        VideoClipDataset([clip], num_frames=8, size=(32, 32))[(0, 0)]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_target_and_noising_follow_the_ddpm_formulas(prediction_type):
    """z_t = √ᾱ_t z0 + √(1−ᾱ_t) ε with AnimateDiff's linear betas; target ε, or v = √ᾱ_t ε − √(1−ᾱ_t) z0
    (Salimans & Ho 2022, §4); text repeated per frame, video-major; loss the plain mean square."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 4, 3, 2, 2, generator=g)  # [B, C, F, h, w]
    text = torch.randn(2, 5, 8, generator=g)
    prediction = torch.randn(2, 4, 3, 2, 2, generator=g)
    seen = {}

    class Stub(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states):
            seen.update(x=x, t=t, text=encoder_hidden_states)
            return SimpleNamespace(sample=prediction)

    noise, timesteps = sample_noise([11, 12], z0.shape[1:], 1000)
    assert noise.shape == z0.shape and timesteps.shape == (2,)
    assert 0 <= int(timesteps.min()) and int(timesteps.max()) < 1000
    loss = diffusion_loss(Stub(), z0, text, _noise_scheduler(small_config(prediction_type=prediction_type)),
                          noise, timesteps)
    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64)  # beta_schedule "linear"
    a = torch.cumprod(1 - betas, 0)[timesteps].view(2, 1, 1, 1, 1)
    target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * z0
    torch.testing.assert_close(seen["x"].double(), a.sqrt() * z0 + (1 - a).sqrt() * noise, rtol=0, atol=1e-6)
    assert torch.equal(seen["t"], timesteps)
    assert torch.equal(seen["text"], text[[0, 0, 0, 1, 1, 1]])
    torch.testing.assert_close(loss.double(), ((prediction - target) ** 2).mean().double(), rtol=1e-6, atol=0)


def test_caption_files_with_a_byte_order_mark(tmp_path):
    """Excel saves CSV, Notepad saves text as UTF-8 with a BOM: the header must still name the fields and the BOM
    must not become part of a caption."""
    for kind in ("csv", "jsonl", "sidecar"):
        root = tmp_path / kind
        write_clip(root / "x", moving_square(2, 0))
        text = {"csv": "clip,caption\nx,a dog\n", "jsonl": json.dumps({"clip": "x", "caption": "a dog"}) + "\n",
                "sidecar": "a dog\n"}[kind]
        name = {"csv": "captions.csv", "jsonl": "captions.jsonl", "sidecar": "x.txt"}[kind]
        (root / name).write_text(text, encoding="utf-8-sig")
        assert [(c.name, c.caption) for c in scan_clips(root)] == [("x", "a dog")], kind
