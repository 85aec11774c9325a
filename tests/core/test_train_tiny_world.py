"""scripts/train_tiny_world.py: resumable loops, the losses, the latent-scale fold and a whole small run."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from mvcustom_core.backbone.loading import detect_layout, open_state_file
from mvcustom_core.backbone.tiny_world import (CHECKPOINT_FILE, DEPTH_FOLDER, MANIFEST_FILE, MOTION_FILE,
                                               POSE_PRIOR_FILE, file_sha256, fold_latent_scale, load_tiny_world,
                                               load_tiny_world_depth, load_tiny_world_pose_prior,
                                               tiny_world_components)
from mvcustom_core.customization.pose_prior import load_pose_prior


@pytest.fixture(scope="module")
def script(repo_root_module):  # noqa: D103
    spec = importlib.util.spec_from_file_location("train_tiny_world", repo_root_module / "scripts" / "train_tiny_world.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def repo_root_module():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def _args(script, out, *extra):
    return script.parse_args(["--output", str(out), "--threads", "1", *extra])


def _regression(script, out, steps, crash_at=None, checkpoint_every=4, workers=1, batch=8):
    """A linear model fitted by train_loop; ``crash_at`` raises inside step ``crash_at`` (a killed process)."""
    args = _args(script, out, "--checkpoint-every", str(checkpoint_every), "--log-every", "1",
                 "--workers", str(workers))
    model = torch.nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.zero_(), model.bias.zero_()
    truth = torch.tensor([[1.0, -2.0, 0.5]])

    def batch_loss(model, step, rows):
        if step == crash_at:
            raise RuntimeError("killed")
        g = torch.Generator().manual_seed(step)  # the script's loops draw from (seed, stage, step) likewise
        x = torch.randn(batch, 3, generator=g)[rows]
        return ((model(x) - x @ truth.T) ** 2).mean()

    state = script.train_loop("toy", out / "toy", {"lr": 0.05}, steps, model, batch_loss, batch, args, lr=0.05,
                              ema_decay=0.9)
    return state, model


def test_train_loop_resumes_exactly_after_a_crash(script, tmp_path):
    whole, _ = _regression(script, tmp_path / "a", 40)
    with pytest.raises(RuntimeError, match="killed"):
        _regression(script, tmp_path / "b", 40, crash_at=26)  # the last checkpoint is at step 24
    assert torch.load(tmp_path / "b" / "toy" / "checkpoint.pt", weights_only=True)["step"] == 24
    resumed, model = _regression(script, tmp_path / "b", 40)
    assert resumed["step"] == 40 and resumed["losses"] == whole["losses"]
    for k in whole["parameters"]:
        assert torch.equal(resumed["parameters"][k], whole["parameters"][k])
        assert torch.equal(resumed["ema"]["shadow"][k], whole["ema"]["shadow"][k])
    assert whole["losses"][-1] < 0.2 * whole["losses"][0]  # it fits
    log = [json.loads(line) for line in (tmp_path / "b" / "toy" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 40


def test_train_loop_refuses_other_settings(script, tmp_path):
    _regression(script, tmp_path, 4)
    args = _args(script, tmp_path)
    with pytest.raises(SystemExit, match="other settings"):
        script.train_loop("toy", tmp_path / "toy", {"lr": 0.2}, 2, torch.nn.Linear(3, 1),
                          lambda model, step, rows: torch.zeros(()), 1, args, lr=0.2)


def test_workers_share_the_batch_and_give_the_whole_batch_gradient(script, tmp_path):
    one, _ = _regression(script, tmp_path / "one", 30)
    two, _ = _regression(script, tmp_path / "two", 30, workers=2)
    three, _ = _regression(script, tmp_path / "three", 30, workers=3)  # shares of 3, 3 and 2 rows
    for k in one["parameters"]:
        torch.testing.assert_close(two["parameters"][k], one["parameters"][k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(three["parameters"][k], one["parameters"][k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(two["ema"]["shadow"][k], one["ema"]["shadow"][k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-7)
    again, _ = _regression(script, tmp_path / "again", 30, workers=2)
    assert again["losses"] == two["losses"]  # gradients are added in worker order: the run is deterministic


def test_batch_workers_backward_gives_the_whole_batch_gradient(script):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x, y = torch.randn(5, 3), torch.randn(5, 1)

    def batch_loss(replica, step, rows):
        return ((replica(x[rows]) - y[rows]) ** 2).mean()

    whole = torch.autograd.grad(batch_loss(model, 0, torch.arange(5)), list(model.parameters()))
    before = torch.get_num_threads()
    workers = script.BatchWorkers(model, 5, 2, threads=2 * before)  # shares of 3 and 2 rows
    try:
        assert torch.get_num_threads() == before  # the threads shared out: each worker gets its part
        loss = workers.backward(batch_loss, 0)
        assert [len(rows) for rows in workers.rows] == [3, 2]
        assert all(p.grad is None for p in workers.replicas[1].parameters())  # moved into the model's
    finally:
        workers.close()
    assert torch.get_num_threads() == before  # restored for what follows the loop
    torch.testing.assert_close(loss, batch_loss(model, 0, torch.arange(5)).detach())
    for param, expected in zip(model.parameters(), whole):
        torch.testing.assert_close(param.grad, expected)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # an optimizer step on the model moves the replicas' weights too
    assert torch.equal(workers.replicas[1][0].weight, model[0].weight)


def test_a_failing_worker_stops_the_run_after_the_last_checkpoint(script, tmp_path):
    with pytest.raises(RuntimeError, match="killed"):
        _regression(script, tmp_path, 40, crash_at=26, workers=2)
    assert torch.load(tmp_path / "toy" / "checkpoint.pt", weights_only=True)["step"] == 24
    resumed, _ = _regression(script, tmp_path, 40, workers=2)
    whole, _ = _regression(script, tmp_path / "whole", 40, workers=2)
    assert resumed["losses"] == whole["losses"]


def test_workers_are_checked(script, tmp_path):
    assert _args(script, tmp_path).workers == 2  # the default on the CPU
    assert script.parse_args(["--output", str(tmp_path), "--device", "meta"]).workers == 1  # on an accelerator
    with pytest.raises(SystemExit):
        script.parse_args(["--output", str(tmp_path), "--device", "meta", "--workers", "2"])
    with pytest.raises(SystemExit):
        script.parse_args(["--output", str(tmp_path), "--workers", "0"])


def test_fold_latent_scale_keeps_the_decoder_output_and_scales_the_posterior():
    vae = tiny_world_components(3).vae.eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = vae.encode(x).latent_dist
        decoded = vae.decode(before.mean).sample
        fold_latent_scale(vae, 2.5)
        after = vae.encode(x).latent_dist
        torch.testing.assert_close(after.mean, 2.5 * before.mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(after.std, 2.5 * before.std, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vae.decode(after.mean).sample, decoded, rtol=1e-4, atol=1e-5)


def test_disparity_loss_ignores_scale_not_shift(script):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 8, 8, generator=g)
    assert float(script.scale_invariant_disparity_loss(3.0 * target, target)) < 1e-12
    assert float(script.scale_invariant_disparity_loss(3.0 * target + 0.5, target)) > 1e-3
    noisy = target + 0.1 * torch.randn(target.shape, generator=g)
    loss = float(script.scale_invariant_disparity_loss(noisy, target))
    assert 0.003 < loss < 0.02  # about the noise variance
    assert float(script.scale_invariant_disparity_loss(torch.rand(2, 8, 8, generator=g), target)) > loss


def test_vae_loss_is_zero_only_for_a_perfect_reconstruction(script):
    vae = tiny_world_components(0).vae
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    eps = torch.zeros(2, 4, 2, 2)
    loss = script.vae_loss(vae, x, eps, kl_weight=0.0, grad_weight=0.5)
    with torch.no_grad():
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    expected = (rec - x).abs().mean() + 0.5 * sum((rec.diff(dim=d) - x.diff(dim=d)).abs().mean() for d in (-1, -2))
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_small_run_writes_weights_the_real_loaders_read(script, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["--output", str(out), "--threads", "1", "--clips", "3", "--frames", "2", "--size", "32",
            "--vae-steps", "2", "--vae-crop-steps", "1", "--vae-crop", "16", "--vae-batch", "2", "--unet-steps", "2",
            "--unet-batch", "2", "--dense-steps", "2", "--dense-clips", "2", "--dense-batch", "1", "--depth-steps",
            "2", "--depth-batch", "2", "--prior-steps", "2", "--prior-worlds", "2", "--prior-inner-steps", "1",
            "--checkpoint-every", "1"]
    assert script.main(argv) == 0
    ship = out / "ship"
    manifest = json.loads((ship / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {CHECKPOINT_FILE, MOTION_FILE, f"{DEPTH_FOLDER}/config.json",
                                      f"{DEPTH_FOLDER}/model.safetensors", f"{DEPTH_FOLDER}/preprocessor_config.json",
                                      POSE_PRIOR_FILE}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == file_sha256(ship / name)
    assert detect_layout(open_state_file(ship / CHECKPOINT_FILE).keys) == "sd15_checkpoint"
    assert detect_layout(open_state_file(ship / MOTION_FILE).keys) == "animatediff_motion_module"
    from mvcustom_core.backbone.motion_module import trained_attention_window

    assert trained_attention_window(ship / MOTION_FILE) is None  # the dense stage ran: full attention
    assert manifest["training"]["unet"]["steps"] == 2 and manifest["training"]["data"]["clips"] == 3
    backbone = load_tiny_world(folder=ship)
    # The exported EMA weights are what the unet stage saved, up to float16 rounding.
    saved = script._load_tensors(out / "unet" / "unet.safetensors")
    conv = saved["unet.conv_in.weight"]
    torch.testing.assert_close(backbone.unet.conv_in.weight, conv.half().float())
    depth = load_tiny_world_depth(ship / DEPTH_FOLDER)  # through the pack's depth loader
    assert depth.family == "depth_anything" and depth.kind == "disparity"
    # The pose prior trained: its fusion layers left the identity they start from, for the shipped UNet's blocks.
    from mvcustom_core.customization import backbone_fingerprint

    prior = load_tiny_world_pose_prior(folder=ship)
    assert prior.backbone == backbone_fingerprint(backbone.unet) and manifest["training"]["prior"]["steps"] == 2
    fuse = next(iter(prior.weights.values()))["fuse.weight"]
    width = fuse.shape[0]
    assert not torch.equal(fuse, torch.cat([torch.eye(width), torch.zeros(width, width)], 1))
    # A second run finds every stage done and rewrites the same files.
    before = {name: entry["sha256"] for name, entry in manifest["files"].items()}
    assert script.main(argv) == 0
    after = json.loads((ship / MANIFEST_FILE).read_text())["files"]
    assert {name: entry["sha256"] for name, entry in after.items()} == before
    # The prior stage, stopped by an error in its second outer step, resumes from its checkpoint to the same prior.
    import shutil

    import mvcustom_core.customization as customization

    redo = tmp_path / "redo"
    for part in ("unet", "vae"):
        shutil.copytree(out / part, redo / part)
    real, calls = customization.train_customization, []

    def second_fails(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped")
        return real(*a, **k)

    monkeypatch.setattr(customization, "train_customization", second_fails)
    redo_argv = [*argv[:1], str(redo), *argv[2:], "--stages", "prior"]
    with pytest.raises(RuntimeError, match="stopped"):
        script.main(redo_argv)
    assert torch.load(redo / "prior" / "checkpoint.pt", weights_only=True)["step"] == 1
    assert script.main(redo_argv) == 0
    resumed = load_pose_prior(redo / "prior" / "pose_prior.safetensors")
    for block, state in prior.weights.items():
        for name, value in state.items():
            assert torch.equal(resumed.weights[block][name], value), (block, name)


def test_min_snr_loss_weights_each_clip_by_its_timestep(script):
    from diffusers import DDPMScheduler

    class Echo(torch.nn.Module):  # predicts a fixed tensor, so the loss is a known function of the noise
        def forward(self, x, t, encoder_hidden_states):
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    scheduler = DDPMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012)
    noise = torch.randn(2, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    loss = script.min_snr_loss(Echo(), torch.zeros_like(noise), torch.zeros(2, 77, 8), scheduler, noise, t, 5.0)
    a = scheduler.alphas_cumprod[t]
    snr = a / (1 - a)
    expected = (noise.pow(2).flatten(1).mean(1) * torch.clamp(snr, max=5.0) / snr).mean()
    torch.testing.assert_close(loss, expected)
    assert snr[0] > 5 > snr[1]  # the low-noise clip is down-weighted, the high-noise one kept
    plain = script.min_snr_loss(Echo(), torch.zeros_like(noise), torch.zeros(2, 77, 8), scheduler, noise, t, 0.0)
    torch.testing.assert_close(plain, noise.pow(2).mean())
