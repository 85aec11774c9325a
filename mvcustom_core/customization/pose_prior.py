"""A pose prior: pose-block weights trained across many subjects of one backbone, where customization starts.

MVCustom trains each subject's FeatureNeRF and fusion layers from the identity initialization (the UNet unchanged at
step 0; method.md §3.2, CustomDiffusion360's ~1.6k steps). Most of what those steps learn is not about the subject:
FeatureNeRF reads the subject from the reference bank (features projected from the reference views), so how to turn
those features into density and rendered tokens is shared by every subject of a backbone. A prior trained with the
same per-step loss on many subjects (:func:`~mvcustom_core.customization.training.step_loss`, one subject drawn
per step) carries that part, and a new subject's customization starting there needs far fewer steps. Whether this
helps is an open choice, not the paper's; docs/ablation.md measures it on the built-in backbone, which ships a prior
(``scripts/train_tiny_world.py``, stage ``prior``).

File: safetensors with one tensor per weight, named ``"<block name>/<weight name>"`` (block names as in a
customization file), and one metadata entry ``"mvcustom.pose_prior"``: JSON with the format, the block selection
and FeatureNeRF settings it was trained with, and the backbone's fingerprint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from mvcustom_core.files import atomic_write

__all__ = ["POSE_PRIOR_FORMAT", "PosePrior", "PosePriorError", "save_pose_prior", "load_pose_prior"]

POSE_PRIOR_FORMAT = "mvcustom.pose-prior/1"
_METADATA_KEY = "mvcustom.pose_prior"


class PosePriorError(ValueError):
    """A pose prior file that is unreadable or of another format."""


@dataclass
class PosePrior:
    """Pose-block weights to start customizations from.

    Attributes:
        weights: block name → the block's own weights (``PoseConditionedBlock.own_state()``).
        blocks: the block selection they were trained with (``TrainingConfig.blocks``).
        featurenerf: the FeatureNeRF overrides they were trained with (``TrainingConfig.featurenerf``).
        backbone: fingerprint of the backbone (``backbone_fingerprint``).
        training: how they were trained (free-form JSON).
    """

    weights: dict[str, dict[str, Tensor]]
    blocks: str
    featurenerf: dict[str, Any]
    backbone: dict[str, Any]
    training: dict[str, Any]


def save_pose_prior(path: str | os.PathLike, prior: PosePrior) -> Path:
    """Write ``prior`` atomically (float32 tensors, metadata in one entry so the bytes repeat); returns the path."""
    from safetensors.torch import save_file

    tensors = {f"{block}/{name}": value.detach().float().cpu().contiguous()
               for block, state in prior.weights.items() for name, value in state.items()}
    header = {"format": POSE_PRIOR_FORMAT, "blocks": prior.blocks, "featurenerf": prior.featurenerf,
              "backbone": prior.backbone, "training": prior.training}
    metadata = {_METADATA_KEY: json.dumps(header, sort_keys=True)}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_pose_prior(path: str | os.PathLike) -> PosePrior:
    """Read a file written by :func:`save_pose_prior`.

    Raises:
        PosePriorError: the file is not a readable pose prior of this format.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = json.loads((handle.metadata() or {}).get(_METADATA_KEY, "null"))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise PosePriorError(f"{path}: not a readable safetensors file: {error}") from error
    if not isinstance(header, dict) or header.get("format") != POSE_PRIOR_FORMAT:
        raise PosePriorError(f"{path}: not an MVCustom pose prior ({POSE_PRIOR_FORMAT})")
    weights: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        block, sep, name = key.partition("/")
        if not sep:
            raise PosePriorError(f"{path}: tensor {key!r} is not named '<block>/<weight>'")
        weights.setdefault(block, {})[name] = value
    return PosePrior(weights, header["blocks"], header["featurenerf"], header["backbone"], header["training"])
