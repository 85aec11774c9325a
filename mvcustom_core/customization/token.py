"""The subject token: one new word whose input embedding is learned by textual inversion.

Textual inversion (Gal et al. 2022, arXiv 2208.01618) learns the input embedding of a new token; MVCustom
writes it ``V*`` in prompts (method.md §5). CustomDiffusion360 adds a modifier token to the tokenizer and
initialises its row from an existing word; here the row starts as the mean input embedding of the class
word's BPE pieces ("car" → one piece, "teddybear" → several).

Instead of resizing CLIP's embedding matrix and zeroing the gradients of every other row, the text
encoder's token embedding is wrapped by :class:`SubjectTokenEmbedding`, which holds the single trainable
vector and substitutes it wherever the new id occurs. The frozen matrix is never touched, so "only the
token changed" holds by construction.

ComfyUI embedding file: ``comfy/sd1_clip.py`` ``load_embed`` reads a ``.safetensors`` file from
``models/embeddings`` and, for SD1.x (``embedding_key="clip_l"``), takes the ``clip_l`` key, else a
``bundle_emb.*`` set, else the *first* tensor of the file; a ``[n, 768]`` tensor becomes n prompt tokens
(``tokenize_with_weights``) written as ``embedding:<name>``. :func:`save_comfy_embedding` writes the
A1111-style single key ``emb_params`` ``[1, D]``, which that rule picks up.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from mvcustom_core.files import Replace, atomic_write

__all__ = ["DEFAULT_TOKEN", "SubjectTokenError", "SubjectTokenEmbedding", "add_subject_token",
           "remove_subject_token", "subject_token_embedding", "class_word_embedding", "save_comfy_embedding",
           "COMFY_EMBEDDING_KEY"]

DEFAULT_TOKEN = "<mvc-subject>"
COMFY_EMBEDDING_KEY = "emb_params"
EMBEDDING_SOURCE = "mvcustom"  # header "source" of the embeddings this pack writes


class SubjectTokenError(ValueError):
    """A subject token or class word the tokenizer / text encoder cannot take."""


class SubjectTokenEmbedding(nn.Module):
    """Token embedding with one extra learned row.

    ``forward(ids [B, L]) -> [B, L, D]``: ``base(ids)`` except at ``ids == token_id``, where the
    trainable ``vector [D]`` is used. Ids at or beyond ``base.num_embeddings`` are only valid for the
    subject token.
    """

    def __init__(self, base: nn.Embedding, token_id: int, init: Tensor) -> None:
        super().__init__()
        self.base = base
        self.token_id = int(token_id)
        self.vector = nn.Parameter(init.detach().clone().to(base.weight.dtype).reshape(base.embedding_dim))

    @property
    def weight(self) -> Tensor:  # transformers reads .weight of the input embeddings in a few places
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        return max(self.base.num_embeddings, self.token_id + 1)

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: Tensor) -> Tensor:
        is_token = input_ids == self.token_id
        safe = input_ids.masked_fill(is_token, 0)
        if bool((safe >= self.base.num_embeddings).any()):
            raise SubjectTokenError(f"token id {int(safe.max())} is outside the text encoder's vocabulary "
                                    f"({self.base.num_embeddings}) and is not the subject token {self.token_id}")
        out = self.base(safe)
        return torch.where(is_token.unsqueeze(-1), self.vector.to(out.dtype), out)


def _embeddings_owner(text_encoder: nn.Module) -> nn.Module:
    """The module holding ``token_embedding`` (``CLIPTextModel.text_model.embeddings``)."""
    for module in text_encoder.modules():
        if hasattr(module, "token_embedding") and hasattr(module, "position_embedding"):
            return module
    raise SubjectTokenError(f"{type(text_encoder).__name__} has no CLIP token_embedding to extend")


def subject_token_embedding(text_encoder: nn.Module) -> SubjectTokenEmbedding | None:
    """The installed :class:`SubjectTokenEmbedding`, or ``None``."""
    emb = _embeddings_owner(text_encoder).token_embedding
    return emb if isinstance(emb, SubjectTokenEmbedding) else None


def class_word_embedding(text_encoder: nn.Module, tokenizer, word: str) -> Tensor:
    """``[D]`` mean input embedding of the BPE pieces of ``word`` (no start/end tokens)."""
    if not isinstance(word, str) or not word.strip():
        raise SubjectTokenError("class word must be a non-empty word such as 'car' or 'teddybear'")
    ids = tokenizer(word.strip(), add_special_tokens=False).input_ids
    if not ids:
        raise SubjectTokenError(f"class word {word!r} gives no tokens")
    base = _embeddings_owner(text_encoder).token_embedding
    base = base.base if isinstance(base, SubjectTokenEmbedding) else base
    with torch.no_grad():
        return base.weight[torch.tensor(ids, device=base.weight.device)].float().mean(0)


def add_subject_token(text_encoder: nn.Module, tokenizer, token: str = DEFAULT_TOKEN, *,
                      class_word: str | None = None, embedding: Tensor | None = None) -> SubjectTokenEmbedding:
    """Add ``token`` to ``tokenizer`` (in place) and install its learned row in ``text_encoder``.

    Exactly one of ``class_word`` (initialise from that word) and ``embedding`` (``[D]`` or ``[1, D]``,
    e.g. from a customization file) must be given. Calling it again with the same token replaces the
    vector.

    Returns:
        the :class:`SubjectTokenEmbedding`; its ``vector`` is the only new parameter.
    """
    if (class_word is None) == (embedding is None):
        raise SubjectTokenError("give exactly one of class_word (initialisation) and embedding (trained vector)")
    if not isinstance(token, str) or not token or any(c.isspace() for c in token):
        raise SubjectTokenError(f"subject token must be one word without spaces, got {token!r}")
    owner = _embeddings_owner(text_encoder)
    current = owner.token_embedding
    base = current.base if isinstance(current, SubjectTokenEmbedding) else current
    if embedding is None:
        init = class_word_embedding(text_encoder, tokenizer, class_word)
    else:
        init = embedding.detach().float().reshape(-1)
        if init.numel() != base.embedding_dim:
            raise SubjectTokenError(f"token embedding has {init.numel()} values, the text encoder expects "
                                    f"{base.embedding_dim}")
    plain = tokenizer(token, add_special_tokens=False).input_ids
    if len(plain) == 1 and plain[0] < base.num_embeddings:
        raise SubjectTokenError(f"{token!r} is already a word of the vocabulary (id {plain[0]}); pick a new "
                                f"token such as {DEFAULT_TOKEN!r}")
    tokenizer.add_tokens([token])
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise SubjectTokenError(f"the tokenizer splits {token!r} into {len(ids)} pieces after adding it")
    wrapped = SubjectTokenEmbedding(base, ids[0], init.to(base.weight.device))
    owner.token_embedding = wrapped
    return wrapped


def remove_subject_token(text_encoder: nn.Module) -> None:
    """Put the plain token embedding back (the tokenizer keeps the added word)."""
    owner = _embeddings_owner(text_encoder)
    if isinstance(owner.token_embedding, SubjectTokenEmbedding):
        owner.token_embedding = owner.token_embedding.base


def save_comfy_embedding(path: str | os.PathLike, vector: Tensor, *, subject: str | None = None,
                         replace: Replace = True) -> Path:
    """Write ``vector`` (``[D]`` or ``[1, D]``) as a ComfyUI/A1111 embedding: safetensors ``{"emb_params": [1, D]}``.

    Put it in ComfyUI's ``models/embeddings/`` and write ``embedding:<file stem>`` in a prompt. ``subject``
    (the reference-data digest of the customization) goes into the header, so a later run for the same
    subject knows the file is its own; ``replace`` as in :func:`~mvcustom_core.files.atomic_write`.
    """
    from safetensors.torch import save_file

    emb = vector.detach().float().cpu().reshape(1, -1).contiguous()
    metadata = {"format": "pt", "source": EMBEDDING_SOURCE, **({"subject": subject} if subject else {})}
    return atomic_write(path, lambda tmp: save_file({COMFY_EMBEDDING_KEY: emb}, str(tmp), metadata=metadata),
                        replace=replace)
