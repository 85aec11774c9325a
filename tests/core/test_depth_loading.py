"""Depth model files: each supported key layout loads into transformers' classes and computes what its source computes.

Tiny random models are written in the layouts the real files have:
- Depth Anything V2 original (``pretrained.*`` / ``depth_head.*``): checked against an independent forward pass of
  the original architecture (DINOv2 with fused qkv, DPT head fusing refinenet4 first) written here from the
  paper's description, so a wrong rename or qkv split fails;
- transformers folders as saved by transformers 4.x (``attention.attention.query``, BEiT ``encoder.layer``), the
  names on the Hugging Face hub: loaded outputs equal the source model's bit for bit.
The full-size key lists (original layout from the architecture, hub layout from the shipped configs) are loaded into
models built from the shipped configs, with zero-storage tensors, and parameter counts checked against the papers.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mvcustom_core.backbone.loading import shipped_config
from mvcustom_core.depth import (DepthModel, DepthModelError, build_depth_module, detect_depth_layout,
                                 estimate_depth, load_depth_model, original_depth_anything_shapes,
                                 shipped_depth_config, tiny_depth_model)

TINY_DA = shipped_config("tiny/depth_anything")
TINY_ZOE = {
    "model_type": "zoedepth",
    "backbone_config": {"model_type": "beit", "image_size": 64, "patch_size": 16, "num_hidden_layers": 4,
                        "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                        "use_relative_position_bias": True, "reshape_hidden_states": False,
                        "out_features": ["stage1", "stage2", "stage3", "stage4"]},
    "neck_hidden_sizes": [8, 16, 32, 32], "fusion_hidden_size": 16, "bottleneck_features": 16,
    "num_relative_features": 8, "bin_embedding_dim": 8, "num_attractors": [4, 2, 2, 1],
    "bin_configurations": [{"name": "nyu", "n_bins": 8, "min_depth": 1e-3, "max_depth": 10.0},
                           {"name": "kitti", "n_bins": 8, "min_depth": 1e-3, "max_depth": 80.0}],
    # the classifier between the two heads is built for a 128-wide patch transformer of 4 layers
    "num_patch_transformer_layers": 4, "patch_transformer_hidden_size": 128,
    "patch_transformer_intermediate_size": 32, "patch_transformer_num_attention_heads": 2,
}
# Installed transformers (5.x) module names -> the names in files saved by transformers 4.x (the hub's).
_FILE_NAMES = [
    (r"^backbone\.beit\.embeddings\.", "backbone.embeddings."),
    (r"^backbone\.beit\.layers\.(\d+)\.relative_position_bias\.",
     r"backbone.encoder.layer.\1.attention.attention.relative_position_bias."),
    (r"^backbone\.beit\.layers\.(\d+)\.mlp\.fc1\.", r"backbone.encoder.layer.\1.intermediate.dense."),
    (r"^backbone\.beit\.layers\.(\d+)\.mlp\.fc2\.", r"backbone.encoder.layer.\1.output.dense."),
    (r"^backbone\.beit\.layers\.", "backbone.encoder.layer."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
]


def file_name(name: str) -> str:
    for pattern, repl in _FILE_NAMES:
        name = re.sub(pattern, repl, name)
    return name


def file_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {file_name(k): v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def random_original(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the original layout, scaled by fan-in so activations stay of order one."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in original_depth_anything_shapes(config).items():
        if len(shape) >= 2:
            fan_in = shape[0] if "resize_layers.0" in name or "resize_layers.1" in name else math.prod(shape[1:])
            out[name] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        else:
            centre = 1.0 if name.endswith(("gamma", "weight")) else 0.0  # layer scales and norm gains around 1
            out[name] = centre + 0.1 * torch.randn(shape, generator=g)
    return out


# ------------------------------------------------------------------ independent original Depth Anything V2 forward
def original_forward(sd: dict[str, torch.Tensor], config: dict, image: torch.Tensor) -> torch.Tensor:
    """DINOv2 ViT + DPT head of Depth Anything V2 on ``image [1, 3, H, W]`` (patch grid = the position grid)."""
    vit = config["backbone_config"]
    heads, patch, eps = vit["num_attention_heads"], vit["patch_size"], vit["layer_norm_eps"]
    x = F.conv2d(image, sd["pretrained.patch_embed.proj.weight"], sd["pretrained.patch_embed.proj.bias"], stride=patch)
    ph, pw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["pretrained.cls_token"], x], dim=1) + sd["pretrained.pos_embed"]
    c = x.shape[-1]

    def ln(t, p):
        return F.layer_norm(t, (c,), sd[p + ".weight"], sd[p + ".bias"], eps)

    taken = []
    take = [i - 1 for i in vit["out_indices"]]  # transformers counts the embeddings as stage 0
    for i in range(vit["num_hidden_layers"]):
        p = f"pretrained.blocks.{i}."
        q, k, v = F.linear(ln(x, p + "norm1"), sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(1, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1) @ v
        a = F.linear(a.transpose(1, 2).reshape(1, -1, c), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        x = x + sd[p + "ls1.gamma"] * a
        h = F.gelu(F.linear(ln(x, p + "norm2"), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        x = x + sd[p + "ls2.gamma"] * F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        if i in take:
            taken.append(ln(x, "pretrained.norm")[:, 1:])

    def conv(t, p, **kw):
        return F.conv2d(t, sd[p + ".weight"], sd.get(p + ".bias"), **kw)

    layers = []
    for i, t in enumerate(taken):
        t = conv(t.transpose(1, 2).reshape(1, c, ph, pw), f"depth_head.projects.{i}")
        r = f"depth_head.resize_layers.{i}"
        if i in (0, 1):
            t = F.conv_transpose2d(t, sd[r + ".weight"], sd[r + ".bias"], stride=4 if i == 0 else 2)
        elif i == 3:
            t = conv(t, r, stride=2, padding=1)
        layers.append(conv(t, f"depth_head.scratch.layer{i + 1}_rn", padding=1))

    def rcu(t, p):
        out = conv(F.relu(t), p + ".conv1", padding=1)
        return conv(F.relu(out), p + ".conv2", padding=1) + t

    def fuse(n, t, skip=None, size=None):
        p = f"depth_head.scratch.refinenet{n}"
        if skip is not None:
            t = t + rcu(skip, p + ".resConfUnit1")
        t = rcu(t, p + ".resConfUnit2")
        t = F.interpolate(t, **({"scale_factor": 2} if size is None else {"size": size}), mode="bilinear",
                          align_corners=True)
        return conv(t, p + ".out_conv")

    path = fuse(4, layers[3], size=layers[2].shape[-2:])
    path = fuse(3, path, layers[2], size=layers[1].shape[-2:])
    path = fuse(2, path, layers[1], size=layers[0].shape[-2:])
    path = fuse(1, path, layers[0])
    out = conv(path, "depth_head.scratch.output_conv1", padding=1)
    out = F.interpolate(out, size=(ph * patch, pw * patch), mode="bilinear", align_corners=True)
    out = conv(F.relu(conv(out, "depth_head.scratch.output_conv2.0", padding=1)), "depth_head.scratch.output_conv2.2")
    if config["depth_estimation_type"] == "metric":
        return torch.sigmoid(out)[:, 0] * config["max_depth"]
    return F.relu(out)[:, 0]


def _picture(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("metric", [False, True])
def test_original_layout_file_computes_the_original_architecture(tmp_path, metric):
    config = dict(TINY_DA, depth_estimation_type="metric", max_depth=20) if metric else \
        dict(TINY_DA, depth_estimation_type="relative", max_depth=1)
    sd = random_original(config)
    path = tmp_path / ("depth_anything_v2_metric_hypersim_tiny.safetensors" if metric else "da_v2_tiny.safetensors")
    save_file(sd, str(path))
    model = load_depth_model(path, config=config)
    assert model.family == "depth_anything" and model.kind == ("metric" if metric else "disparity")
    image = _picture(56, 56)  # the 4 x 4 position grid: no position interpolation on either side
    with torch.no_grad():
        got = model.module(pixel_values=image).predicted_depth
    want = original_forward(sd, config, image)
    assert want.abs().max() > 1e-3 and want.std() > 1e-4  # a forward that does something
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_swapped_fusion_order_would_be_caught():
    """The reference distinguishes refinenet orders: swapping two fusion blocks' weights changes its output."""
    sd = random_original(TINY_DA)
    swapped = dict(sd)
    for key in [k for k in sd if ".refinenet1." in k]:
        swapped[key], swapped[key.replace("refinenet1", "refinenet2")] = sd[key.replace("refinenet1", "refinenet2")], sd[key]
    image = _picture(56, 56)
    assert (original_forward(sd, TINY_DA, image) - original_forward(swapped, TINY_DA, image)).abs().max() > 1e-3


def test_mask_token_may_be_absent(tmp_path):
    sd = random_original(TINY_DA)
    del sd["pretrained.mask_token"]
    save_file(sd, str(tmp_path / "da.safetensors"))
    load_depth_model(tmp_path / "da.safetensors", config=TINY_DA)


def _save_folder(folder, module, config) -> None:
    folder.mkdir()
    save_file(file_state(module), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("family, config", [("depth_anything", TINY_DA), ("zoedepth", TINY_ZOE)])
def test_transformers_folder_loads_with_the_hub_names(tmp_path, family, config):
    torch.manual_seed(0)
    source = build_depth_module(config)
    names = file_state(source)
    assert any(".attention.attention.query." in k for k in names)  # the 4.x file names, not the installed ones
    _save_folder(tmp_path / "model", source, config)
    model = load_depth_model(tmp_path / "model" / "model.safetensors")
    assert model.family == family and model.kind == "metric"
    image = _picture(64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.module(pixel_values=image).predicted_depth,
                                   source(pixel_values=image).predicted_depth, rtol=0, atol=0)


def test_zoedepth_file_without_config_gets_the_shipped_config_by_its_keys(tmp_path):
    """ZoeD_NK (a domain classifier routes two heads) vs ZoeD_N: decided by keys, and refused when ambiguous."""
    with torch.device("meta"):
        nk = build_depth_module(shipped_depth_config("zoedepth_nyu_kitti"))
    keys = set(file_state_names(nk))
    assert detect_depth_layout(keys) == "zoedepth"
    assert any(k.startswith("metric_head.mlp_classifier.") for k in keys)
    # ambiguity: a single-head file named "kitti" is ZoeD_K or ZoeD_N
    torch.manual_seed(0)
    n = build_depth_module(dict(TINY_ZOE, bin_configurations=TINY_ZOE["bin_configurations"][:1],
                                num_patch_transformer_layers=None))
    save_file(file_state(n), str(tmp_path / "zoedepth-kitti.safetensors"))
    with pytest.raises(DepthModelError, match="config.json"):
        load_depth_model(tmp_path / "zoedepth-kitti.safetensors")


def file_state_names(module: torch.nn.Module) -> list[str]:
    return [file_name(k) for k in module.state_dict()]


def _zero_storage(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Full-size tensors backed by one number each (stride 0): a full-size load check without the memory."""
    one = torch.zeros(1)
    return {k: one.as_strided(tuple(s), (0,) * len(s)) for k, s in shapes.items()}


@pytest.mark.parametrize("size, params", [("small", 24.8e6), ("base", 97.5e6), ("large", 335.3e6)])
def test_full_size_original_layout_fits_the_shipped_configs(size, params):
    """Depth Anything V2 S/B/L: 24.8M / 97.5M / 335.3M parameters (Yang et al. 2024, Table 1)."""
    from mvcustom_core.depth import original_to_transformers

    config = shipped_depth_config(f"depth_anything_v2_{size}")
    shapes = original_depth_anything_shapes(config)
    state, unused = original_to_transformers(_zero_storage(shapes))
    assert not unused
    module = build_depth_module(config, state, what=size)  # raises on any missing / unexpected / misshapen key
    total = sum(p.numel() for n, p in module.named_parameters() if not n.endswith("mask_token"))
    assert abs(total - params) < 0.05e6, total
    assert sum(math.prod(s) for k, s in shapes.items() if k != "pretrained.mask_token") == total


@pytest.mark.parametrize("name", ["zoedepth_nyu", "zoedepth_nyu_kitti"])
def test_full_size_zoedepth_hub_layout_fits_the_shipped_configs(name):
    config = shipped_depth_config(name)
    with torch.device("meta"):
        meta = build_depth_module(config)
    shapes = {file_name(k): tuple(v.shape) for k, v in meta.state_dict().items()}
    assert "backbone.encoder.layer.23.attention.attention.relative_position_bias.relative_position_bias_table" in shapes
    assert shapes["backbone.encoder.layer.0.attention.attention.query.weight"] == (1024, 1024)
    build_depth_module(config, _zero_storage(shapes), what=name)


# ------------------------------------------------------------------------------------------------------ errors
def _tiny_original(tmp_path, name="da.safetensors", **edits):
    sd = random_original(TINY_DA)
    for k, v in edits.items():
        if v is None:
            sd.pop(k.replace("__", "."))
        else:
            sd[k.replace("__", ".")] = v
    path = tmp_path / name
    save_file(sd, str(path))
    return path


def test_pickled_files_are_refused_without_reading(tmp_path):
    path = tmp_path / "depth_anything_v2_vits.pth"
    path.write_bytes(b"not read")
    with pytest.raises(DepthModelError, match="safetensors files only"):
        load_depth_model(path)


def test_truncated_file_is_reported(tmp_path):
    path = _tiny_original(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(DepthModelError, match="truncated"):
        load_depth_model(path, config=TINY_DA)


def test_other_model_kinds_are_named(tmp_path):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(tmp_path / "sd.safetensors"))
    with pytest.raises(DepthModelError, match="Stable Diffusion checkpoint"):
        load_depth_model(tmp_path / "sd.safetensors")
    save_file({"core.core.pretrained.model.blocks.0.attn.qkv.weight": torch.zeros(1)}, str(tmp_path / "zoe.safetensors"))
    with pytest.raises(DepthModelError, match="original-layout ZoeDepth"):
        load_depth_model(tmp_path / "zoe.safetensors")


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    path = _tiny_original(tmp_path, **{"depth_head__scratch__refinenet3__out_conv__weight": None})
    with pytest.raises(DepthModelError, match=r"missing 1 of .*refinenet3\.out_conv\.weight"):
        load_depth_model(path, config=TINY_DA)
    path = _tiny_original(tmp_path, name="b.safetensors", **{"depth_head__projects__2__bias": torch.zeros(5)})
    with pytest.raises(DepthModelError, match=r"projects\.2\.bias.*shape \[5\], expected \[32\]"):
        load_depth_model(path, config=TINY_DA)


def test_unsupported_width_and_unnamed_metric_files_are_refused(tmp_path):
    path = _tiny_original(tmp_path)
    with pytest.raises(DepthModelError, match="ViT width 32 is not supported"):
        load_depth_model(path)
    sd = {k: torch.zeros(1).as_strided(s, (0,) * len(s)).contiguous()
          for k, s in original_depth_anything_shapes(shipped_depth_config("depth_anything_v2_small")).items()
          if k.startswith("pretrained.blocks.0.") or k.startswith("depth_head.projects.0")}
    save_file(sd, str(tmp_path / "depth_anything_v2_metric_vits.safetensors"))
    with pytest.raises(DepthModelError, match="Hypersim"):
        load_depth_model(tmp_path / "depth_anything_v2_metric_vits.safetensors")


def test_transformers_file_without_config_needs_an_unambiguous_name(tmp_path):
    torch.manual_seed(0)
    save_file(file_state(build_depth_module(TINY_DA)), str(tmp_path / "model.safetensors"))
    with pytest.raises(DepthModelError, match="V1 and V2 share this layout"):
        load_depth_model(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({**TINY_ZOE}))
    with pytest.raises(DepthModelError, match="model_type 'zoedepth' but the tensors are a depth_anything"):
        load_depth_model(tmp_path / "model.safetensors")


# ---------------------------------------------------------------------------------------------------- estimation
def test_zoedepth_flip_averaging_makes_estimates_mirror_symmetric(tmp_path):
    torch.manual_seed(0)
    _save_folder(tmp_path / "zoe", build_depth_module(TINY_ZOE), TINY_ZOE)
    model = load_depth_model(tmp_path / "zoe" / "model.safetensors")
    image = _picture(40, 56)[0]
    a = estimate_depth(model, image[None])
    b = estimate_depth(model, image.flip(-1)[None])
    assert a.values.shape == (1, 40, 56) and a.kind == "metric" and a.valid.all()
    torch.testing.assert_close(a.values, b.values.flip(-1), rtol=1e-5, atol=1e-5)


def test_depth_anything_estimate_runs_at_the_518_grid_and_returns_the_picture_size():
    model = tiny_depth_model()
    seen = []
    hook = model.module.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["pixel_values"].shape)),
                                                  with_kwargs=True)
    try:
        out = estimate_depth(model, _picture(64, 96))
    finally:
        hook.remove()
    assert seen == [(1, 3, 518, 784)]  # height scaled least (64 -> 518), width rounded to 14s
    assert out.values.shape == (1, 64, 96) and out.valid.all() and out.values.std() > 0


def test_a_folders_preprocessor_config_sets_the_input_preparation(tmp_path):
    """transformers' DPTImageProcessor settings beside the weights (as the built-in tiny-world model ships them):
    64 x 64 without keeping the aspect ratio, mean = std = 0.5; the estimate is then the module on exactly that."""
    torch.manual_seed(0)
    source = build_depth_module(TINY_DA)
    _save_folder(tmp_path / "m", source, TINY_DA)
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DPTImageProcessor", "do_resize": True, "size": {"height": 64, "width": 64},
        "keep_aspect_ratio": False, "ensure_multiple_of": 8, "resample": 3, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    model = load_depth_model(tmp_path / "m" / "model.safetensors")
    assert (model.input.size, model.input.keep_aspect, model.input.multiple) == ((64, 64), "none", 8)
    image = _picture(64, 64)
    with torch.no_grad():
        direct = source(pixel_values=image * 2 - 1).predicted_depth[:, None]
    want = F.interpolate(direct, size=(64, 64), mode="bicubic", align_corners=False)[:, 0]
    torch.testing.assert_close(estimate_depth(model, image).values, want, rtol=1e-5, atol=1e-5)
    assert load_depth_model(tmp_path / "m" / "model.safetensors").input != tiny_depth_model().input


def test_relative_depth_anything_zero_disparity_is_no_depth(tmp_path):
    """The relative head ends in a ReLU: 0 is its floor (the sky, at or beyond infinity), a clipped value whose depth
    is only bounded, as black in a disparity IMAGE. Such pixels carry no depth; a positive disparity does."""
    torch.manual_seed(0)
    config = {**TINY_DA, "depth_estimation_type": "relative"}
    source = build_depth_module(config)
    image = _picture(56, 56)  # 4 x 4 patches of 14: the head's output is 56 x 56 too
    seen = []
    hook = source.head.conv3.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        source(pixel_values=image * 2 - 1)
        source.head.conv3.bias -= float(seen[-1].flatten().quantile(0.5))  # about half the pixels below the ReLU
        direct = source(pixel_values=image * 2 - 1).predicted_depth
    hook.remove()
    assert direct.shape == (1, 56, 56) and 0.3 < float((direct == 0).double().mean()) < 0.7
    _save_folder(tmp_path / "m", source, config)
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"height": 56, "width": 56}, "keep_aspect_ratio": False, "ensure_multiple_of": 14,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    model = load_depth_model(tmp_path / "m" / "model.safetensors")
    out = estimate_depth(model, image)
    assert out.kind == "disparity"
    torch.testing.assert_close(out.values, direct, rtol=1e-5, atol=1e-5)  # 56 -> 56: no resampling
    assert torch.equal(out.valid, direct > 0)


def test_a_transformers_older_than_the_metric_head_is_refused(monkeypatch):
    """transformers < 4.45 would build Depth Anything's relative head from a metric config without a word."""
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.44.2")
    with pytest.raises(DepthModelError, match=r"transformers >= 4\.45 .*found 4\.44\.2"):
        build_depth_module(TINY_DA)
    monkeypatch.setattr(transformers, "__version__", "5.0.0.dev0")
    assert build_depth_module(TINY_DA).config.depth_estimation_type == "metric"


def test_the_variant_chooses_the_head_that_the_file_name_would(tmp_path):
    """A Depth Anything V2 file's tensors are the same for the relative and the metric heads; the variant says which
    (a renamed metric file read as relative would give depth where disparity is expected: inverted)."""
    path = _tiny_original(tmp_path)
    picture = _picture(56, 56)
    metric = load_depth_model(path, config=TINY_DA)  # the tiny config is the indoor metric head
    relative = load_depth_model(path, config=TINY_DA, variant="relative")
    outdoor = load_depth_model(path, config=TINY_DA, variant="metric outdoor (Virtual KITTI, 80 m)")
    assert (metric.kind, relative.kind, outdoor.kind) == ("metric", "disparity", "metric")
    assert (metric.module.config.max_depth, outdoor.module.config.max_depth) == (20, 80)
    torch.testing.assert_close(estimate_depth(outdoor, picture).values, 4 * estimate_depth(metric, picture).values)
    assert relative.module.config.depth_estimation_type == "relative"
    # A metric file whose name does not say which: refused on 'auto', read with a variant (this one is incomplete).
    sd = {k: torch.zeros(1).as_strided(s, (0,) * len(s)).contiguous()
          for k, s in original_depth_anything_shapes(shipped_depth_config("depth_anything_v2_small")).items()
          if k.startswith("pretrained.blocks.0.") or k.startswith("depth_head.projects.0")}
    save_file(sd, str(tmp_path / "depth_anything_v2_metric_vits.safetensors"))
    with pytest.raises(DepthModelError, match="Hypersim") as info:
        load_depth_model(tmp_path / "depth_anything_v2_metric_vits.safetensors")
    assert info.value.argument == "variant"
    with pytest.raises(DepthModelError, match="not a complete Depth Anything V2 file"):
        load_depth_model(tmp_path / "depth_anything_v2_metric_vits.safetensors", variant="metric indoor (Hypersim, 20 m)")


def test_a_folders_config_and_zoedepth_decide_their_head_themselves(tmp_path):
    torch.manual_seed(0)
    _save_folder(tmp_path / "da", build_depth_module(TINY_DA), TINY_DA)
    _save_folder(tmp_path / "zoe", build_depth_module(TINY_ZOE), TINY_ZOE)
    for folder in ("da", "zoe"):
        with pytest.raises(DepthModelError, match="'auto'") as info:
            load_depth_model(tmp_path / folder / "model.safetensors", variant="relative")
        assert info.value.argument == "variant"
    with pytest.raises(DepthModelError, match="variant must be one of"):
        load_depth_model(tmp_path / "da" / "model.safetensors", variant="metric")


@pytest.mark.parametrize("family", ["depth_anything", "zoedepth"])
def test_estimate_bytes_bounds_the_measured_peak_of_an_estimate(family):
    """The one-pass step's depth estimate is a phase of the run's memory estimate: measured <= estimate <= 1.5x,
    counted at the size the network really sees."""
    from mvcustom_core.depth.estimate import estimate_bytes, network_input_size
    from mvcustom_core.memory import measure_peak

    torch.manual_seed(0)
    model = (tiny_depth_model() if family == "depth_anything" else
             DepthModel(build_depth_module(TINY_ZOE), "zoedepth", "metric", "tiny ZoeDepth"))
    seen = []
    hook = model.module.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["pixel_values"].shape[-2:])),
                                                  with_kwargs=True)
    for size in ((64, 64), (96, 160)):
        picture = _picture(*size)
        _, measured = measure_peak(lambda: estimate_depth(model, picture))
        assert seen[-1] == network_input_size(model, size)
        assert measured <= estimate_bytes(model, size) <= 1.5 * measured, (size, measured)
    hook.remove()
