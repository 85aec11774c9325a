"""CLIP tokenizer from local files and SD1.x prompt encoding (for subject-token training and plain sampling).

Tokenizer files are the CLIP BPE pair ``vocab.json`` + ``merges.txt``: ComfyUI ships them in
``comfy/sd1_tokenizer/``, a diffusers model folder has them in ``tokenizer/``. Nothing is downloaded.

Convention:
    - Prompts are padded / truncated to ``tokenizer.model_max_length`` = 77 tokens: ``<|startoftext|>``, the text,
      ``<|endoftext|>``, then padding with ``<|endoftext|>`` (the SD1.x tokenizer's ``pad_token``).
    - SD1.x conditions on CLIP's ``last_hidden_state`` (after the final layer norm), ``[B, 77, 768]``.
      ``clip_skip = k > 0`` takes the hidden state ``k`` layers before the last one and applies the final layer
      norm, as diffusers' ``StableDiffusionPipeline.encode_prompt`` does.
    - A CLIP vocabulary is ordered as in openai/CLIP ``simple_tokenizer.py``: the 256 byte symbols, the same with
      ``</w>``, one entry per merge, then ``<|startoftext|>``, ``<|endoftext|>`` (49406 and 49407 for the real
      48,894 merges). :func:`write_clip_vocab` builds a small vocabulary that way for tests and the tiny backbone.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["TokenizerError", "load_tokenizer", "encode_prompt", "clip_vocab", "write_clip_vocab"]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


class TokenizerError(ValueError):
    """Tokenizer files missing or malformed."""


def clip_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """A CLIP BPE vocabulary for ``merges`` in openai/CLIP order (bytes, bytes + ``</w>``, merges, specials)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    entries = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab: dict[str, int] = {}
    for entry in entries:
        vocab.setdefault(entry, len(vocab))
    return vocab


def _word_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Left-to-right merges that turn each lowercase ASCII word into a single ``word</w>`` token."""
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        merged = symbols[0]
        for symbol in symbols[1:]:
            pair = (merged, symbol)
            if pair not in merges:
                merges.append(pair)
            merged += symbol
    return merges


def write_clip_vocab(folder: str | os.PathLike, words: Iterable[str]) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` whose BPE spells each of ``words`` as one token; returns ``folder``.

    Files are written atomically. Words must be lowercase ASCII letters.
    """
    words = list(words)
    for word in words:
        if not (word.isascii() and word.isalpha() and word.islower()):
            raise TokenizerError(f"vocabulary word {word!r} must be lowercase ASCII letters")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = _word_merges(words)
    _write_atomic(folder / "vocab.json", json.dumps(clip_vocab(merges), ensure_ascii=False))
    _write_atomic(folder / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tokenizer_folder(path: Path) -> Path:
    for candidate in (path, path / "tokenizer"):
        if (candidate / "vocab.json").is_file() and (candidate / "merges.txt").is_file():
            return candidate
    if path.is_file() and path.name == "vocab.json" and (path.parent / "merges.txt").is_file():
        return path.parent
    raise TokenizerError(
        f"{path}: no CLIP tokenizer files: expected vocab.json and merges.txt in it or in its tokenizer/ folder "
        f"(ComfyUI ships them in comfy/sd1_tokenizer/)"
    )


def load_tokenizer(path: str | os.PathLike, *, model_max_length: int = 77):
    """A transformers ``CLIPTokenizer`` from a local ``vocab.json`` + ``merges.txt``.

    Args:
        path: a folder holding the two files (``comfy/sd1_tokenizer``), a diffusers model folder (uses
            ``tokenizer/``), or the ``vocab.json`` file itself.
        model_max_length: padded length of every prompt (77 for SD1.x).

    Raises:
        TokenizerError: files missing, unreadable, or a merge names a symbol outside the vocabulary.
    """
    from transformers import CLIPTokenizer

    folder = _tokenizer_folder(Path(path))
    try:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, json.JSONDecodeError) as error:
        raise TokenizerError(f"{folder}: cannot read tokenizer files: {error}") from error
    merges = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenizerError(f"{folder / 'merges.txt'}:{number}: expected two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    for token in (BOS_TOKEN, EOS_TOKEN):
        if token not in vocab:
            raise TokenizerError(f"{folder / 'vocab.json'}: missing special token {token!r}")
    try:
        return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    except Exception as error:  # tokenizers raises its own exception type for inconsistent BPE tables
        raise TokenizerError(f"{folder}: inconsistent vocab.json / merges.txt: {error}") from error


def encode_prompt(
    text_encoder: nn.Module,
    tokenizer,
    prompts: str | Sequence[str],
    *,
    clip_skip: int = 0,
) -> Tensor:
    """Encode prompts into SD1.x conditioning ``[B, 77, C]`` (``C`` = 768 for SD1.x).

    Args:
        text_encoder: transformers ``CLIPTextModel``.
        tokenizer: a CLIP tokenizer (:func:`load_tokenizer`).
        prompts: one prompt or a list of ``B``.
        clip_skip: 0 (SD1.5 default) uses the last layer; ``k`` uses the output ``k`` layers earlier.

    Returns:
        Tensor ``[B, model_max_length, C]`` on the text encoder's device and dtype. Gradients flow to the text
        encoder's parameters (token embeddings are trained for a subject token).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if clip_skip < 0:
        raise ValueError(f"clip_skip must be >= 0, got {clip_skip}")
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = next(text_encoder.parameters()).device
    input_ids = tokens.input_ids.to(device)
    if clip_skip == 0:
        return text_encoder(input_ids).last_hidden_state
    output = text_encoder(input_ids, output_hidden_states=True)
    hidden = output.hidden_states[-(clip_skip + 1)]
    return text_encoder.final_layer_norm(hidden) if hasattr(text_encoder, "final_layer_norm") else (
        text_encoder.text_model.final_layer_norm(hidden)
    )
