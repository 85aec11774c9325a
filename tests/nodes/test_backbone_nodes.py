"""Backbone nodes against the core loaders, with ComfyUI's model folders, ModelPatcher and model management faked.

The tier-2 fake (fake_comfy.py) has no model folders or ``load_models_gpu`` (its ``ModelPatcher`` is used); the doubles
of the ``models`` fixture (conftest.py) follow ComfyUI's signatures (``folder_paths.get_full_path``/``get_filename_list``/``add_model_folder_path``,
``ModelPatcher(model, load_device, offload_device, size=0)``, ``load_models_gpu(models, memory_required=0)``).
"""

from __future__ import annotations

import functools
import importlib
import os

import pytest
import torch

from mvcustom_core.backbone.dense_attention import (DenseSpatioTemporalAttnProcessor, dense_attention_window,
                                                    enable_dense_attention, motion_attention_window)
from mvcustom_core.backbone.loading import export_ldm_state_dict, shipped_config
from mvcustom_core.backbone.tiny import TINY_CONFIGS, tiny_backbone, tiny_components

from .conftest import widget_defaults


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A tiny SD1.x single-file checkpoint and a tiny AnimateDiff-layout motion module."""
    from safetensors.torch import save_file

    from mvcustom_core.backbone.training import save_motion_module

    folder = tmp_path_factory.mktemp("tiny_files")
    save_file(export_ldm_state_dict(tiny_components(seed=4)), str(folder / "tiny_sd15.safetensors"))
    save_motion_module(tiny_backbone(seed=4).unet, folder / "tiny_mm.safetensors")
    return folder


def test_tiny_backbone_node_wraps_the_core_backbone_in_model_patchers(node, run, models, bridge):
    result = run(node("MVC_TinyBackbone"), seed=2, window=3).args[0]
    expected = tiny_backbone(seed=2)
    for name, tensor in expected.unet.state_dict().items():
        assert torch.equal(result.backbone.unet.state_dict()[name], tensor), name
    assert set(result.patchers_by_part) == {"unet", "vae", "text_encoder"}
    for name, patcher in result.patchers_by_part.items():
        assert patcher.model.module is getattr(result.backbone, name)
        assert dict(patcher.model.named_parameters()).keys() == {
            f"module.{k}" for k, _ in getattr(result.backbone, name).named_parameters()}
        assert patcher.load_device == patcher.offload_device == torch.device("cpu")

    # A run loads only what it uses and gets views: dense attention on the run's UNet, never on the shared one.
    core = bridge.prepare_backbone(node("MVC_MVCustomSampler"), result, ["unet"], input_name="model")
    assert models.loaded == [[result.patchers_by_part["unet"]]]
    assert core.vae is None and core.text_encoder is None
    assert result.window == dense_attention_window(core.unet) == 3
    with pytest.raises(RuntimeError, match="not enabled"):
        dense_attention_window(result.backbone.unet)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(core.unet.parameters(), result.backbone.unet.parameters()))
    full = run(node("MVC_TinyBackbone"), seed=2, window=0).args[0]  # 0 = full, as saved workflows mean it
    assert full.window is None
    assert dense_attention_window(bridge.prepare_backbone(node("MVC_MVCustomSampler"), full, ["unet"]).unet) is None
    auto = run(node("MVC_TinyBackbone"), seed=2).args[0]  # default: the random (stock-like) module's temporal
    auto_unet = bridge.prepare_backbone(node("MVC_MVCustomSampler"), auto, ["unet"]).unet
    assert auto.window == motion_attention_window(auto_unet) == 1
    assert not any(isinstance(p, DenseSpatioTemporalAttnProcessor) for p in auto_unet.attn_processors.values())


def _customization_file(path):
    from mvcustom_core.customization.file_format import FORMAT_NAME
    from safetensors.torch import save_file

    save_file({"token_embedding": torch.zeros(4)}, str(path), metadata={"format": FORMAT_NAME})


def test_model_folders_are_registered_and_listed(node, models, tiny_files):
    cls = node("MVC_LoadBackbone")
    (models.dir / "animatediff_models").mkdir()
    (models.dir / "mvcustom").mkdir()
    os.link(tiny_files / "tiny_mm.safetensors", models.dir / "mvcustom" / "trained.safetensors")
    _customization_file(models.dir / "mvcustom" / "subject.safetensors")
    os.link(tiny_files / "tiny_mm.safetensors", models.dir / "animatediff_models" / "mm.safetensors")
    os.link(tiny_files / "tiny_sd15.safetensors", models.dir / "checkpoints" / "sd.safetensors")
    inputs = {i.id: i for i in cls.GET_SCHEMA().inputs}
    assert inputs["checkpoint"].options == ["sd.safetensors"]
    # Load Backbone offers the motion modules of both folders, not the customization ...
    assert inputs["motion_module"].options == ["mm.safetensors", "trained.safetensors"]
    # ... while animatediff_models (AnimateDiff-Evolved's motion-model list) holds only its own folder
    assert models.folders["animatediff_models"][0] == [str(models.dir / "animatediff_models")]
    assert models.folders["mvcustom"] == ([str(models.dir / "mvcustom")], {".safetensors"})
    assert node("MVC_LoadCustomization").GET_SCHEMA().inputs[0].options == ["subject.safetensors"]


def test_a_motion_module_in_the_pack_folder_loads(node, run, models, tiny_files, tiny_loaders):
    for folder in ("mvcustom", "animatediff_models"):
        (models.dir / folder).mkdir()
    os.link(tiny_files / "tiny_mm.safetensors", models.dir / "mvcustom" / "trained.safetensors")
    os.link(tiny_files / "tiny_mm.safetensors", models.dir / "animatediff_models" / "stock.safetensors")
    os.link(tiny_files / "tiny_sd15.safetensors", models.dir / "checkpoints" / "sd.safetensors")
    out = run(node("MVC_LoadBackbone"), checkpoint="sd.safetensors", motion_module="trained.safetensors").args[0]
    assert out.source == "sd.safetensors + trained.safetensors"
    same = run(node("MVC_LoadBackbone"), checkpoint="sd.safetensors", motion_module="stock.safetensors").args[0]
    for name, tensor in same.backbone.unet.state_dict().items():
        assert torch.equal(out.backbone.unet.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match=r"^MVCustom Load Backbone: input 'motion_module' must name a model file in "
                                         r"models/animatediff_models or models/mvcustom; 'gone\.safetensors' is not one"):
        run(node("MVC_LoadBackbone"), checkpoint="sd.safetensors", motion_module="gone.safetensors")


@pytest.fixture
def tiny_loaders(pack, monkeypatch):
    """The shipped configs are SD1.5-sized; point the node's loaders at the tiny ones for the tiny file pair."""
    module = importlib.import_module(f"{pack.__name__}.nodes.backbone")
    tiny_configs = {k: shipped_config(v) for k, v in TINY_CONFIGS.items()}
    monkeypatch.setattr(module, "load_sd15_checkpoint",
                        functools.partial(module.load_sd15_checkpoint, config=tiny_configs))
    monkeypatch.setattr(module, "load_motion_module", functools.partial(
        module.load_motion_module, config=shipped_config("tiny/motion_adapter")))


def test_load_node_builds_the_backbone_from_files(node, run, models, tiny_files, tiny_loaders, host):
    (models.dir / "animatediff_models").mkdir()
    os.link(tiny_files / "tiny_mm.safetensors", models.dir / "animatediff_models" / "mm.safetensors")
    os.link(tiny_files / "tiny_sd15.safetensors", models.dir / "checkpoints" / "sd.safetensors")
    bar_cls = host["comfy.utils"].ProgressBar
    before = len(bar_cls.instances)
    result = run(node("MVC_LoadBackbone"), checkpoint="sd.safetensors", motion_module="mm.safetensors",
                 dtype="bf16", window=5).args[0]
    bars = bar_cls.instances[before:]
    assert len(bars) == 2 and all(b.current == b.total > 10 for b in bars)  # every tensor of both files reported
    expected = tiny_backbone(seed=4)
    state = result.backbone.unet.state_dict()
    for name, tensor in expected.unet.state_dict().items():
        assert torch.equal(state[name], tensor.to(torch.bfloat16)), name
    assert result.backbone.vae.dtype == torch.bfloat16 and result.dtype == torch.bfloat16
    assert result.window == 5
    assert set(result.patchers_by_part) == {"unet", "vae", "text_encoder"}


def test_load_node_errors_name_node_and_input(node, run, models, tiny_files):
    cls = node("MVC_LoadBackbone")
    (models.dir / "animatediff_models").mkdir()
    os.link(tiny_files / "tiny_mm.safetensors", models.dir / "animatediff_models" / "mm.safetensors")
    os.link(tiny_files / "tiny_mm.safetensors", models.dir / "checkpoints" / "mm_in_checkpoints.safetensors")
    with pytest.raises(ValueError, match=r"^MVCustom Load Backbone: input 'checkpoint' must name a model file in "
                                         r"models/checkpoints; 'nope\.safetensors' is not one"):
        run(cls, checkpoint="nope.safetensors", motion_module="mm.safetensors")
    with pytest.raises(ValueError, match=r"^MVCustom Load Backbone: input 'checkpoint' 'mm_in_checkpoints\.safetensors' "
                                         r"could not be read as an SD1\.x checkpoint: .*not an SD1\.x single-file "
                                         r"checkpoint: looks like an AnimateDiff motion module"):
        run(cls, checkpoint="mm_in_checkpoints.safetensors", motion_module="mm.safetensors")
    with pytest.raises(ValueError, match=r"^MVCustom Load Backbone: input 'motion_module' is empty"):
        run(cls, checkpoint="mm_in_checkpoints.safetensors", motion_module="")
    with pytest.raises(ValueError, match=r"^MVCustom Load Backbone: input 'window' must be -1 \(auto\), 0 \(full\)"):
        run(cls, checkpoint="mm_in_checkpoints.safetensors", motion_module="mm.safetensors", window=-2)
    # The same refusals at queue time, before the prompt runs (ComfyUI does not check V3 combo values).
    assert cls.validate_inputs(checkpoint="mm_in_checkpoints.safetensors", motion_module="mm.safetensors") is True
    assert cls.validate_inputs(checkpoint="nope.safetensors", motion_module="mm.safetensors").startswith(
        "MVCustom Load Backbone: input 'checkpoint' must name a model file")
    assert cls.validate_inputs(checkpoint="mm_in_checkpoints.safetensors", motion_module="../mm.safetensors").startswith(
        "MVCustom Load Backbone: input 'motion_module' must name a model file")


def test_load_node_honours_cancel_while_reading(node, run, models, tiny_files, tiny_loaders, mm):
    (models.dir / "animatediff_models").mkdir()
    os.link(tiny_files / "tiny_mm.safetensors", models.dir / "animatediff_models" / "mm.safetensors")
    os.link(tiny_files / "tiny_sd15.safetensors", models.dir / "checkpoints" / "sd.safetensors")
    mm.interrupt_requested = True
    with pytest.raises(mm.InterruptProcessingException):
        run(node("MVC_LoadBackbone"), checkpoint="sd.safetensors", motion_module="mm.safetensors")


def test_weights_placed_under_inference_mode_are_trainable_through_the_run_views(node, run, models, bridge):
    with torch.inference_mode():  # as ComfyUI's executor does
        result = run(node("MVC_TinyBackbone"), seed=0, window=1).args[0]
        # the fake patcher re-creates every tensor, like a move to the GPU: the shared modules hold inference tensors
        core = bridge.prepare_backbone(node("MVC_TrainCustomization"), result, ["unet", "vae", "text_encoder"])
    assert all(p.is_inference() for p in result.backbone.unet.parameters())
    for module in (core.unet, core.vae, core.text_encoder):
        assert not any(p.is_inference() for p in module.parameters())
    x = torch.randn(1, 4, 2, 8, 8, requires_grad=True)
    core.unet(x, 10, encoder_hidden_states=torch.randn(2, 77, 32)).sample.sum().backward()
    assert x.grad.abs().sum() > 0


def test_views_cast_for_training_are_trainable_too(node, run, models, bridge):
    """Half-precision weights (Load Backbone on a GPU) viewed in the float32 a training run asks for: the cast copies
    are made while ComfyUI's executor is in inference mode, and must still take part in autograd."""
    with torch.inference_mode():
        result = run(node("MVC_TinyBackbone"), seed=0, window=1).args[0]
        result.backbone.unet.to(torch.bfloat16)
        core = bridge.prepare_backbone(node("MVC_TrainCustomization"), result, ["unet"], dtype=torch.float32)
    assert {p.dtype for p in result.backbone.unet.parameters()} == {torch.bfloat16}  # the shared module keeps its dtype
    assert all(p.dtype == torch.float32 and not p.is_inference() for p in core.unet.parameters())
    x = torch.randn(1, 4, 2, 8, 8, requires_grad=True)
    core.unet(x, 10, encoder_hidden_states=torch.randn(2, 77, 32)).sample.sum().backward()
    assert x.grad.abs().sum() > 0


def _stock_files(folder, suffix):
    """The tiny motion module as a stock AnimateDiff file: original layout, no metadata (.safetensors or .ckpt)."""
    from safetensors.torch import save_file

    from mvcustom_core.backbone.motion_module import export_motion_module_state_dict
    from mvcustom_core.backbone.training import motion_adapter_from_unet

    state = export_motion_module_state_dict(motion_adapter_from_unet(tiny_backbone(seed=4).unet))
    path = folder / f"stock{suffix}"
    if suffix == ".ckpt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    return path.name


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_auto_attention_on_a_stock_module_is_its_own_temporal_attention(node, run, models, tiny_files,
                                                                         tiny_loaders, suffix, bridge):
    (models.dir / "animatediff_models").mkdir()
    stock = _stock_files(models.dir / "animatediff_models", suffix)
    os.link(tiny_files / "tiny_sd15.safetensors", models.dir / "checkpoints" / "sd.safetensors")
    cls = node("MVC_LoadBackbone")
    assert widget_defaults(cls)["window"] == -1  # auto
    result = run(cls, checkpoint="sd.safetensors", motion_module=stock, dtype="fp32").args[0]
    assert result.window == 1
    plain = tiny_backbone(seed=4).unet  # the same weights, diffusers' own processors
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(3, 7, plain.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = plain(x, 500, encoder_hidden_states=text).sample
        assert torch.equal(_run_unet(bridge, node, result)(x, 500, encoder_hidden_states=text).sample, expected)
        full = run(cls, checkpoint="sd.safetensors", motion_module=stock, dtype="fp32", window=0).args[0]
        moved = _run_unet(bridge, node, full)(x, 500, encoder_hidden_states=text).sample
    assert full.window is None and (moved - expected).abs().max() > 1e-3  # dense attention on it is another model


@pytest.mark.parametrize(("trained", "choice", "expected"), [(3, -1, 3), (None, -1, None), (3, 1, 1), (3, 0, None),
                                                             (None, 5, 5)])
def test_auto_attention_reads_the_trained_window_from_the_file(node, run, models, tiny_files, tiny_loaders, trained,
                                                               choice, expected, bridge):
    from mvcustom_core.backbone.training import save_motion_module

    unet = tiny_backbone(seed=4).unet
    enable_dense_attention(unet, trained)  # the attention the file records (what training ran last)
    (models.dir / "animatediff_models").mkdir()
    save_motion_module(unet, models.dir / "animatediff_models" / "dense.safetensors")
    os.link(tiny_files / "tiny_sd15.safetensors", models.dir / "checkpoints" / "sd.safetensors")
    result = run(node("MVC_LoadBackbone"), checkpoint="sd.safetensors", motion_module="dense.safetensors",
                 window=choice).args[0]
    assert result.window == motion_attention_window(_run_unet(bridge, node, result)) == expected


def _run_unet(bridge, node, backbone):
    """The UNet a sampler run gets (the backbone's attention is installed on that view only)."""
    return bridge.prepare_backbone(node("MVC_MVCustomSampler"), backbone, ["unet"], input_name="model").unet
