"""AnimateDiff motion modules: original v1/v2/v3 layouts -> MotionAdapter bit for bit, backbone assembly, errors.

Original-layout files are written by the inverse table (``export_motion_module_state_dict``) from random tiny
adapters; diffusers' ``convert_animatediff_checkpoint_to_diffusers`` is the independent reference for the names.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from safetensors.torch import save_file

from mvcustom_core.backbone.loading import CheckpointError, build_backbone, export_ldm_state_dict
from mvcustom_core.backbone.motion_module import (
    check_num_frames,
    export_motion_module_state_dict,
    inspect_motion_module,
    load_motion_module,
    motion_adapter_config,
    motion_key_table,
    sinusoidal_positions,
    trained_attention_window,
)
from mvcustom_core.backbone.loading import StateFile, open_state_file, shipped_config
from mvcustom_core.backbone.tiny import tiny_components, tiny_motion_adapter

TINY_ADAPTER = shipped_config("tiny/motion_adapter")


def _save(state, path):
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)  # AnimateDiff training output wraps the dict
    return path


@pytest.fixture(scope="module")
def components():
    return tiny_components(seed=5)


@pytest.mark.parametrize(("mid_block", "version"), [(True, "v2"), (False, "v3")])
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_original_layout_round_trip(tmp_path, mid_block, version, suffix):
    adapter = tiny_motion_adapter(seed=7, mid_block=mid_block)
    state = export_motion_module_state_dict(adapter)
    assert any(k.startswith("mid_block.") for k in state) is mid_block
    path = _save(state, tmp_path / f"mm{suffix}")

    info = inspect_motion_module(open_state_file(path))
    assert (info.version, info.has_mid_block, info.max_seq_length, info.block_out_channels) == (
        version, mid_block, 32, (32, 64))
    assert info.attention_window == 1  # no metadata: a stock module, trained with temporal attention
    loaded = load_motion_module(path, config=dict(TINY_ADAPTER, use_motion_mid_block=mid_block))
    want, got = adapter.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_original_names_agree_with_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    adapter = tiny_motion_adapter(seed=1)
    original = export_motion_module_state_dict(adapter)
    # Original per-module names (guoyww/AnimateDiff motion_module.py): 2 positional encodings per block.
    block = "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0."
    assert block + "attention_blocks.1.pos_encoder.pe" in original
    assert "up_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.ff_norm.weight" in original
    assert "mid_block.motion_modules.0.temporal_transformer.proj_out.bias" in original
    converted = convert_animatediff_checkpoint_to_diffusers(original)
    want = {k: v for k, v in adapter.state_dict().items() if not k.endswith("pos_embed.pe")}  # diffusers re-derives pe
    assert converted.keys() == want.keys()
    assert all(torch.equal(converted[k], want[k]) for k in want)


@pytest.mark.parametrize(("config", "modules", "original_keys"), [("v2", 21, 588), ("v3", 20, 560)])
def test_full_size_key_counts(config, modules, original_keys):
    """v2: 8 down + 12 up + 1 mid temporal transformers; v3 drops the mid one. 27 diffusers tensors each, 28 original
    (one positional encoding per attention block)."""
    from diffusers import MotionAdapter

    with torch.device("meta"):
        adapter = MotionAdapter.from_config(shipped_config(f"animatediff/{config}"))
    keys = adapter.state_dict().keys()
    assert len(keys) == 27 * modules
    original = export_motion_module_state_dict(adapter)
    assert len(original) == original_keys == 28 * modules
    assert original["down_blocks.3.motion_modules.1.temporal_transformer.proj_in.weight"].shape == (1280, 1280)
    assert original["up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.0."
                    "pos_encoder.pe"].shape == (1, 32, 320)
    assert original["down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.ff.net.0.proj.weight"
                    ].shape == (2560, 320)  # GEGLU: 2 x 4 x 320


class _HeaderOnly(StateFile):
    """Names and shapes of a file without tensors (what ``safe_open`` reads from a header)."""

    def __init__(self, shapes):  # noqa: D107 - nothing is opened
        self.path = "header-only"
        self._shapes, self._handle = shapes, None


@pytest.mark.parametrize(("config", "version"), [("v2", "v2"), ("v3", "v3")])
def test_default_config_is_picked_from_the_header(config, version):
    """A full-size original-layout header selects a config whose MotionAdapter has exactly the file's tensors."""
    from diffusers import MotionAdapter

    with torch.device("meta"):
        reference = MotionAdapter.from_config(shipped_config(f"animatediff/{config}"))
    header = _HeaderOnly({k: tuple(v.shape) for k, v in export_motion_module_state_dict(reference).items()})
    info = inspect_motion_module(header)
    assert (info.version, info.max_seq_length, info.block_out_channels) == (version, 32, (320, 640, 1280, 1280))
    with torch.device("meta"):
        chosen = MotionAdapter.from_config(motion_adapter_config(info))
    shapes = {k: tuple(v.shape) for k, v in chosen.state_dict().items()}
    table = motion_key_table(shapes)
    assert {m.ldm for m in table} | {k for k in header.keys if "attention_blocks.1.pos_encoder" in k} == set(
        header.keys)
    assert all(header.shape(m.ldm) == shapes[m.diffusers] for m in table)


def test_sdxl_motion_module_is_named(tmp_path):
    # 3-level SDXL-style module (diffusers CHECKPOINT_KEY_NAMES "animatediff_sdxl_beta"); zero-size tensors keep it
    # cheap: only the header matters before the config is chosen.
    state = {}
    for block, channels in enumerate((320, 640, 1280)):
        prefix = f"down_blocks.{block}.motion_modules.0.temporal_transformer."
        state[prefix + "proj_in.weight"] = torch.zeros(channels, 0)
        state[prefix + "transformer_blocks.0.attention_blocks.0.pos_encoder.pe"] = torch.zeros(1, 32, 0)
    path = _save(state, tmp_path / "mm_sdxl_v10_beta.safetensors")
    with pytest.raises(CheckpointError, match=r"channels \[320, 640, 1280\] are not SD1.5's .*SDXL"):
        load_motion_module(path)


def test_sinusoid_matches_closed_form_and_diffusers():
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    pe = sinusoidal_positions(32, 8)
    p, i = 5, 1  # pe[p, 2i] = sin(p / 10000^(2i/C)), pe[p, 2i+1] = cos(...)
    assert pe[0, p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 8)), abs=1e-6)
    assert pe[0, p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 8)), abs=1e-6)
    assert torch.equal(pe, SinusoidalPositionalEmbedding(8, 32).pe)


def test_backbone_equals_diffusers_from_unet2d(components):
    from diffusers import UNetMotionModel

    adapter = tiny_motion_adapter(seed=2)
    ours = build_backbone(components, adapter)
    reference = UNetMotionModel.from_unet2d(components.unet, adapter)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    g = torch.Generator().manual_seed(0)
    frames = 3
    latents = torch.randn(1, 4, frames, 8, 8, generator=g)
    text = torch.randn(1, 77, 32, generator=g).repeat_interleave(frames, dim=0)
    with torch.no_grad():
        assert torch.equal(ours(latents, 10, text).sample, reference(latents, 10, text).sample)


def test_frames_beyond_encoding_length(tmp_path, components):
    adapter = tiny_motion_adapter(seed=4, mid_block=False)
    path = _save(export_motion_module_state_dict(adapter), tmp_path / "mm.safetensors")
    loaded = load_motion_module(path, config=dict(TINY_ADAPTER, use_motion_mid_block=False))
    check_num_frames(loaded, 32)
    with pytest.raises(ValueError, match="33 frames exceed the motion module's positional encoding length 32"):
        check_num_frames(loaded, 33)

    longer = load_motion_module(path, config=dict(TINY_ADAPTER, use_motion_mid_block=False), max_seq_length=40)
    check_num_frames(longer, 40)
    pe = longer.down_blocks[0].motion_modules[0].transformer_blocks[0].pos_embed.pe
    assert torch.equal(pe, sinusoidal_positions(40, 32))
    assert torch.equal(pe[:, :32], loaded.down_blocks[0].motion_modules[0].transformer_blocks[0].pos_embed.pe)
    assert longer.config.motion_max_seq_length == 40
    unet = build_backbone(components, longer)
    text = torch.zeros(34, 77, 32)
    with torch.no_grad():
        assert unet(torch.zeros(1, 4, 34, 4, 4), 10, text).sample.shape == (1, 4, 34, 4, 4)


def test_learned_encoding_is_not_extended(tmp_path):
    state = export_motion_module_state_dict(tiny_motion_adapter(seed=4, mid_block=False))
    for key in [k for k in state if k.endswith(".pe")]:
        state[key] = torch.randn(state[key].shape)
    path = _save(state, tmp_path / "learned.safetensors")
    config = dict(TINY_ADAPTER, use_motion_mid_block=False)
    load_motion_module(path, config=config)  # as stored: fine
    with pytest.raises(CheckpointError, match="not the sinusoid formula; cannot extend it to 40 frames"):
        load_motion_module(path, config=config, max_seq_length=40)


def test_v1_length_24_is_detected(tmp_path):
    adapter = tiny_motion_adapter(seed=0, mid_block=False)
    state = export_motion_module_state_dict(adapter)
    for key in [k for k in state if k.endswith(".pe")]:
        state[key] = state[key][:, :24]
    path = _save(state, tmp_path / "mm_sd_v15.safetensors")
    assert inspect_motion_module(open_state_file(path)).version == "v1"
    loaded = load_motion_module(path, config=dict(TINY_ADAPTER, use_motion_mid_block=False, motion_max_seq_length=24))
    with pytest.raises(ValueError, match="length 24"):
        check_num_frames(loaded, 25)


def test_diffusers_layout_adapter_loads(tmp_path):
    adapter = tiny_motion_adapter(seed=9)
    path = _save({k: v.contiguous() for k, v in adapter.state_dict().items()}, tmp_path / "adapter.safetensors")
    assert inspect_motion_module(open_state_file(path)).layout == "diffusers_motion_adapter"
    loaded = load_motion_module(path, config=TINY_ADAPTER)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in adapter.state_dict().items())


def test_checkpoint_given_as_motion_module_is_named(tmp_path, components):
    path = _save(export_ldm_state_dict(components), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="an SD1.x checkpoint, not a motion module; load it with "
                                              "load_sd15_checkpoint"):
        load_motion_module(path)


def test_sdxl_motion_module_shape_error(tmp_path):
    state = export_motion_module_state_dict(tiny_motion_adapter(seed=0))
    key = "down_blocks.0.motion_modules.0.temporal_transformer.proj_out.weight"
    state[key] = torch.zeros(32, 48)
    with pytest.raises(CheckpointError, match=re.escape(f"{key!r} has shape [32, 48], expected [32, 32]")):
        load_motion_module(_save(state, tmp_path / "bad.safetensors"), config=TINY_ADAPTER)


def test_adapter_that_does_not_fit_the_unet(components):
    from diffusers import MotionAdapter

    adapter = MotionAdapter.from_config(dict(TINY_ADAPTER, block_out_channels=[16, 64], motion_norm_num_groups=8))
    with pytest.raises(CheckpointError, match=r"block_out_channels \[16, 64\] do not match the UNet's \[32, 64\]"):
        build_backbone(components, adapter)


def test_key_table_rejects_unknown_names():
    with pytest.raises(KeyError, match="conv_in.weight"):
        motion_key_table(["conv_in.weight"])


@pytest.mark.parametrize(("text", "window"), [("1", 1), ("7", 7), ("full", None)])
def test_trained_attention_window_is_read_from_the_metadata(tmp_path, text, window):
    path = tmp_path / "mm.safetensors"
    save_file(export_motion_module_state_dict(tiny_motion_adapter(seed=7)), str(path),
              metadata={"mvcustom.attention_window": text})
    assert trained_attention_window(path) == window


@pytest.mark.parametrize("text", ["0", "-3", "window 5", ""])
def test_unreadable_attention_metadata_is_named(tmp_path, text):
    path = tmp_path / "mm.safetensors"
    save_file(export_motion_module_state_dict(tiny_motion_adapter(seed=7)), str(path),
              metadata={"mvcustom.attention_window": text})
    with pytest.raises(CheckpointError, match=r"mm\.safetensors: metadata mvcustom\.attention_window=.* is neither "
                                              r"'full' nor a window k >= 1"):
        trained_attention_window(path)
