"""Learned metrics: clear errors when weights are absent, and tiny random CLIP / DINOv2 folders when present."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch

from mvcustom_core.eval.errors import MetricUnavailable
from mvcustom_core.eval.learned import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_score, load_clip, load_dino,
                                        load_dreamsim, mean_cross_distance, mean_pairwise_distance,
                                        mean_pairwise_similarity, preprocess_images)

transformers = pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A random 1-layer CLIP saved with save_pretrained, plus a letter-level CLIP tokenizer."""
    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=54, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=16, bos_token_id=52, eos_token_id=53, pad_token_id=53),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    transformers.CLIPModel(cfg).save_pretrained(folder)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)} | {c + "</w>": 26 + i for i, c in enumerate(letters)}
    vocab |= {"<|startoftext|>": 52, "<|endoftext|>": 53}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dino_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dino")
    torch.manual_seed(1)
    cfg = transformers.Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=32, patch_size=8)
    transformers.Dinov2Model(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 36},
                                                                "crop_size": {"height": 32, "width": 32}}))
    return folder


def test_absent_weights_raise_metric_unavailable(tmp_path):
    with pytest.raises(MetricUnavailable, match="CLIP metrics: no local folder"):
        load_clip(None)
    with pytest.raises(MetricUnavailable, match=f"{tmp_path / 'nowhere'}.*config.json"):
        load_clip(tmp_path / "nowhere")
    with pytest.raises(MetricUnavailable, match="DINO metrics"):
        load_dino(tmp_path)
    try:
        import dreamsim  # noqa: F401
    except ImportError:
        with pytest.raises(MetricUnavailable, match="dreamsim"):
            load_dreamsim(tmp_path)


def test_tiny_clip_embeddings_and_text(tiny_clip_dir, generator):
    clip = load_clip(tiny_clip_dir)
    images = torch.rand(2, 3, 40, 56, generator=generator)
    batch = torch.cat([images, images[:1]])  # frame 2 repeats frame 0
    emb = clip.embed_images(batch)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert float(emb[0] @ emb[2]) == pytest.approx(1.0, abs=1e-6)
    assert mean_cross_distance(emb[:1], emb[2:]) == pytest.approx(0.0, abs=1e-6)
    text = clip.embed_texts(["a red car", "dog"])
    assert text.shape == (2, 16)
    cos = emb @ text[0]
    assert clip_score(emb, text[0]) == pytest.approx(float((2.5 * cos.clamp_min(0)).mean()), abs=1e-6)


def test_clip_without_tokenizer_names_the_missing_files(tiny_clip_dir, tmp_path):
    folder = tmp_path / "clip_no_tok"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_clip_dir / name, folder / name)
    clip = load_clip(folder)
    with pytest.raises(MetricUnavailable, match="tokenizer"):
        clip.embed_texts(["a car"])


def test_tiny_dinov2_embeddings(tiny_dino_dir, generator):
    dino = load_dino(tiny_dino_dir)
    assert (dino.resize, dino.crop) == (36, 32)
    images = torch.rand(2, 3, 48, 48, generator=generator)
    emb = dino.embed_images(torch.cat([images, images[1:]]))
    assert emb.shape == (3, 32)
    assert float(emb[1] @ emb[2]) == pytest.approx(1.0, abs=1e-6)
    assert float(emb[0] @ emb[1]) < 1.0 - 1e-4


def test_pairwise_scores_closed_form():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # cosines: (0,1) 0, (0,2) and (1,2) 1/sqrt(2)
    assert mean_pairwise_similarity(e) == pytest.approx(math.sqrt(2) / 3)
    assert mean_pairwise_distance(e) == pytest.approx(1 - math.sqrt(2) / 3)
    assert mean_cross_distance(e[:1], e[1:]) == pytest.approx(1 - (0 + 1 / math.sqrt(2)) / 2)
    assert clip_score(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([1.0, 0.0])) == pytest.approx(1.25)
    assert math.isnan(mean_pairwise_similarity(e[:1]))


def test_preprocess_matches_the_clip_image_processor():
    # Shortest edge to 32, centre crop 32, CLIP mean/std: the transformers PIL processor agrees up to the
    # bicubic kernel (PIL a = -0.5 vs torch a = -0.75), far below what a misplaced crop would give.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 60), torch.linspace(0, 1, 80), indexing="ij")
    img = torch.stack([0.5 + 0.4 * torch.sin(6 * xx), 0.5 + 0.4 * torch.cos(5 * yy), xx * yy])
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    with warnings.catch_warnings():  # "requires torchvision, falling back to the PIL processor"
        warnings.simplefilter("ignore")
        proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        ref = torch.from_numpy(np.asarray(proc(images=arr, return_tensors="np")["pixel_values"]))
    ours = preprocess_images(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255, 32, 32, OPENAI_CLIP_MEAN,
                             OPENAI_CLIP_STD)
    assert ours.shape == ref.shape == (1, 3, 32, 32)
    assert float((ours - ref).abs().mean()) < 0.01 and float((ours - ref).abs().max()) < 0.05
    shifted = preprocess_images(torch.from_numpy(arr).permute(2, 0, 1)[None].float()[..., 12:] / 255, 32, 32,
                                OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert float((shifted - ref).abs().mean()) > 2 * float((ours - ref).abs().mean())

