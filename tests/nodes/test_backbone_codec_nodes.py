"""Encode Prompt / Decode Latent nodes against the core text path and VAE decode on the tiny backbone."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from mvcustom_core.backbone.sampler import decode_latents, to_comfy_latent
from mvcustom_core.backbone.text import encode_prompt
from mvcustom_core.backbone.tiny import tiny_backbone
from mvcustom_core.customization.token import add_subject_token, remove_subject_token


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone(0)


def test_prompt_equals_the_core_encoding(node, run, backbone):
    (cond,) = run(node("MVC_EncodePrompt"), backbone=backbone, text="a toy on a table").args
    assert isinstance(cond, list) and len(cond) == 1 and cond[0][1] == {}
    torch.testing.assert_close(cond[0][0], encode_prompt(backbone.text_encoder, backbone.tokenizer, ["a toy on a table"]),
                               rtol=0, atol=0)


def test_subject_token_is_used_for_this_encoding_only(node, run, backbone):
    width = backbone.text_encoder.config.hidden_size
    subject = SimpleNamespace(token="<mvc-subject>", token_embedding=torch.randn(1, width, generator=torch.Generator().manual_seed(3)))
    vocab_before = len(backbone.tokenizer)
    plain_before = encode_prompt(backbone.text_encoder, backbone.tokenizer, ["photo of a toy"])

    (with_embedding_syntax,) = run(node("MVC_EncodePrompt"), backbone=backbone, text="photo of a embedding:toy toy",
                                   customization=subject).args
    (with_token,) = run(node("MVC_EncodePrompt"), backbone=backbone, text="photo of a <mvc-subject> toy",
                        customization=subject).args
    tokenizer = copy.deepcopy(backbone.tokenizer)
    add_subject_token(backbone.text_encoder, tokenizer, subject.token, embedding=subject.token_embedding)
    try:
        expected = encode_prompt(backbone.text_encoder, tokenizer, ["photo of a <mvc-subject> toy"])
    finally:
        remove_subject_token(backbone.text_encoder)
    torch.testing.assert_close(with_embedding_syntax[0][0], expected, rtol=0, atol=0)
    torch.testing.assert_close(with_token[0][0], expected, rtol=0, atol=0)
    # The shared backbone is unchanged afterwards.
    assert len(backbone.tokenizer) == vocab_before
    torch.testing.assert_close(encode_prompt(backbone.text_encoder, backbone.tokenizer, ["photo of a toy"]), plain_before,
                               rtol=0, atol=0)


def test_embeddings_this_encoder_cannot_read_are_refused_naming_text(node, run, backbone):
    """Only the connected customization's token is known here; another embedding must not become the subject."""
    width = backbone.text_encoder.config.hidden_size
    subject = SimpleNamespace(token="<mvc-subject>", token_embedding=torch.zeros(1, width))
    with pytest.raises(ValueError, match=r"^MVCustom Encode Prompt: input 'text' names 2 embeddings "
                                         r"\(embedding:style, embedding:toy\)"):
        run(node("MVC_EncodePrompt"), backbone=backbone, text="embedding:toy toy, embedding:style",
            customization=subject)
    with pytest.raises(ValueError, match=r"^MVCustom Encode Prompt: input 'text' has embedding:toy but no "
                                         r"customization is connected"):
        run(node("MVC_EncodePrompt"), backbone=backbone, text="photo of a embedding:toy toy")


def test_decode_equals_the_core_decode(node, run, backbone):
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    (images,) = run(node("MVC_DecodeLatent"), backbone=backbone, latent=to_comfy_latent(latents)).args
    expected = decode_latents(backbone.vae, to_comfy_latent(latents)["samples"] * 0.18215)
    assert images.shape == (3, 64, 64, 3)
    torch.testing.assert_close(images, expected.permute(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


def test_bad_inputs_name_node_and_input(node, run, backbone):
    with pytest.raises(ValueError, match=r"^MVCustom Decode Latent: input 'latent'"):
        run(node("MVC_DecodeLatent"), backbone=backbone, latent={"samples": torch.zeros(2, 3, 8, 8)})
    with pytest.raises(ValueError, match=r"^MVCustom Encode Prompt: input 'backbone' must be an MVC_BACKBONE"):
        run(node("MVC_EncodePrompt"), backbone=object(), text="x")
