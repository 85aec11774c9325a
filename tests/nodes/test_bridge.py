"""The MODEL / CLIP / VAE bridge (nodes/bridge.py) against the core, with ComfyUI's loaded objects as test doubles.

The doubles (fake_comfy.BaseModel, CLIP, VAE) hold the tiny backbone's weights under ComfyUI's own names (LDM for
the UNet and VAE, ``clip_l.transformer.text_model.*`` for CLIP); their patchers re-create every tensor on load, as
a device move or a LoRA patch does. The shipped SD1.5 configs are pointed at the tiny ones, as in
test_backbone_nodes.py. The real host, full size and with a LoRA, is tier 3 (tests/host/test_bridge_full_size.py).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from mvcustom_core.backbone.dense_attention import dense_attention_window, enable_dense_attention
from mvcustom_core.backbone.ldm_keys import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX
from mvcustom_core.backbone.loading import build_backbone, export_ldm_state_dict, shipped_config
from mvcustom_core.backbone.sampler import sample
from mvcustom_core.backbone.tiny import TINY_CONFIGS, tiny_backbone, tiny_components, tiny_motion_adapter
from mvcustom_core.backbone.training import save_motion_module
from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.customization.pose_block import pose_blocks

from .conftest import fake_comfy, run_node

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

SEED = 4
SMALL_TRAINING = dict(class_word="dog", steps=2, frames=2, references=1, samples=4, seed=3)


@pytest.fixture
def tiny_bridge(bridge, models, monkeypatch):
    """The bridge with the tiny configs and tokenizer, and a tiny motion module in models/animatediff_models."""
    tiny = {k: shipped_config(v) for k, v in TINY_CONFIGS.items()}
    monkeypatch.setattr(bridge, "sd15_modules_from_state", functools.partial(bridge.sd15_modules_from_state,
                                                                             config=tiny))
    monkeypatch.setattr(bridge, "load_motion_module", functools.partial(
        bridge.load_motion_module, config=shipped_config("tiny/motion_adapter")))
    monkeypatch.setattr(bridge, "comfy_tokenizer", lambda: tiny_backbone(SEED).tokenizer)
    (models.dir / "animatediff_models").mkdir()
    save_motion_module(tiny_backbone(SEED).unet, models.dir / "animatediff_models" / "mm.safetensors")
    return bridge


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.fixture
def loaded():
    """Load Checkpoint's MODEL, CLIP and VAE for the tiny checkpoint of seed SEED."""
    state = export_ldm_state_dict(tiny_components(SEED))
    cpu = torch.device("cpu")
    model = fake_comfy.ModelPatcher(fake_comfy.BaseModel(_strip(state, UNET_PREFIX)), cpu, cpu)
    clip = fake_comfy.CLIP(_strip(state, CLIP_PREFIX))
    vae = fake_comfy.VAE(_strip(state, VAE_PREFIX))
    return model, clip, vae


def _cams(n: int = 3, size: int = 64) -> CameraSet:
    az = torch.linspace(-0.25, 0.25, n)
    eye = torch.stack([1.8 * torch.sin(az), torch.full_like(az, -0.3), -1.8 * torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3)), 50.0, (size, size))


def _conditioning(seed: int):
    return [[torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(seed)), {}]]


SAMPLER = dict(seed=3, steps=2, cfg=5.0, pose_ratio=1.0, window=16, overlap=4)


def test_apply_motion_module_keeps_the_model_and_reads_only_the_motion_file(node, run, tiny_bridge, loaded):
    model, _, _ = loaded
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    backbone = run(node("MVC_ApplyMotionModule"), model=model, motion_module="mm.safetensors", window=3).args[0]
    assert isinstance(backbone, tiny_bridge.ModelBackbone)
    assert backbone.model is not model and backbone.model.model is model.model  # a clone over the same weights
    assert backbone.window == 3 and backbone.dtype == torch.float32
    expected = tiny_motion_adapter(SEED)
    hosted = backbone.motion.model.module.state_dict()
    assert all(torch.equal(hosted[k], v) for k, v in expected.state_dict().items())
    assert all(torch.equal(model.model.state_dict()[k], v) for k, v in before.items())


def test_the_bridged_unet_is_the_core_backbone_over_the_models_loaded_tensors(node, run, tiny_bridge, loaded, models):
    model, _, _ = loaded
    backbone = run(node("MVC_ApplyMotionModule"), model=model, motion_module="mm.safetensors", window=2).args[0]
    sampler = node("MVC_MVCustomSampler")
    core = tiny_bridge.prepare_backbone(sampler, backbone, ["unet"], input_name="model")
    assert models.loaded == [[backbone.model, backbone.motion]]  # MODEL + motion module, nothing else

    # Zero copy: every tensor of the view is one the patchers hold after their load (not one from before it).
    held = {t.data_ptr() for patcher in (backbone.model, backbone.motion) for t in patcher.model.state_dict().values()}
    assert all(p.data_ptr() in held for p in core.unet.parameters())
    assert dense_attention_window(core.unet) == 2

    reference = build_backbone(tiny_components(SEED), tiny_motion_adapter(SEED))
    enable_dense_attention(reference, 2)
    cond, uncond = _conditioning(1)[0][0], _conditioning(2)[0][0]
    latent = run(sampler, model=backbone, trajectory=_cams(), positive=_conditioning(1), negative=_conditioning(2),
                 **SAMPLER).args[0]["samples"]
    expected = sample(reference, cond, uncond, 3, 64, 64, 2, 5.0, seed=3)
    torch.testing.assert_close(latent, expected / 0.18215, rtol=0, atol=0)


@pytest.fixture
def photos(subject_turntable):
    render, cams = subject_turntable(4)
    return render.rgb.permute(0, 2, 3, 1).contiguous(), render.mask[:, 0].contiguous(), cams


def test_training_on_model_clip_vae_equals_training_on_the_packs_backbone(node, run, tiny_bridge, loaded, photos,
                                                                          host, tmp_path, monkeypatch):
    monkeypatch.setattr(host["folder_paths"], "models_dir", str(tmp_path / "models"), raising=False)
    model, clip, vae = loaded
    images, masks, cams = photos
    train = node("MVC_TrainCustomization")
    backbone = run(node("MVC_ApplyMotionModule"), model=model, motion_module="mm.safetensors", window=0).args[0]
    bridged, _ = run_node(train, backbone=backbone, clip=clip, vae=vae, images=images, masks=masks, cameras=cams,
                          name="bridged", **SMALL_TRAINING).args
    own = run(node("MVC_TinyBackbone"), seed=SEED, window=0).args[0]
    packed, _ = run_node(train, backbone=own, images=images, masks=masks, cameras=cams, name="packed",
                         **SMALL_TRAINING).args
    assert bridged.blocks == packed.blocks
    for name in packed.blocks:
        for key, value in packed.weights[name].items():
            torch.testing.assert_close(bridged.weights[name][key], value, rtol=0, atol=0)
    torch.testing.assert_close(bridged.token_embedding, packed.token_embedding, rtol=0, atol=0)
    # Nothing of the run stayed on the shared objects.
    assert not any(isinstance(m, torch.nn.Module) and type(m).__name__ == "SubjectTokenEmbedding"
                   for m in clip.cond_stage_model.modules())
    assert next(pose_blocks(own.backbone.unet), None) is None


def test_training_follows_clip_set_last_layer(node, tiny_bridge, loaded, photos, host, tmp_path, monkeypatch):
    """CLIP Set Last Layer -2 on the CLIP: the token is trained on the second-to-last layer's text states."""
    monkeypatch.setattr(host["folder_paths"], "models_dir", str(tmp_path / "models"), raising=False)
    model, clip, vae = loaded
    images, masks, cams = photos
    train = node("MVC_TrainCustomization")
    backbone = run_node(node("MVC_ApplyMotionModule"), model=model, motion_module="mm.safetensors").args[0]
    last, _ = run_node(train, backbone=backbone, clip=clip, vae=vae, images=images, masks=masks, cameras=cams,
                       name="last", **SMALL_TRAINING).args
    clip.layer_idx = -2
    skipped, _ = run_node(train, backbone=backbone, clip=clip, vae=vae, images=images, masks=masks, cameras=cams,
                          name="skipped", **SMALL_TRAINING).args
    assert last.training["config"]["clip_skip"] == 0 and skipped.training["config"]["clip_skip"] == 1
    assert not torch.equal(last.token_embedding, skipped.token_embedding)


def _customization(customize_tiny, unet, seed: int):
    """A customization whose fusion uses the rendered features (so the output shows which one is applied)."""
    from mvcustom_core.customization.file_format import customization_from_unet

    model, ctx, _ = customize_tiny(unet, _cams(4), fuse_identity=True, seed=seed)
    return customization_from_unet(model, ctx, token="<s>", class_word="car", token_embedding=torch.zeros(32))


def test_two_customizations_interleaved_give_what_each_gives_alone(node, run, tiny_bridge, loaded, customize_tiny):
    model, _, _ = loaded
    unet = tiny_backbone(SEED).unet
    first, second = _customization(customize_tiny, unet, 1), _customization(customize_tiny, unet, 2)
    backbone = run(node("MVC_ApplyMotionModule"), model=model, motion_module="mm.safetensors", window=0).args[0]
    sampler = node("MVC_MVCustomSampler")

    def generate(customization):
        return run(sampler, model=backbone, trajectory=_cams(), positive=_conditioning(1),
                   negative=_conditioning(2), customization=customization, **SAMPLER).args[0]["samples"]

    a_alone = generate(first)
    b_after_a, a_after_b = generate(second), generate(first)
    fresh = run(node("MVC_ApplyMotionModule"), model=model, motion_module="mm.safetensors", window=0).args[0]
    b_alone = run(sampler, model=fresh, trajectory=_cams(), positive=_conditioning(1), negative=_conditioning(2),
                  customization=second, **SAMPLER).args[0]["samples"]
    assert torch.equal(a_alone, a_after_b) and torch.equal(b_alone, b_after_a)
    assert not torch.allclose(a_alone, b_alone, atol=1e-4)  # the two customizations do differ


def test_inputs_the_bridge_cannot_use_are_named(node, run, tiny_bridge, loaded, photos):
    model, clip, vae = loaded
    images, masks, cams = photos
    apply = node("MVC_ApplyMotionModule")
    backbone = run(apply, model=model, motion_module="mm.safetensors").args[0]
    with pytest.raises(ValueError, match=r"^MVCustom Encode Prompt: input 'backbone' has no CLIP of its own .*"
                                         r"CLIP Text Encode"):
        run(node("MVC_EncodePrompt"), backbone=backbone, text="x")
    with pytest.raises(ValueError, match=r"^MVCustom Decode Latent: input 'backbone' has no VAE of its own .*"
                                         r"VAE Decode"):
        run(node("MVC_DecodeLatent"), backbone=backbone, latent={"samples": torch.zeros(1, 4, 8, 8)})
    train = node("MVC_TrainCustomization")
    with pytest.raises(ValueError, match=r"^MVCustom Train Customization: input 'clip' must be connected"):
        run_node(train, backbone=backbone, vae=vae, images=images, masks=masks, cameras=cams, **SMALL_TRAINING)
    sdxl = fake_comfy.ModelPatcher(copy.copy(model.model), model.load_device, model.offload_device)
    sdxl.model.model_config = type("SDXL", (), {})()
    with pytest.raises(ValueError, match=r"^MVCustom Apply Motion Module: input 'model' is a SDXL model"):
        run(apply, model=sdxl, motion_module="mm.safetensors")
    with pytest.raises(ValueError, match=r"^MVCustom Apply Motion Module: input 'model' must be a MODEL"):
        run(apply, model=clip, motion_module="mm.safetensors")
    with pytest.raises(ValueError, match=r"^MVCustom Apply Motion Module: input 'motion_module' must name a model file "
                                         r"in models/animatediff_models or models/mvcustom; 'absent\.safetensors' "
                                         r"is not one"):
        run(apply, model=model, motion_module="absent.safetensors")
    assert apply.validate_inputs(motion_module="mm.safetensors") is True
    assert apply.validate_inputs(motion_module="absent.safetensors").startswith(
        "MVCustom Apply Motion Module: input 'motion_module' must name a model file")


def test_the_shipped_sd15_layout_refuses_weights_of_another_shape(node, run, bridge, models, loaded):
    """Without the tiny configs, the tiny MODEL is not SD1.5-shaped: the error names the node, input and a key."""
    model, _, _ = loaded
    (models.dir / "animatediff_models").mkdir()
    save_motion_module(tiny_backbone(SEED).unet, models.dir / "animatediff_models" / "mm.safetensors")
    with pytest.raises(ValueError, match=r"^MVCustom Apply Motion Module: input 'motion_module' 'mm\.safetensors' "
                                         r"could not be read as a motion module: .*not SD1\.5's"):
        run(node("MVC_ApplyMotionModule"), model=model, motion_module="mm.safetensors")


def test_nodes_load_only_the_modules_they_run(node, run, models):
    own = run(node("MVC_TinyBackbone"), seed=0, window=0).args[0]
    run(node("MVC_DecodeLatent"), backbone=own, latent={"samples": torch.zeros(1, 4, 8, 8)})
    run(node("MVC_EncodePrompt"), backbone=own, text="a toy")
    assert models.loaded == [[own.patchers_by_part["vae"]], [own.patchers_by_part["text_encoder"]]]


def test_each_node_asks_model_management_for_its_activation_memory(node, run, models, tiny_bridge, loaded, photos,
                                                                     host, tmp_path, monkeypatch):
    """ComfyUI frees or offloads other models until weights + memory_required fit: each node states its own."""
    from mvcustom_core.memory import MAX_WORKSPACE
    from mvcustom_core.memory_estimate import unet_activation_bytes, vae_decode_frame_bytes

    monkeypatch.setattr(host["folder_paths"], "models_dir", str(tmp_path / "models"), raising=False)
    model, clip, vae = loaded
    backbone = run(node("MVC_ApplyMotionModule"), model=model, motion_module="mm.safetensors", window=3).args[0]
    run(node("MVC_MVCustomSampler"), model=backbone, trajectory=_cams(5), positive=_conditioning(1),
        negative=_conditioning(2), **{**SAMPLER, "window": 4, "overlap": 1})
    sd15 = type("UNet", (), {"config": type("Config", (), shipped_config("sd15/unet"))})()
    assert models.memory[-1] == unet_activation_bytes(sd15, 2 * 4, (8, 8), torch.float32) + MAX_WORKSPACE
    own = run(node("MVC_TinyBackbone"), seed=0, window=0).args[0]
    run(node("MVC_DecodeLatent"), backbone=own, latent={"samples": torch.zeros(6, 4, 8, 12)})
    assert models.memory[-1] == 6 * vae_decode_frame_bytes(own.backbone.vae, (64, 96), torch.float32)
    images, masks, cams = photos
    run_node(node("MVC_TrainCustomization"), backbone=backbone, clip=clip, vae=vae, images=images, masks=masks,
             cameras=cams, name="memory", **{**SMALL_TRAINING, "steps": 1})
    assert models.memory[-1] == 1e20  # as ComfyUI's own training node asks: every other model offloaded


def test_dfr_previews_ask_for_one_workspace_not_for_a_unet_call(node, run, models, tiny_bridge, loaded,
                                                                customize_tiny):
    """The DFR node never calls the UNet (it renders the customization's field for the anchor, chunked to one
    workspace): asking model management for a UNet call over every frame would offload other models for nothing."""
    from mvcustom_core.memory import MAX_WORKSPACE

    model, _, _ = loaded
    backbone = run(node("MVC_ApplyMotionModule"), model=model, motion_module="mm.safetensors", window=0).args[0]
    customization = _customization(customize_tiny, tiny_backbone(SEED).unet, 1)
    run(node("MVC_DepthAwareFeatureRendering"), trajectory=_cams(16), anchor_frame=-1,
        depth_source="customization field", steps=-1, layers="", scale=0.0, shift=0.0, max_rel_depth_jump=0.1,
        model=backbone, customization=customization)
    assert models.loaded[-1] == [backbone.model, backbone.motion] and models.memory[-1] == MAX_WORKSPACE


def test_patches_outside_the_weights_are_named_in_a_warning(node, run, tiny_bridge, loaded, caplog):
    """LoRAs are weight patches (the bridge reads the patched weights); attention patches, object patches and CFG
    functions change ComfyUI's own forward, which the MVCustom nodes do not run: the user is told which."""
    model, _, _ = loaded
    model.object_patches = {"model_sampling": object()}
    model.model_options = {"transformer_options": {"patches_replace": {"attn1": {("input", 1): object()}}},
                           "sampler_cfg_function": lambda args: args["cond"]}
    # ComfyUI's Train LoRA node returns its MODEL with the trained adapters as weight wrappers
    model.weight_wrapper_patches = {"diffusion_model.out.2.weight": [lambda w: w], "diffusion_model.out.2.bias": []}
    caplog.set_level("WARNING")
    run(node("MVC_ApplyMotionModule"), model=model, motion_module="mm.safetensors")
    warned = [r.getMessage() for r in caplog.records if "Apply Motion Module" in r.getMessage()]
    assert len(warned) == 1
    for name in ("object patch model_sampling", "transformer_options['patches_replace']", "sampler_cfg_function",
                 "weight wrappers on 1 weight"):
        assert name in warned[0]
    caplog.clear()
    model.object_patches, model.model_options, model.weight_wrapper_patches = {}, {"transformer_options": {}}, {}
    run(node("MVC_ApplyMotionModule"), model=model, motion_module="mm.safetensors")
    assert not [r for r in caplog.records if "Apply Motion Module" in r.getMessage()]


def test_conditioning_options_the_sampler_does_not_apply_are_named_in_a_warning(node, run, tiny_bridge, loaded,
                                                                                 caplog):
    """CLIP Text Encode's pooled output means nothing to SD1.5; a ControlNet, hooks or a timestep range on the
    conditioning would be dropped without a word: the sampler names them."""
    model, _, _ = loaded
    backbone = run(node("MVC_ApplyMotionModule"), model=model, motion_module="mm.safetensors", window=0).args[0]
    text = _conditioning(1)[0][0]
    positive = [[text, {"pooled_output": torch.zeros(1, 32), "control": object(), "start_percent": 0.3}]]
    caplog.set_level("WARNING")
    run(node("MVC_MVCustomSampler"), model=backbone, trajectory=_cams(), positive=positive,
        negative=[[torch.zeros_like(text), {"pooled_output": torch.zeros(1, 32)}]], **SAMPLER)
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MVCustom Sampler:")]
    assert warned == ["MVCustom Sampler: input 'positive' carries control, start_percent, which the MVCustom nodes do "
                      "not apply (they read the prompt's text states only)"]
