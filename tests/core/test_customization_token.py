"""Subject token: equals its class word at init, only its vector trains, ComfyUI's embedding loader reads it."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from mvcustom_core.backbone.text import encode_prompt
from mvcustom_core.backbone.tiny import tiny_components
from mvcustom_core.customization.token import (
    COMFY_EMBEDDING_KEY, SubjectTokenEmbedding, SubjectTokenError, add_subject_token, class_word_embedding,
    remove_subject_token, save_comfy_embedding, subject_token_embedding)


@pytest.fixture(scope="module")
def text_parts():
    from importlib import resources

    from mvcustom_core.backbone.text import load_tokenizer

    components = tiny_components(seed=3)
    tokenizer = load_tokenizer(resources.files("mvcustom_core").joinpath("configs", "tiny", "tokenizer"))
    return components.text_encoder, tokenizer


def _fresh(text_parts):
    encoder, tokenizer = text_parts
    return copy.deepcopy(encoder), copy.deepcopy(tokenizer)


def _single_piece_word(tokenizer) -> str:
    for word in ("dog", "cat", "car", "a", "of"):
        if len(tokenizer(word, add_special_tokens=False).input_ids) == 1:
            return word
    pytest.skip("tiny vocabulary has none of the probe words as one piece")


def test_token_initialised_from_a_one_piece_class_word_encodes_exactly_like_that_word(text_parts):
    encoder, tokenizer = _fresh(text_parts)
    word = _single_piece_word(tokenizer)
    with torch.no_grad():
        reference = encode_prompt(encoder, tokenizer, f"photo of a {word}")
    emb = add_subject_token(encoder, tokenizer, "<mvc-subject>", class_word=word)
    assert isinstance(subject_token_embedding(encoder), SubjectTokenEmbedding)
    ids = tokenizer("photo of a <mvc-subject>").input_ids
    assert emb.token_id in ids and emb.token_id >= emb.base.num_embeddings  # a new id past the old vocabulary
    with torch.no_grad():
        with_token = encode_prompt(encoder, tokenizer, "photo of a <mvc-subject>")
    torch.testing.assert_close(with_token, reference, rtol=0, atol=0)


def test_multi_piece_class_word_initialises_to_the_mean_of_its_pieces(text_parts):
    encoder, tokenizer = _fresh(text_parts)
    word = "zqxv"  # letters the tiny BPE has no merges for: one piece per letter
    pieces = tokenizer(word, add_special_tokens=False).input_ids
    assert len(pieces) > 1
    table = encoder.get_input_embeddings().weight
    emb = add_subject_token(encoder, tokenizer, class_word=word)
    torch.testing.assert_close(emb.vector.detach(), table[pieces].mean(0).detach())
    torch.testing.assert_close(class_word_embedding(encoder, tokenizer, word), table[pieces].mean(0).detach())


def test_only_the_token_vector_receives_gradients_and_changes(text_parts):
    encoder, tokenizer = _fresh(text_parts)
    encoder.requires_grad_(False)
    emb = add_subject_token(encoder, tokenizer, class_word=_single_piece_word(tokenizer))
    before = {k: v.clone() for k, v in encoder.state_dict().items() if "vector" not in k}
    start = emb.vector.detach().clone()
    opt = torch.optim.AdamW([emb.vector], lr=1e-2)
    for _ in range(3):
        out = encode_prompt(encoder, tokenizer, ["a <mvc-subject> on a beach", "photo of a <mvc-subject>"])
        loss = out.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (emb.vector.detach() - start).abs().max() > 1e-4
    after = {k: v for k, v in encoder.state_dict().items() if "vector" not in k}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    remove_subject_token(encoder)
    assert subject_token_embedding(encoder) is None


def test_existing_words_and_bad_arguments_are_refused(text_parts):
    encoder, tokenizer = _fresh(text_parts)
    word = _single_piece_word(tokenizer)
    with pytest.raises(SubjectTokenError, match="already a word"):
        add_subject_token(encoder, tokenizer, word, class_word=word)
    with pytest.raises(SubjectTokenError, match="exactly one"):
        add_subject_token(encoder, tokenizer, "<x>")
    with pytest.raises(SubjectTokenError, match="non-empty"):
        add_subject_token(encoder, tokenizer, "<x>", class_word="  ")
    with pytest.raises(SubjectTokenError, match="expects 32"):
        add_subject_token(encoder, tokenizer, "<x>", embedding=torch.zeros(7))
    with pytest.raises(SubjectTokenError, match="without spaces"):
        add_subject_token(encoder, tokenizer, "two words", class_word=word)


def _comfy_load_embed(path, embedding_size: int, embed_key: str = "clip_l") -> torch.Tensor | None:
    """ComfyUI's selection rule for a .safetensors embedding (comfy/sd1_clip.py ``load_embed``), re-stated:
    the ``embed_key`` tensor, else the ``bundle_emb.*.string_to_param.*`` tensors, else the first tensor."""
    embed = load_file(str(path), device="cpu")
    if "string_to_param" in embed:
        return next(iter(embed["string_to_param"].values()))
    if embed_key in embed:
        return embed[embed_key]
    bundled = [v for k, v in embed.items() if k.startswith("bundle_emb.") and ".string_to_param." in k]
    if bundled:
        return torch.cat(bundled)
    return next(iter(embed.values()))


def _comfy_prompt_tokens(embed: torch.Tensor) -> list[torch.Tensor]:
    """``tokenize_with_weights``: a 1-D embedding is one token, an ``[n, D]`` one is n tokens."""
    return [embed] if embed.ndim == 1 else [embed[i] for i in range(embed.shape[0])]


def test_comfy_embedding_file_follows_the_loader_rules(tmp_path):
    vector = torch.randn(768, generator=torch.Generator().manual_seed(0))
    path = save_comfy_embedding(tmp_path / "my_subject.safetensors", vector)
    raw = load_file(str(path))
    assert list(raw) == [COMFY_EMBEDDING_KEY] and raw[COMFY_EMBEDDING_KEY].shape == (1, 768)
    loaded = _comfy_load_embed(path, 768)
    tokens = _comfy_prompt_tokens(loaded)
    assert len(tokens) == 1 and tokens[0].shape[-1] == 768
    assert torch.equal(tokens[0], vector)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file
