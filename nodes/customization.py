"""Subject customization nodes: reference cameras from photos, training, loading a customization file.

Files: a customization goes to ``models/mvcustom/<name>.safetensors`` (format in
``mvcustom_core/customization/file_format.py``), its subject token also to ``models/embeddings/<name>.safetensors``
so the standard CLIP Text Encode understands ``embedding:<name>``; the training checkpoint is
``models/mvcustom/<name>.safetensors.training`` (a suffix no loader lists), used to resume an interrupted run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from mvcustom_core.cameras import CameraSet
from mvcustom_core.customization.file_format import (Customization, is_customization_file, load_customization,
                                                     save_customization)
from mvcustom_core.customization.reference_poses import (
    estimate_reference_cameras, prepare_reference_set, turntable_reference_cameras)
from mvcustom_core.customization.subject_files import subject_of
from mvcustom_core.customization.token import save_comfy_embedding
from mvcustom_core.customization.training import (RegularizationSet, TrainingConfig, checkpoint_path_for,
                                                  reference_digest, train_customization)

from ._common import NodeInputError, Progress, blame, image_to_chw, input_named_in, queue_check, require
from ._files import claim, file_name, read_path, reading, write_owned
from ._host import folder_paths, io, ui
from .bridge import prepare_backbone
from .types import Backbone, Customization as CustomizationType, Trajectory

__all__ = ["CUSTOMIZATION_NODES", "ReferenceCameras", "TrainCustomization", "LoadCustomization",
           "customization_folder", "list_customizations", "CUSTOMIZATION_FOLDER"]

CATEGORY = "MVCustom/customization"
log = logging.getLogger(__name__)
CUSTOMIZATION_FOLDER = "mvcustom"
_POSE_MODES = ["turntable", "structure_from_motion"]
# Training keeps every activation for the backward pass: ask ComfyUI to offload every other model first, as its own
# training node does (comfy_extras/nodes_train.py, load_models_gpu(..., memory_required=1e20)).
TRAINING_MEMORY = int(1e20)


def customization_folder() -> Path:
    """``models/mvcustom`` (the first registered ``mvcustom`` folder, else under ``folder_paths.models_dir``)."""
    names = getattr(folder_paths, "folder_names_and_paths", {})
    if CUSTOMIZATION_FOLDER in names and names[CUSTOMIZATION_FOLDER][0]:
        return Path(names[CUSTOMIZATION_FOLDER][0][0])
    return Path(folder_paths.models_dir) / CUSTOMIZATION_FOLDER


def _embeddings_folder() -> Path:
    names = getattr(folder_paths, "folder_names_and_paths", {})
    if "embeddings" in names and names["embeddings"][0]:
        return Path(names["embeddings"][0][0])
    return Path(folder_paths.models_dir) / "embeddings"


def list_customizations(folder: str | os.PathLike | None = None) -> list[str]:
    """Customization files (by header, not just suffix) under ``folder`` (default :func:`customization_folder`),
    ``/``-separated relative paths, sorted. Motion modules kept in the same folder are skipped."""
    try:
        root = Path(folder) if folder is not None else customization_folder()
    except (AttributeError, TypeError):  # a host without model folders
        return []
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.safetensors")
                  if not p.name.startswith(".") and is_customization_file(p))


class ReferenceCameras(io.ComfyNode):
    """Cameras for reference photos: an assumed turntable, or structure-from-motion on the photos."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_ReferenceCameras",
            display_name="MVCustom Reference Cameras",
            category=CATEGORY,
            description=("Cameras of the subject's reference photos, one per photo, for Train Customization. "
                         "'turntable' assumes the photos go evenly around the subject at one elevation (in photo "
                         "order); 'structure_from_motion' estimates them with pycolmap on the CPU (needs textured, "
                         "overlapping photos). Pose files (CO3D, transforms.json, COLMAP) load with Load Trajectory."),
            inputs=[
                io.Image.Input("images", tooltip="The reference photos, IMAGE [N, H, W, 3]."),
                io.Combo.Input("mode", options=_POSE_MODES, default=_POSE_MODES[0],
                               tooltip="How to get the poses."),
                io.Float.Input("elevation_deg", default=15.0, min=-89.0, max=89.0, step=1.0,
                               tooltip="Turntable: camera elevation above the subject, degrees."),
                io.Float.Input("fov_y_deg", default=40.0, min=1.0, max=179.0, step=0.5,
                               tooltip="Vertical field of view of the photos, degrees (both modes)."),
                io.Float.Input("start_azimuth_deg", default=0.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="Turntable: azimuth of the first photo, degrees."),
                io.Boolean.Input("clockwise", default=False, tooltip="Turntable: photos go clockwise."),
            ],
            outputs=[Trajectory.Output("cameras", tooltip="One camera per photo (MVC_CAMERA_TRAJECTORY).")],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, mode: str, elevation_deg: float, fov_y_deg: float,
                start_azimuth_deg: float, clockwise: bool) -> io.NodeOutput:
        require(cls, "mode", mode in _POSE_MODES, f"must be one of {_POSE_MODES}, got {mode!r}")
        require(cls, "fov_y_deg", 0.0 < float(fov_y_deg) < 180.0, f"must be in (0, 180), got {fov_y_deg}")
        photos = image_to_chw(cls, "images", images)
        require(cls, "images", photos.shape[0] >= 2, f"has {photos.shape[0]} photo; need at least 2 views")
        size = tuple(photos.shape[-2:])
        with blame(cls, "images"):
            if mode == "turntable":
                cams = turntable_reference_cameras(photos.shape[0], size, elevation_deg=float(elevation_deg),
                                                   fov_y_deg=float(fov_y_deg),
                                                   start_azimuth_deg=float(start_azimuth_deg),
                                                   clockwise=bool(clockwise))
            else:
                cams = estimate_reference_cameras(photos, fov_y_deg=float(fov_y_deg))
        return io.NodeOutput(cams)


def _clip_skip(clip: Any) -> int:
    """CLIP Set Last Layer's choice on a ComfyUI CLIP (``layer_idx`` -1 = last = 0 layers skipped)."""
    layer = getattr(clip, "layer_idx", None)
    return 0 if layer is None else -int(layer) - 1


# Core training arguments (marked with mvcustom_core.checks.about) -> this node's inputs.
_TRAINING_ARGUMENTS = {"checkpoint": "resume", "backbone": "backbone", "reference": "images",
                       "class_word": "class_word", "steps": "steps", "lr": "lr", "token_lr": "token_lr",
                       "frames": "frames", "references": "references", "fg_weight": "fg_weight",
                       "bg_weight": "bg_weight", "rgb_weight": "rgb_weight", "denoise_weight": "denoise_weight",
                       "clip_skip": "clip", "reference_dropout": "reference_dropout",
                       "regularization": "regularization_images"}


class TrainCustomization(io.ComfyNode):
    """Trains FeatureNeRF + fusion + the subject token on reference photos; writes the customization file."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = TrainingConfig(class_word="x")
        return io.Schema(
            node_id="MVC_TrainCustomization",
            display_name="MVCustom Train Customization",
            category=CATEGORY,
            description=("Learns a subject from its photos (MVCustom stage 1): FeatureNeRF and fusion layers of the "
                         "pose-conditioned blocks and a new subject token, everything else frozen. Writes "
                         "models/mvcustom/<name>.safetensors (weights, reference features, cameras, token) and "
                         "models/embeddings/<name>.safetensors (write 'embedding:<name>' in CLIP Text Encode). "
                         "Cancel stops after writing a checkpoint; running again resumes from it."),
            inputs=[
                Backbone.Input("backbone", tooltip="The backbone to customize (MVC_BACKBONE): Load Backbone, or a "
                                                   "Load Checkpoint MODEL through Apply Motion Module."),
                io.Image.Input("images", tooltip="Reference photos of the subject, IMAGE [N, H, W, 3]; sides "
                                                 "multiples of 8."),
                io.Mask.Input("masks", tooltip="Subject masks, MASK [N, H, W], 1 = subject."),
                Trajectory.Input("cameras", tooltip="One camera per photo (Reference Cameras or Load Trajectory); "
                                                    "normalized around the subject before training."),
                io.String.Input("class_word", default="object",
                                tooltip="The subject's category ('car', 'chair', 'teddybear'); initialises the token."),
                io.String.Input("name", default="my_subject",
                                tooltip="File name (no suffix) in models/mvcustom and models/embeddings."),
                io.Int.Input("steps", default=defaults.steps, min=1, max=100000,
                             tooltip="Optimizer steps (CustomDiffusion360: 1600)."),
                io.Float.Input("lr", default=defaults.lr, min=0.0, max=1.0, step=1e-5, round=1e-7,
                               tooltip="Learning rate of FeatureNeRF and fusion layers (CustomDiffusion360: 1e-4, "
                                       "constant)."),
                io.Float.Input("token_lr", default=defaults.token_lr, min=0.0, max=1.0, step=1e-6, round=1e-8,
                               tooltip="Learning rate of the subject token (CustomDiffusion360: the same as lr)."),
                io.Int.Input("frames", default=defaults.frames, min=1, max=64,
                             tooltip=("Target photos per step, trained as one clip (CustomDiffusion360, an image "
                                      "model, takes one target per step).")),
                io.Int.Input("references", default=defaults.references, min=1, max=64,
                             tooltip="Reference views per step, spread evenly over the other photos "
                                     "(CustomDiffusion360: 4)."),
                io.Int.Input("samples", default=24, min=2, max=128,
                             tooltip="FeatureNeRF samples per ray on [near, far] = [0, 2] (CustomDiffusion360: 24)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seeds every random draw of the run."),
                io.Boolean.Input("invert_mask", default=False,
                                 tooltip="Invert the masks (ComfyUI's Load Image gives 1 where the photo is "
                                         "transparent)."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from the checkpoint of an interrupted run with the same settings."),
                io.Float.Input("fg_weight", default=defaults.fg_weight, min=0.0, max=1000.0, step=0.5, optional=True,
                               tooltip="Weight of the FeatureNeRF opacity-vs-mask loss (CustomDiffusion360: 10)."),
                io.Float.Input("bg_weight", default=defaults.bg_weight, min=0.0, max=1000.0, step=0.5, optional=True,
                               tooltip="Weight of the background-alpha loss (CustomDiffusion360: 10)."),
                io.Float.Input("rgb_weight", default=defaults.rgb_weight, min=0.0, max=1000.0, step=0.5, optional=True,
                               tooltip="Weight of the FeatureNeRF RGB loss (CustomDiffusion360: 5)."),
                io.Float.Input("denoise_weight", default=defaults.denoise_weight, min=0.0, max=1000.0, step=0.1,
                               optional=True, tooltip="Weight of the masked denoising loss."),
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip=("Replace files of this name that MVCustom did not write for these photos "
                                          "(another subject's, or anyone else's). Off: such files are never "
                                          "touched; a re-run for the same photos still replaces its own.")),
                io.Clip.Input("clip", optional=True,
                              tooltip="The checkpoint's CLIP (Load Checkpoint, LoRA Loaders): the subject token is "
                                      "trained against it, at its CLIP Set Last Layer. Needed when the backbone "
                                      "comes from a MODEL; else the backbone's own text encoder."),
                io.Vae.Input("vae", optional=True,
                             tooltip="The checkpoint's VAE, which encodes the photos. Needed when the backbone "
                                     "comes from a MODEL; else the backbone's own VAE."),
                io.Float.Input("reference_dropout", default=defaults.reference_dropout, min=0.0, max=1.0, step=0.05,
                               optional=True,
                               tooltip=("Share of steps trained without references (CustomDiffusion360: 0.25): null "
                                        "references, no FeatureNeRF losses, the whole picture denoised with the "
                                        "subject prompt, or a regularization picture with its caption.")),
                io.Image.Input("regularization_images", optional=True,
                               tooltip=("Regularization pictures (the photos' size), e.g. generated from class "
                                        "prompts: the target of steps whose references are dropped.")),
                io.String.Input("regularization_captions", default="", multiline=True, optional=True,
                                tooltip="One caption per regularization picture, one per line (one line: for all)."),
            ],
            outputs=[
                CustomizationType.Output("customization", tooltip="The trained subject (MVC_CUSTOMIZATION)."),
                io.String.Output("prompt", tooltip="A prompt using the subject's embedding for CLIP Text Encode."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, backbone: Any, images: torch.Tensor, masks: torch.Tensor, cameras: CameraSet,
                class_word: str, name: str, steps: int, lr: float, token_lr: float, frames: int, references: int,
                samples: int, seed: int, invert_mask: bool, resume: bool, fg_weight: float = 10.0,
                bg_weight: float = 10.0, rgb_weight: float = 5.0, denoise_weight: float = 1.0,
                overwrite: bool = False, clip: Any = None, vae: Any = None,
                reference_dropout: float = TrainingConfig.reference_dropout,
                regularization_images: torch.Tensor | None = None, regularization_captions: str = "") -> io.NodeOutput:
        require(cls, "cameras", isinstance(cameras, CameraSet),
                f"must be an MVC_CAMERA_TRAJECTORY (CameraSet), got {type(cameras).__name__}")
        require(cls, "class_word", isinstance(class_word, str) and class_word.strip() != "",
                "must be a word such as 'car', 'chair' or 'teddybear'")
        stem = file_name(cls, "name", name, what="file name")
        photos = image_to_chw(cls, "images", images)
        require(cls, "masks", isinstance(masks, torch.Tensor) and masks.ndim in (2, 3),
                f"must be a MASK [N, H, W], got {getattr(masks, 'shape', type(masks).__name__)}")
        mask = masks.float()[None] if masks.ndim == 2 else masks.float()
        mask = 1.0 - mask if invert_mask else mask
        require(cls, "images", photos.shape[-2] % 8 == 0 and photos.shape[-1] % 8 == 0,
                f"are {photos.shape[-1]}x{photos.shape[-2]}; both sides must be multiples of 8 (resize them)")
        with blame(cls, input_named_in(["images", "masks", "cameras"], "images")):
            reference = prepare_reference_set(photos, mask[:, None], cameras)
        config = TrainingConfig(class_word=class_word.strip(), steps=int(steps), lr=float(lr),
                                token_lr=float(token_lr), frames=int(frames), references=int(references),
                                seed=int(seed), featurenerf={"num_samples": int(samples)}, fg_weight=float(fg_weight),
                                bg_weight=float(bg_weight), rgb_weight=float(rgb_weight),
                                denoise_weight=float(denoise_weight), clip_skip=_clip_skip(clip),
                                reference_dropout=float(reference_dropout))
        with blame(cls, None, _TRAINING_ARGUMENTS):
            config.check()
        regularization = None
        if regularization_images is not None:
            pictures = image_to_chw(cls, "regularization_images", regularization_images)
            captions = [line.strip() for line in regularization_captions.splitlines() if line.strip()]
            captions = captions * pictures.shape[0] if len(captions) == 1 else captions
            require(cls, "regularization_captions", len(captions) == pictures.shape[0],
                    f"must hold one caption per regularization picture ({pictures.shape[0]}) or one for all, got "
                    f"{len(captions)}")
            regularization = RegularizationSet(pictures, captions)
        out = customization_folder() / f"{stem}.safetensors"
        embedding = _embeddings_folder() / f"{stem}.safetensors"
        checkpoint = checkpoint_path_for(out)
        subject = reference_digest(reference)

        def ours(path: Path) -> bool:
            return subject_of(path) == subject

        files = {f"models/{CUSTOMIZATION_FOLDER}/{out.name}": out, f"models/embeddings/{embedding.name}": embedding}
        if not resume:  # resuming reads the checkpoint first and refuses one of another subject ('resume')
            files[f"models/{CUSTOMIZATION_FOLDER}/{checkpoint.name}"] = checkpoint
        claim(cls, "name", files, ours, bool(overwrite))
        progress = Progress(config.steps)
        every = max(1, config.steps // 100)

        def report(done: int, total: int, losses: dict) -> None:
            if done % every == 0 or done == total:
                log.info("%s: step %d/%d %s", cls.__name__, done, total,
                         " ".join(f"{k} {v:.4f}" for k, v in losses.items()))
            progress.callback(done, total)

        # float32 views: the trained fusion layers sit in the UNet's token path (half-precision weights are cast,
        # a copy for the run); pose blocks and the token go on the views, never on the shared models.
        core = prepare_backbone(cls, backbone, ["unet", "vae", "text_encoder"], clip=clip, vae=vae,
                                dtype=torch.float32, memory_required=TRAINING_MEMORY)
        require(cls, "clip" if clip is not None else "backbone", core.tokenizer is not None,
                "has no CLIP tokenizer (comfy/sd1_tokenizer was not found), which the subject token needs")
        with blame(cls, None, _TRAINING_ARGUMENTS):
            result = train_customization(core, reference, config, checkpoint=checkpoint, resume=bool(resume),
                                         progress=report, regularization=regularization)
        write_owned(cls, "name", f"models/{CUSTOMIZATION_FOLDER}/{out.name}", out,
                    lambda path, replace: save_customization(path, result.customization, replace=replace),
                    ours, bool(overwrite))
        write_owned(cls, "name", f"models/embeddings/{embedding.name}", embedding,
                    lambda path, replace: save_comfy_embedding(path, result.customization.token_embedding,
                                                               subject=subject, replace=replace),
                    ours, bool(overwrite))
        prompt = f"photo of a embedding:{stem} {config.class_word}"
        last = result.customization.training.get("final_losses", {})
        summary = (f"saved models/{CUSTOMIZATION_FOLDER}/{stem}.safetensors and models/embeddings/{stem}.safetensors "
                   f"after {result.customization.training.get('steps_done')} steps; final loss "
                   f"{last.get('total', float('nan')):.4f}. Prompt: {prompt}")
        return io.NodeOutput(result.customization, prompt, ui=ui.PreviewText(summary))


class LoadCustomization(io.ComfyNode):
    """Reads a customization file from models/mvcustom."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        files = list_customizations()
        return io.Schema(
            node_id="MVC_LoadCustomization",
            display_name="MVCustom Load Customization",
            category=CATEGORY,
            description=("Loads a trained subject from models/mvcustom: pose-conditioned block weights, reference "
                         "features and cameras, and the subject token. No reference photos are needed. Refused "
                         "at sampling by a backbone other than the one it was trained on."),
            inputs=[io.Combo.Input("customization", options=files, default=files[0] if files else None,
                                   tooltip="Customization file in models/mvcustom.")],
            outputs=[
                CustomizationType.Output("customization_out", display_name="customization",
                                         tooltip="The subject (MVC_CUSTOMIZATION)."),
                io.String.Output("prompt", tooltip="A prompt using the subject's embedding (if models/embeddings has "
                                                   "the file of the same name)."),
            ],
        )

    @classmethod
    def _path(cls, customization: str) -> Path:
        return read_path(cls, "customization", customization, CUSTOMIZATION_FOLDER, what="customization file",
                         hint="pick one from the list: train a subject with Train Customization, or put its file "
                              "into models/mvcustom")

    @classmethod
    def validate_inputs(cls, customization: str) -> bool | str:
        """Queue-time check of the name (ComfyUI does not check V3 combo values against the list)."""
        return queue_check(lambda: cls._path(customization))

    @classmethod
    def fingerprint_inputs(cls, customization: str) -> str:
        try:
            stat = cls._path(customization).stat()
        except NodeInputError:
            return str(customization)
        return f"{customization}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, customization: str) -> io.NodeOutput:
        path = cls._path(customization)
        with reading(cls, "customization", customization, path, CUSTOMIZATION_FOLDER, what="an MVCustom customization"):
            loaded: Customization = load_customization(path)
        prompt = f"photo of a embedding:{path.stem} {loaded.class_word}"
        return io.NodeOutput(loaded, prompt)


CUSTOMIZATION_NODES: list[type[io.ComfyNode]] = [ReferenceCameras, TrainCustomization, LoadCustomization]
