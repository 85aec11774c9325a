"""Prompt encoding and latent decoding with an ``MVC_BACKBONE``'s own text encoder and VAE.

With an SD1.5 checkpoint the standard CLIP Text Encode and VAE Decode nodes do the same (Load Checkpoint's
CLIP and VAE, with the MODEL going through Apply Motion Module); these nodes serve backbones that have no
ComfyUI CLIP/VAE, such as the tiny random backbone used in demos and tests. Each run loads only the module it
uses, and the subject token goes on that run's own view of the text encoder.
"""

from __future__ import annotations

import copy
import re

import torch

from mvcustom_core.backbone.sampler import decode_latents, from_comfy_latent
from mvcustom_core.backbone.text import encode_prompt
from mvcustom_core.customization.token import add_subject_token

from ._common import MEMORY_BUDGET_TOOLTIP, Progress, blame, image_from_chw, require
from ._host import io
from .bridge import decode_memory, prepare_backbone
from .types import Backbone as BackboneType
from .types import Customization as CustomizationType

__all__ = ["BACKBONE_CODEC_NODES", "EncodePrompt", "DecodeLatent"]

CATEGORY = "MVCustom/backbone"
_EMBEDDING = re.compile(r"embedding:\S+")


class EncodePrompt(io.ComfyNode):
    """CONDITIONING from the backbone's CLIP text encoder, with the subject token of a customization."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_EncodePrompt",
            display_name="MVCustom Encode Prompt",
            category=CATEGORY,
            description=("Encodes a prompt with the backbone's own text encoder (last layer, 77 tokens). With a "
                         "customization connected, its subject token is available: write the token itself or "
                         "keep the 'embedding:<name>' form from the customization's prompt output."),
            inputs=[
                BackboneType.Input("backbone", tooltip="MVC_BACKBONE whose text encoder and tokenizer are used."),
                io.String.Input("text", multiline=True, default="", tooltip="The prompt."),
                CustomizationType.Input("customization", optional=True,
                                        tooltip="Adds the subject token for this encoding only."),
            ],
            outputs=[io.Conditioning.Output("conditioning", tooltip="CONDITIONING [[tensor [1, 77, C], {}]].")],
        )

    @classmethod
    def execute(cls, backbone, text: str, customization=None) -> io.NodeOutput:
        require(cls, "text", isinstance(text, str), f"must be a string, got {type(text).__name__}")
        core = prepare_backbone(cls, backbone, ["text_encoder"])
        require(cls, "backbone", core.tokenizer is not None, "has no CLIP tokenizer")
        encoder, tokenizer = core.text_encoder, core.tokenizer
        # This encoder knows one embedding, the connected customization's token: any other would be read as the
        # subject without a word (ComfyUI's own CLIP Text Encode reads models/embeddings for those).
        named = sorted(set(_EMBEDDING.findall(text)))
        require(cls, "text", not named or customization is not None,
                f"has {', '.join(named)} but no customization is connected; other textual-inversion embeddings "
                "are read by CLIP Text Encode on a Load Checkpoint CLIP")
        require(cls, "text", len(named) <= 1,
                f"names {len(named)} embeddings ({', '.join(named)}); only the connected customization's subject "
                "token can be written here")
        if customization is not None:
            tokenizer = copy.deepcopy(tokenizer)  # the shared tokenizer keeps its vocabulary
            text = _EMBEDDING.sub(customization.token, text)
            with blame(cls, "customization"):  # on this run's view of the encoder only
                add_subject_token(encoder, tokenizer, customization.token, embedding=customization.token_embedding)
        with blame(cls, "text"), torch.no_grad():
            return io.NodeOutput([[encode_prompt(encoder, tokenizer, [text]).float().cpu(), {}]])


class DecodeLatent(io.ComfyNode):
    """IMAGE frames from a LATENT with the backbone's own VAE."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_DecodeLatent",
            display_name="MVCustom Decode Latent",
            category=CATEGORY,
            description="Decodes a LATENT batch with the backbone's VAE (as many frames at a time as fit the memory budget).",
            inputs=[
                BackboneType.Input("backbone", tooltip="MVC_BACKBONE whose VAE is used."),
                io.Latent.Input("latent", tooltip="LATENT from the MVCustom Sampler."),
                io.Float.Input("memory_budget_gb", default=0.0, min=0.0, max=4096.0, step=0.5, optional=True,
                               tooltip=MEMORY_BUDGET_TOOLTIP),
            ],
            outputs=[io.Image.Output("images", tooltip="Frames, IMAGE [F, H, W, 3].")],
        )

    @classmethod
    def execute(cls, backbone, latent, memory_budget_gb: float = 0.0) -> io.NodeOutput:
        with blame(cls, "latent"):
            latents = from_comfy_latent(latent)
        core = prepare_backbone(cls, backbone, ["vae"], memory_required=decode_memory(backbone, latents))
        with blame(cls, "latent"):
            frames = decode_latents(core.vae, latents, memory_budget=float(memory_budget_gb or 0) or None,
                                    progress=Progress(latents.shape[0]).callback)
        return io.NodeOutput(image_from_chw(frames))


BACKBONE_CODEC_NODES = [EncodePrompt, DecodeLatent]
