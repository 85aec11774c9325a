"""Which subject a file was written for by this pack, so a new run replaces its own files and nothing else.

A subject is identified by the digest of its reference photos, masks and cameras
(:func:`~mvcustom_core.customization.training.reference_digest`). Training writes three files per name,
each carrying that digest: the customization (header ``training`` → ``reference_digest``), the ComfyUI
embedding (header ``source`` = ``mvcustom``, ``subject``) and the training checkpoint (``data``). Any other
file, and any file that cannot be read, belongs to no subject of ours.
"""

from __future__ import annotations

import json
import os

__all__ = ["subject_of"]


def _from_safetensors_header(path: str) -> str | None:
    from safetensors import safe_open

    from mvcustom_core.customization.file_format import FORMAT_NAME
    from mvcustom_core.customization.token import EMBEDDING_SOURCE

    with safe_open(path, framework="pt") as handle:
        meta = handle.metadata() or {}
    if meta.get("format") == FORMAT_NAME:
        return json.loads(meta.get("training", "{}")).get("reference_digest")
    if meta.get("source") == EMBEDDING_SOURCE:
        return meta.get("subject")
    return None


def subject_of(path: str | os.PathLike) -> str | None:
    """The reference digest the pack wrote ``path`` for (a customization, its embedding or its training
    checkpoint), or None: not a regular file, not the pack's, unreadable, or from before digests were kept."""
    from mvcustom_core.customization.training import load_checkpoint

    path = os.fspath(path)
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    try:
        return _from_safetensors_header(path)
    except Exception:  # noqa: BLE001 - not a safetensors file: perhaps a checkpoint
        pass
    try:
        digest = load_checkpoint(path).get("data")
    except Exception:  # noqa: BLE001 - neither: not ours
        return None
    return digest if isinstance(digest, str) else None
