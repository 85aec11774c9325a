"""SD1.x single-file loading: LDM key tables, round trips bit for bit, full-size key sets, dtypes and clear errors.

Files in the original layout are written by the inverse table (``export_ldm_state_dict``) from randomly initialised
tiny modules; diffusers' own converters (``single_file_utils.convert_ldm_*``) are the independent reference for
the table itself.
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from mvcustom_core.backbone.ldm_keys import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, unet_key_table
from mvcustom_core.backbone.loading import (
    CheckpointError,
    build_sd15_modules,
    detect_layout,
    export_ldm_state_dict,
    load_sd15_checkpoint,
    shipped_config,
)
from mvcustom_core.backbone.tiny import TINY_CONFIGS, tiny_components

TINY = {name: shipped_config(path) for name, path in TINY_CONFIGS.items()}


@pytest.fixture(scope="module")
def tiny():
    return tiny_components(seed=3)


@pytest.fixture(scope="module")
def tiny_ldm(tiny):
    return export_ldm_state_dict(tiny)


def _save(state, path):
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 1}, path)
    return path


def _outputs(components, generator_seed=0):
    g = torch.Generator().manual_seed(generator_seed)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 5, 32, generator=g)
    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    ids = torch.randint(0, components.text_encoder.config.vocab_size, (2, 77), generator=g)
    with torch.no_grad():
        return (
            components.unet(latents, 500, encoder_hidden_states=text).sample,
            components.vae.decode(components.vae.encode(image).latent_dist.mean).sample,
            components.text_encoder(ids).last_hidden_state,
        )


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_ldm_round_trip_is_bit_exact(tiny, tiny_ldm, tmp_path, suffix):
    path = _save(tiny_ldm, tmp_path / f"tiny{suffix}")
    loaded = load_sd15_checkpoint(path, config=TINY)
    for module in ("unet", "vae", "text_encoder"):
        want, got = getattr(tiny, module).state_dict(), getattr(loaded, module).state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), module
    for want, got in zip(_outputs(tiny), _outputs(loaded)):
        assert torch.equal(want, got)
    assert loaded.source == path
    assert not loaded.unet.training


def test_ldm_layout_has_the_original_names(tiny_ldm):
    # Spot checks against the LDM names that SD1.x files carry (CompVis openaimodel.py / autoencoder.py).
    for key in (
        UNET_PREFIX + "input_blocks.0.0.weight",
        UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        UNET_PREFIX + "input_blocks.2.0.op.weight",            # tiny: layers_per_block 1, downsampler of block 0
        UNET_PREFIX + "middle_block.2.emb_layers.1.weight",
        UNET_PREFIX + "output_blocks.1.1.conv.weight",         # up block 0 has no attention: upsampler at slot 1
        UNET_PREFIX + "output_blocks.3.1.proj_out.weight",
        UNET_PREFIX + "out.2.bias",
        VAE_PREFIX + "encoder.mid.attn_1.q.weight",
        VAE_PREFIX + "decoder.up.3.upsample.conv.weight",
        VAE_PREFIX + "encoder.down.2.block.0.nin_shortcut.weight",
        CLIP_PREFIX + "encoder.layers.1.mlp.fc2.weight",
        CLIP_PREFIX + "embeddings.position_ids",
    ):
        assert key in tiny_ldm, key
    assert tiny_ldm[VAE_PREFIX + "encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)


def test_table_agrees_with_diffusers_converters(tiny, tiny_ldm):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    unet = convert_ldm_unet_checkpoint(dict(tiny_ldm), dict(tiny.unet.config))
    vae = convert_ldm_vae_checkpoint(dict(tiny_ldm), dict(tiny.vae.config))
    clip = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(dict(tiny_ldm)).items()}
    clip.pop("embeddings.position_ids")
    for module, converted in (("unet", unet), ("vae", vae), ("text_encoder", clip)):
        want = getattr(tiny, module).state_dict()
        assert converted.keys() == want.keys(), module
        assert all(torch.equal(converted[k], want[k]) for k in want), module


@pytest.fixture(scope="module")
def sd15_meta():
    return build_sd15_modules(
        shipped_config("sd15/unet"), shipped_config("sd15/vae"), shipped_config("sd15/text_encoder"), device="meta"
    )


def test_full_size_sd15_key_sets(sd15_meta):
    """Shipped configs give the real SD1.5 layout: 686 UNet, 248 VAE, 197 CLIP keys (incl. position_ids)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    # SD1.5 parameter counts: UNet 859,520,964 as diffusers' ModelMixin.num_parameters docstring prints for the
    # stable-diffusion-v1-5 unet (models/modeling_utils.py); VAE 83.65 M and CLIP ViT-L/14 text 123.06 M as quoted.
    sizes = [sum(p.numel() for p in m.parameters()) for m in (sd15_meta.unet, sd15_meta.vae, sd15_meta.text_encoder)]
    assert sizes == [859_520_964, 83_653_863, 123_060_480]
    ldm = export_ldm_state_dict(sd15_meta)
    counts = {prefix: sum(k.startswith(prefix) for k in ldm) for prefix in (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)}
    assert counts == {UNET_PREFIX: 686, VAE_PREFIX: 248, CLIP_PREFIX: 197}
    assert len(ldm) == 1131

    # Shapes that identify SD1.5 (v1-inference.yaml: model_channels 320, context_dim 768, z_channels 4).
    assert ldm[UNET_PREFIX + "input_blocks.0.0.weight"].shape == (320, 4, 3, 3)
    assert ldm[UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 768)
    assert ldm[UNET_PREFIX + "middle_block.1.proj_in.weight"].shape == (1280, 1280, 1, 1)
    assert ldm[UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight"].shape == (2560, 320)
    assert ldm[UNET_PREFIX + "output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)
    assert ldm[UNET_PREFIX + "output_blocks.5.2.conv.weight"].shape == (1280, 1280, 3, 3)
    assert ldm[VAE_PREFIX + "encoder.conv_out.weight"].shape == (8, 512, 3, 3)
    assert ldm[VAE_PREFIX + "decoder.mid.attn_1.proj_out.weight"].shape == (512, 512, 1, 1)
    assert ldm[CLIP_PREFIX + "embeddings.token_embedding.weight"].shape == (49408, 768)
    assert ldm[CLIP_PREFIX + "encoder.layers.11.self_attn.out_proj.weight"].shape == (768, 768)
    # LDM index arithmetic: 12 input blocks, 3 middle, 12 output blocks.
    index = lambda name: {int(m[1]) for k in ldm if (m := re.match(UNET_PREFIX + name + r"\.(\d+)\.", k))}
    assert index("input_blocks") == set(range(12))
    assert index("middle_block") == {0, 1, 2}
    assert index("output_blocks") == set(range(12))

    # diffusers' converters map the same LDM key set back onto exactly the modules' keys and shapes.
    for module, converted in (
        ("unet", convert_ldm_unet_checkpoint(dict(ldm), dict(sd15_meta.unet.config))),
        ("vae", convert_ldm_vae_checkpoint(dict(ldm), dict(sd15_meta.vae.config))),
    ):
        want = getattr(sd15_meta, module).state_dict()
        assert converted.keys() == want.keys()
        assert all(converted[k].shape == want[k].shape for k in want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_loading(tiny, tiny_ldm, tmp_path, dtype):
    path = _save(tiny_ldm, tmp_path / "tiny.safetensors")
    loaded = load_sd15_checkpoint(path, config=TINY, dtype=dtype)
    for module in ("unet", "vae", "text_encoder"):
        want = getattr(tiny, module).state_dict()
        for key, tensor in getattr(loaded, module).state_dict().items():
            assert tensor.dtype == dtype
            assert torch.equal(tensor, want[key].to(dtype)), key
    ids = loaded.text_encoder.embeddings.position_ids
    assert ids.dtype == torch.int64 and torch.equal(ids[0], torch.arange(77))


def test_extra_keys_and_legacy_clip_prefix_are_accepted(tiny, tiny_ldm, tmp_path):
    state = {
        k.replace(CLIP_PREFIX, "cond_stage_model.transformer."): v for k, v in tiny_ldm.items()
    }  # transformers < 4 files lack the "text_model." level
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    state["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77.0)[None] + 1e-3  # corrupt
    loaded = load_sd15_checkpoint(_save(state, tmp_path / "legacy.safetensors"), config=TINY)
    assert torch.equal(_outputs(tiny)[2], _outputs(loaded)[2])


def test_missing_keys_are_counted_and_named(tiny_ldm, tmp_path):
    dropped = sorted(k for k in tiny_ldm if k.startswith(UNET_PREFIX + "output_blocks."))[:12]
    state = {k: v for k, v in tiny_ldm.items() if k not in dropped}
    path = _save(state, tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_sd15_checkpoint(path, config=TINY)
    message = str(error.value)
    assert str(path) in message and "not an SD1.x UNet: missing 12 of" in message
    named = re.findall(r"'([^']+)'", message)
    assert len(named) == 3 and set(named) <= set(dropped)


def test_wrong_shape_names_key_and_shapes(tiny_ldm, tmp_path):
    key = VAE_PREFIX + "decoder.conv_in.weight"
    state = dict(tiny_ldm, **{key: torch.zeros(16, 5, 3, 3)})
    with pytest.raises(CheckpointError, match=re.escape(f"{key!r} has shape [16, 5, 3, 3], expected [16, 4, 3, 3]")):
        load_sd15_checkpoint(_save(state, tmp_path / "bad.safetensors"), config=TINY)


def test_full_sd15_config_rejects_tiny_file_by_shape(tiny_ldm, tmp_path):
    with pytest.raises(CheckpointError, match=r"not an SD1.x UNet: missing \d+ of 686 keys"):
        load_sd15_checkpoint(_save(tiny_ldm, tmp_path / "tiny.safetensors"))


def test_truncated_files_raise_checkpoint_error(tiny_ldm, tmp_path):
    for suffix in (".safetensors", ".ckpt"):
        path = _save(tiny_ldm, tmp_path / f"whole{suffix}")
        cut = tmp_path / f"cut{suffix}"
        data = path.read_bytes()
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=re.escape(str(cut))):
            load_sd15_checkpoint(cut, config=TINY)


def test_other_files_are_recognised(tmp_path):
    motion = {"down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight": torch.zeros(2, 2)}
    with pytest.raises(CheckpointError, match="AnimateDiff motion module, not a checkpoint; load it with "
                                              "load_motion_module"):
        load_sd15_checkpoint(_save(motion, tmp_path / "mm.safetensors"))
    sdxl = {"conditioner.embedders.0.transformer.x": torch.zeros(1), UNET_PREFIX + "x": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="SDXL"):
        load_sd15_checkpoint(_save(sdxl, tmp_path / "xl.safetensors"))
    with pytest.raises(CheckpointError, match="unknown weights format '.gguf'"):
        (tmp_path / "m.gguf").write_bytes(b"GGUF")
        load_sd15_checkpoint(tmp_path / "m.gguf")
    with pytest.raises(CheckpointError, match="no such file"):
        load_sd15_checkpoint(tmp_path / "absent.safetensors")


@pytest.mark.parametrize(
    ("keys", "layout"),
    [
        ([UNET_PREFIX + "a", "cond_stage_model.transformer.text_model.b"], "sd15_checkpoint"),
        ([UNET_PREFIX + "a", "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"], "sd2_checkpoint"),
        (["down_blocks.0.motion_modules.0.proj_in.weight"], "diffusers_motion_adapter"),
        (["input_blocks.0.0.weight"], "ldm_unet_only"),
        (["down_blocks.0.resnets.0.conv1.weight"], "diffusers_unet"),
        (["foo"], "unknown"),
    ],
)
def test_detect_layout(keys, layout):
    assert detect_layout(keys) == layout


def test_ema_weights_are_read_when_asked(tiny, tiny_ldm, tmp_path):
    ema_unet = tiny_components(seed=4).unet.state_dict()
    ldm_of = {m.diffusers: m.ldm for m in unet_key_table(ema_unet, tiny.unet.config)}
    state = dict(tiny_ldm)
    for name, tensor in ema_unet.items():  # LitEma names: model_ema.diffusion_model<name without dots>
        state["model_ema." + ldm_of[name].removeprefix("model.").replace(".", "")] = tensor
    state["model_ema.num_updates"] = torch.tensor(1000)
    path = _save(state, tmp_path / "full.safetensors")
    plain = load_sd15_checkpoint(path, config=TINY)
    ema = load_sd15_checkpoint(path, config=TINY, use_ema=True)
    assert all(torch.equal(v, plain.unet.state_dict()[k]) for k, v in tiny.unet.state_dict().items())
    assert all(torch.equal(v, ema.unet.state_dict()[k]) for k, v in ema_unet.items())
    assert torch.equal(ema.vae.encoder.conv_in.weight, tiny.vae.encoder.conv_in.weight)
    with pytest.raises(CheckpointError, match="no EMA copy"):
        load_sd15_checkpoint(_save(tiny_ldm, tmp_path / "pruned.safetensors"), config=TINY, use_ema=True)


def test_pickled_code_is_refused(tiny_ldm, tmp_path):
    path = tmp_path / "code.ckpt"
    torch.save({"state_dict": tiny_ldm, "callbacks": _NotATensor()}, path)
    with pytest.raises(CheckpointError, match=r"weights_only=True.*convert it to \.safetensors"):
        load_sd15_checkpoint(path, config=TINY)


class _NotATensor:
    pass


def test_tiny_backbone_is_seeded_and_sd_shaped():
    from mvcustom_core.backbone.tiny import tiny_backbone

    rng = torch.get_rng_state()
    first, again, other = tiny_backbone(seed=0), tiny_backbone(seed=0), tiny_backbone(seed=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the global generator is left alone
    a, b, c = (m.unet.state_dict() for m in (first, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv_in.weight"], c["conv_in.weight"])
    assert "mid_block.motion_modules.0.proj_in.weight" in a  # v2-like adapter
    with torch.no_grad():
        latents = first.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, 4, 8, 8)  # SD1.x's factor 8
    assert len(first.tokenizer) == first.text_encoder.get_input_embeddings().num_embeddings
    # The motion modules are live (random, not zero-initialised): editing frame 2 changes frame 0's prediction.
    g = torch.Generator().manual_seed(0)
    video = torch.randn(1, 4, 3, 8, 8, generator=g)
    edited = video.clone()
    edited[:, :, 2] += 1
    text = torch.randn(3, 77, 32, generator=g)
    with torch.no_grad():
        change = first.unet(video, 10, text).sample[:, :, 0] - first.unet(edited, 10, text).sample[:, :, 0]
    assert change.abs().max() > 1e-3


def test_progress_reports_every_tensor_and_can_interrupt(tiny_ldm, tmp_path):
    path = _save(tiny_ldm, tmp_path / "tiny.safetensors")
    calls = []
    load_sd15_checkpoint(path, config=TINY, progress=lambda done, total: calls.append((done, total)))
    total = len(tiny_ldm) - 1  # every tensor but the recomputed position_ids
    assert calls == [(i, total) for i in range(1, total + 1)]

    class Interrupted(Exception):
        pass

    def stop(done, total):
        if done == 10:
            raise Interrupted

    with pytest.raises(Interrupted):
        load_sd15_checkpoint(path, config=TINY, progress=stop)


def test_backbone_needs_one_dtype(tiny):
    from mvcustom_core.backbone.loading import build_backbone
    from mvcustom_core.backbone.tiny import tiny_motion_adapter

    with pytest.raises(CheckpointError, match="one dtype and device"):
        build_backbone(tiny, tiny_motion_adapter(dtype=torch.float16))


def test_inpainting_unet_is_named(tiny_ldm, tmp_path):
    key = UNET_PREFIX + "input_blocks.0.0.weight"
    state = dict(tiny_ldm, **{key: torch.zeros(32, 9, 3, 3)})
    with pytest.raises(CheckpointError, match="takes 9 input channels, the config 4: looks like an inpainting UNet"):
        load_sd15_checkpoint(_save(state, tmp_path / "inpaint.safetensors"), config=TINY)
    loaded = load_sd15_checkpoint(tmp_path / "inpaint.safetensors", config=dict(TINY, unet=dict(TINY["unet"],
                                                                                                 in_channels=9)))
    assert loaded.unet.conv_in.weight.shape == (32, 9, 3, 3)
