"""The shipped built-in backbone: hashes, layouts the real loaders read, and that it does what it was trained for."""

from __future__ import annotations

import shutil

import pytest
import torch

from mvcustom_core.backbone.loading import detect_layout, open_state_file
from mvcustom_core.backbone.motion_module import inspect_motion_module
from mvcustom_core.customization.training import training_scheduler
from mvcustom_core.backbone.tiny_world import (CHECKPOINT_FILE, DEPTH_FOLDER, MANIFEST_FILE, MOTION_FILE,
                                               TinyWorldError, estimate_disparity, file_sha256, load_tiny_world,
                                               load_tiny_world_depth, load_tiny_world_pose_prior, read_manifest,
                                               tiny_world_depth_model, verify_weights, weights_dir)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_BYTES = 20 * 2**20
RECON_PSNR_DB = 21.0  # the shipped VAE: 24.0 dB on these clips
EPS_MSE_MAX = 0.3  # predicting 0 scores 1; an untrained UNet about 1.04
DEPTH_REL_MAX = 0.2  # the shipped depth model: 0.08; an untrained one 0.54
PRIOR_LOSS_FRACTION = 0.25  # the shipped prior: 0.12 (2.25 against 19.3)


@pytest.fixture(scope="module")
def backbone():
    return load_tiny_world()


def test_manifest_hashes_match_the_shipped_files():
    folder = weights_dir()
    manifest = read_manifest()
    shipped = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MANIFEST_FILE}
    assert set(manifest["files"]) == shipped
    total = 0
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert not data.startswith(b"version https://git-lfs"), name  # plain git files, not LFS pointers
        assert file_sha256(folder / name) == entry["sha256"] and len(data) == entry["bytes"], name
        total += len(data)
    assert total <= MAX_BYTES
    assert verify_weights() == manifest


def test_the_shipped_files_are_package_data_and_tracked_by_git():
    import subprocess
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    package = root / "mvcustom_core"
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["mvcustom_core"]
    packaged = {p for pattern in patterns for p in package.glob(pattern)}
    shipped = [p for p in weights_dir().rglob("*") if p.is_file()]
    assert shipped and all(p in packaged for p in shipped)
    if (root / ".git").exists():  # a checkout (not an installed wheel): the files are in git, not ignored
        listed = subprocess.run(["git", "ls-files", "--", str(weights_dir())], cwd=root, capture_output=True,
                                text=True, check=True).stdout.split()
        assert {(root / name).resolve() for name in listed} == {p.resolve() for p in shipped}


def test_a_damaged_or_lfs_pointer_file_is_refused_naming_it(tmp_path):
    copy = tmp_path / "weights"
    shutil.copytree(weights_dir(), copy)
    data = bytearray((copy / MOTION_FILE).read_bytes())
    data[-1] ^= 1
    (copy / MOTION_FILE).write_bytes(bytes(data))
    with pytest.raises(TinyWorldError, match="tiny_world_motion.safetensors: SHA-256 differs"):
        load_tiny_world(folder=copy)
    (copy / CHECKPOINT_FILE).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    with pytest.raises(TinyWorldError, match="Git LFS pointer"):
        verify_weights(copy)
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(TinyWorldError, match="missing"):
        verify_weights(copy)


def test_files_are_in_the_layouts_of_real_downloads(backbone):
    folder = weights_dir()
    assert detect_layout(open_state_file(folder / CHECKPOINT_FILE).keys) == "sd15_checkpoint"
    info = inspect_motion_module(open_state_file(folder / MOTION_FILE))
    assert info.layout == "animatediff_motion_module" and info.version == "v3" and info.block_out_channels == (64, 128)
    assert type(backbone.unet).__name__ == "UNetMotionModel"
    assert type(backbone.vae).__name__ == "AutoencoderKL" and type(backbone.text_encoder).__name__ == "CLIPTextModel"
    depth = load_tiny_world_depth()
    assert depth.family == "depth_anything" and depth.kind == "disparity"
    assert info.attention_window == 1  # trained with temporal attention (the optional dense stage was skipped)
    from mvcustom_core.backbone.dense_attention import motion_attention_window

    assert motion_attention_window(backbone.unet) == 1  # load_tiny_world installs what the file says


# ------------------------------------------------------------------------------------------ what it learned
HELD_OUT_WORLDS = (0, 1, 2, 3)  # below HELD_OUT_SEEDS: never seen in training
TIMESTEPS = (200, 400, 600, 800)


@pytest.fixture(scope="module")
def held_out():
    """Clips of held-out worlds: ``rgb [N, F, 3, 64, 64]`` in [0, 1], disparity, captions."""
    from mvcustom_core.synthetic.world import render_clip

    clips = [render_clip(seed, 8, 64) for seed in HELD_OUT_WORLDS]
    disparity = torch.stack([torch.where(c.render.valid, 1 / c.render.depth, torch.zeros_like(c.render.depth))
                             for c in clips])
    return torch.stack([c.render.rgb for c in clips]), disparity, [c.caption for c in clips]


@torch.no_grad()
def _epsilon_mse(backbone, latents, captions) -> float:
    """Mean ε-prediction error over the clips, one timestep of :data:`TIMESTEPS` each, fixed noise."""
    from mvcustom_core.backbone.text import encode_prompt

    scheduler = training_scheduler(backbone.unet)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(TIMESTEPS)
    text = encode_prompt(backbone.text_encoder, backbone.tokenizer, captions)
    noisy = scheduler.add_noise(latents, noise, t)
    prediction = backbone.unet(noisy, t, encoder_hidden_states=text.repeat_interleave(latents.shape[2], 0)).sample
    return float((prediction - noise).pow(2).mean())


@torch.no_grad()
def _latents(vae, rgb):
    from mvcustom_core.backbone.sampler import LATENT_SCALE

    z = torch.stack([vae.encode(clip * 2 - 1).latent_dist.mean for clip in rgb]) * LATENT_SCALE  # [N, F, 4, h, w]
    return z.permute(0, 2, 1, 3, 4).contiguous()


def test_the_vae_reconstructs_held_out_frames_at_sd_latent_scale(backbone, held_out):
    from mvcustom_core.eval.reprojection import masked_psnr

    rgb = held_out[0].flatten(0, 1)
    with torch.no_grad():
        z = backbone.vae.encode(rgb * 2 - 1).latent_dist.mean
        decoded = (backbone.vae.decode(z).sample.clamp(-1, 1) + 1) / 2
    psnr = masked_psnr(decoded, rgb, torch.ones_like(rgb[:, :1], dtype=torch.bool))
    assert float(psnr.mean()) > RECON_PSNR_DB
    # The latent scale is SD1.5's: 0.18215 · z of about unit spread (fold_latent_scale after training).
    assert 0.7 < float(z.std() * 0.18215) < 1.4


def test_the_unet_predicts_the_noise_of_held_out_clips(backbone, held_out):
    from mvcustom_core.backbone.loading import build_backbone
    from mvcustom_core.backbone.tiny_world import tiny_world_components, tiny_world_motion_adapter

    rgb, _, captions = held_out
    latents = _latents(backbone.vae, rgb)
    trained = _epsilon_mse(backbone, latents, captions)
    components = tiny_world_components(seed=1)
    untrained = build_backbone(components, tiny_world_motion_adapter(seed=1))
    random_model = type(backbone)(unet=untrained, vae=backbone.vae, text_encoder=components.text_encoder,
                                  tokenizer=backbone.tokenizer)
    # Predicting 0 scores E[ε²] = 1; an untrained network about that or worse; the trained one far less.
    assert trained < EPS_MSE_MAX < _epsilon_mse(random_model, latents, captions)
    # The captions condition it: each clip's own caption predicts its noise better than another clip's
    # (shipped weights: 0.059 against 0.068).
    assert trained < 0.95 * _epsilon_mse(backbone, latents, captions[1:] + captions[:1])


def test_the_depth_model_recovers_held_out_disparity_up_to_scale(held_out):
    rgb, disparity, _ = held_out
    depth = load_tiny_world_depth()
    x, y = estimate_disparity(depth, rgb.flatten(0, 1)).flatten(1), disparity.flatten(0, 2).flatten(1)
    s = (x * y).sum(1, keepdim=True) / (x * x).sum(1, keepdim=True)  # the training loss's per-image scale
    relative = ((s * x - y).norm(dim=1) / y.norm(dim=1)).mean()
    x0 = estimate_disparity(tiny_world_depth_model(seed=1), rgb.flatten(0, 1)).flatten(1)
    s0 = (x0 * y).sum(1, keepdim=True) / (x0 * x0).sum(1, keepdim=True)
    relative_untrained = ((s0 * x0 - y).norm(dim=1) / y.norm(dim=1)).mean()
    assert float(relative) < DEPTH_REL_MAX < float(relative_untrained)


def test_the_pose_prior_renders_held_out_subjects_from_their_references(backbone):
    """The shipped pose prior's FeatureNeRF, on held-out subjects it never saw, fits their target views' silhouettes
    and colours far better than the identity initialization customizations otherwise start from (the same steps,
    draws and references; FeatureNeRF losses only, method.md §6.2)."""
    import dataclasses

    from mvcustom_core.backbone.module_view import module_view
    from mvcustom_core.customization import PoseContext
    from mvcustom_core.customization.training import (SubjectData, draw_step, encode_references, step_loss,
                                                      trainable_pose_blocks)
    from mvcustom_core.eval.world_ablation import customization_config, make_case

    prior = load_tiny_world_pose_prior()
    scheduler = training_scheduler(backbone.unet)
    losses = {"prior": [], "identity": []}
    for world in HELD_OUT_WORLDS:
        case = make_case(world)
        config = dataclasses.replace(customization_config(case.spec, steps=1, lr=0.0, token_lr=0.0),
                                     reference_dropout=0.0, text_dropout=0.0)
        assert (prior.blocks, prior.featurenerf) == (config.blocks, config.featurenerf)
        ref = case.reference
        subject = SubjectData(encode_references(backbone.vae, ref.images), ref.images, ref.masks, ref.cameras,
                              config.prompt_template.format(token=case.spec.category, class_word=case.spec.category))
        for name, init in (("prior", prior.weights), ("identity", None)):
            unet, ctx = module_view(backbone.unet), PoseContext()
            unet.requires_grad_(False)
            trainable_pose_blocks(unet, ctx, config, init)
            gen = torch.Generator().manual_seed(world)
            for _ in range(3):
                draws = draw_step(gen, len(ref), tuple(subject.latents.shape[1:]), config,
                                  scheduler.config.num_train_timesteps)
                with torch.no_grad():
                    _, parts = step_loss(unet, ctx, scheduler, backbone.text_encoder, backbone.tokenizer, subject,
                                         draws, config)
                losses[name].append(float(parts["fg"] + parts["bg"] + parts["rgb"]))
    prior_mean, identity_mean = (sum(v) / len(v) for v in (losses["prior"], losses["identity"]))
    assert prior_mean < PRIOR_LOSS_FRACTION * identity_mean, (prior_mean, identity_mean)
    assert not any(name.startswith("block.") for state in prior.weights.values() for name in state)
