"""CLIP tokenizer from local files and SD1.x prompt encoding; tiny vocabularies written into tmp_path."""

from __future__ import annotations

import json

import pytest
import torch

from mvcustom_core.backbone.loading import shipped_config
from mvcustom_core.backbone.text import (
    TokenizerError,
    clip_vocab,
    encode_prompt,
    load_tokenizer,
    write_clip_vocab,
)

WORDS = ["a", "photo", "of", "sks", "dog", "on", "table"]


@pytest.fixture
def tokenizer_dir(tmp_path):
    return write_clip_vocab(tmp_path / "tok", WORDS)


def test_vocab_order_is_clips():
    # openai/CLIP simple_tokenizer.py: 256 bytes, 256 bytes + </w>, one entry per merge, then the two specials.
    # With the real 48,894 merges that puts <|startoftext|> at 49406 and <|endoftext|> at 49407 (vocab 49408).
    merges = [(f"x{i}", "y") for i in range(48894)]
    vocab = clip_vocab(merges)
    assert len(vocab) == 49408
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256 and vocab["x0y"] == 512


def test_tokenization_ids(tokenizer_dir):
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = tokenizer(["a photo of sks dog", "A  TABLE!"], padding="max_length", max_length=77).input_ids
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    words = [vocab[w + "</w>"] for w in ["a", "photo", "of", "sks", "dog"]]
    assert ids[0] == [bos, *words, eos] + [eos] * (77 - 7)  # SD1.x pads with <|endoftext|>
    # Lower-cased, whitespace collapsed, punctuation its own byte token ("!" is byte symbol 0 -> "!</w>" = 256).
    assert ids[1][:5] == [bos, vocab["a</w>"], vocab["table</w>"], vocab["!</w>"], eos]


def test_long_prompts_are_truncated_with_end_token(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = tokenizer(" ".join(["dog"] * 100), padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[-1] == tokenizer.eos_token_id and ids[-2] == ids[1]


def test_tokenizer_locations(tokenizer_dir, tmp_path):
    model_folder = tmp_path / "model"
    write_clip_vocab(model_folder / "tokenizer", WORDS)  # diffusers model folder layout
    reference = load_tokenizer(tokenizer_dir)("sks dog").input_ids
    assert load_tokenizer(model_folder)("sks dog").input_ids == reference
    assert load_tokenizer(tokenizer_dir / "vocab.json")("sks dog").input_ids == reference
    with pytest.raises(TokenizerError, match="no CLIP tokenizer files"):
        load_tokenizer(tmp_path / "empty")


def test_bad_tokenizer_files_name_file_and_line(tokenizer_dir):
    merges = tokenizer_dir / "merges.txt"
    original = merges.read_text()
    merges.write_text(original + "one two three\n")
    line = len(merges.read_text().splitlines())
    with pytest.raises(TokenizerError, match=rf"merges.txt:{line}: expected two symbols"):
        load_tokenizer(tokenizer_dir)
    merges.write_text(original)
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    del vocab["<|startoftext|>"]
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(TokenizerError, match="missing special token"):
        load_tokenizer(tokenizer_dir)


def test_words_must_be_plain_lowercase(tmp_path):
    with pytest.raises(TokenizerError, match="'Dog'"):
        write_clip_vocab(tmp_path, ["Dog"])


@pytest.fixture
def text_encoder(tokenizer_dir):
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    config = CLIPTextConfig(hidden_size=16, intermediate_size=20, num_attention_heads=2, num_hidden_layers=3,
                            vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"],
                            eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(0)
    return CLIPTextModel(config).eval()


def test_encode_prompt_is_last_hidden_state(text_encoder, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    prompts = ["a photo of sks dog", "a dog on a table"]
    with torch.no_grad():
        states = encode_prompt(text_encoder, tokenizer, prompts)
        ids = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert states.shape == (2, 77, 16)
        assert torch.equal(states, text_encoder(ids).last_hidden_state)
        assert torch.equal(encode_prompt(text_encoder, tokenizer, prompts[0]), states[:1])


def test_clip_skip_equals_a_shorter_encoder(text_encoder, tokenizer_dir):
    """clip_skip=1 is the output of the same encoder with its last layer removed (plus the final layer norm)."""
    from transformers import CLIPTextModel

    tokenizer = load_tokenizer(tokenizer_dir)
    shorter_config = text_encoder.config.to_dict() | {"num_hidden_layers": 2}
    shorter = CLIPTextModel(type(text_encoder.config).from_dict(shorter_config)).eval()
    shorter.load_state_dict(text_encoder.state_dict(), strict=False)
    with torch.no_grad():
        skipped = encode_prompt(text_encoder, tokenizer, "sks dog", clip_skip=1)
        reference = encode_prompt(shorter, tokenizer, "sks dog")
    torch.testing.assert_close(skipped, reference, rtol=0, atol=1e-6)
    assert not torch.allclose(skipped, encode_prompt(text_encoder, tokenizer, "sks dog"))
    with pytest.raises(ValueError, match="clip_skip"):
        encode_prompt(text_encoder, tokenizer, "dog", clip_skip=-1)


def test_gradients_reach_token_embeddings(text_encoder, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    encode_prompt(text_encoder, tokenizer, "a photo of sks dog").sum().backward()
    grad = text_encoder.get_input_embeddings().weight.grad
    sks = tokenizer.convert_tokens_to_ids("sks</w>")
    assert grad[sks].abs().sum() > 0


def test_shipped_tiny_tokenizer_matches_tiny_text_config():
    from importlib import resources

    folder = resources.files("mvcustom_core").joinpath("configs", "tiny", "tokenizer")
    tokenizer = load_tokenizer(folder)
    config = shipped_config("tiny/text_encoder")
    assert len(tokenizer) == config["vocab_size"]
    assert tokenizer.bos_token_id == config["bos_token_id"] and tokenizer.eos_token_id == config["eos_token_id"]
    assert len(tokenizer("a photo of sks dog").input_ids) == 7  # one token per word


@pytest.fixture
def comfy_sd1_tokenizer():
    import os
    from pathlib import Path

    root = os.environ.get("COMFYUI_PATH")
    folder = Path(root or "/nonexistent") / "comfy" / "sd1_tokenizer"
    if not (folder / "vocab.json").is_file():
        pytest.skip("COMFYUI_PATH unset or without comfy/sd1_tokenizer (the real SD1.x CLIP vocabulary)")
    return folder


def test_real_sd1_tokenizer(comfy_sd1_tokenizer):
    """ComfyUI's shipped SD1.x tokenizer: our vocab order rebuilds its vocab.json, and ids match transformers'."""
    from transformers import CLIPTokenizer

    vocab = json.loads((comfy_sd1_tokenizer / "vocab.json").read_text(encoding="utf-8"))
    lines = (comfy_sd1_tokenizer / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    assert len(merges) == 48894 and clip_vocab(merges) == vocab

    ours = load_tokenizer(comfy_sd1_tokenizer)
    reference = CLIPTokenizer.from_pretrained(str(comfy_sd1_tokenizer), local_files_only=True)
    prompts = ["a photo of a dog", "A sks toy, on a wooden table; 3D render!"]
    got = ours(prompts, padding="max_length", max_length=77).input_ids
    assert got == reference(prompts, padding="max_length", max_length=77).input_ids
    assert got[0][:7] == [49406, 320, 1125, 539, 320, 1929, 49407]  # <start> a photo of a dog <end>
