"""Command line: train a customization from a folder of photos, or describe a customization file.

Examples::

    python -m mvcustom_core.customization train --images photos/ --masks masks/ --turntable --elevation 15 \\
        --checkpoint sd15.safetensors --motion-module v3_sd15_mm.ckpt --tokenizer ComfyUI/comfy/sd1_tokenizer \\
        --class-word car --steps 1600 --out ComfyUI/models/mvcustom/mycar.safetensors \\
        --embedding ComfyUI/models/embeddings/mycar.safetensors
    python -m mvcustom_core.customization info ComfyUI/models/mvcustom/mycar.safetensors

Photos are read in file-name order; masks are grey images with the same names (or sorted alike) in
``--masks``, or the photos' alpha channel. Cameras come from ``--cameras FILE`` (any format of
``load_camera_file``), ``--turntable`` (evenly around the subject in photo order) or ``--sfm`` (pycolmap).
Training writes ``<out>.training`` periodically and resumes from it when the same command is run again
(Ctrl-C stops cleanly after writing it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mvcustom_core.customization.file_format import (
    CustomizationFileError, load_customization, save_customization)
from mvcustom_core.customization.reference_poses import (
    ReferenceInputError, check_reference_inputs, estimate_reference_cameras, prepare_reference_set,
    reference_cameras_from_file, turntable_reference_cameras)
from mvcustom_core.customization.token import DEFAULT_TOKEN, save_comfy_embedding
from mvcustom_core.customization.training import (
    RegularizationSet, TrainingConfig, TrainingError, checkpoint_path_for, train_customization)

__all__ = ["main", "build_parser", "read_photos", "read_regularization"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _image_files(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise ReferenceInputError(f"--{what}: {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ReferenceInputError(f"--{what}: no {'/'.join(IMAGE_SUFFIXES)} files in {folder}")
    return files


def read_photos(images: Path, masks: Path | None, size: tuple[int, int] | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Photos ``[3, H, W]`` and masks ``[1, H, W]`` in [0, 1] from image files; ``size = (H, W)`` resizes both."""
    from PIL import Image

    files = _image_files(images, "images")
    mask_files = _image_files(masks, "masks") if masks is not None else None
    if mask_files is not None and len(mask_files) != len(files):
        raise ReferenceInputError(f"--masks: {len(mask_files)} mask files for {len(files)} photos")
    rgbs, alphas = [], []
    for i, path in enumerate(files):
        with Image.open(path) as im:
            has_alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
            rgba = im.convert("RGBA")
        if size is not None:
            rgba = rgba.resize((size[1], size[0]), Image.BICUBIC)
        if mask_files is not None:
            with Image.open(mask_files[i]) as mm:
                mask = mm.convert("L")
            if size is not None:
                mask = mask.resize((size[1], size[0]), Image.BILINEAR)
            alpha = np.asarray(mask, dtype=np.float32) / 255.0
        elif has_alpha:
            alpha = np.asarray(rgba, dtype=np.float32)[..., 3] / 255.0
        else:
            raise ReferenceInputError(f"{path}: no --masks folder and the photo has no alpha channel; give subject "
                                      f"masks")
        array = np.asarray(rgba, dtype=np.float32)[..., :3] / 255.0
        rgbs.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
        alphas.append(torch.from_numpy(alpha.copy())[None])
    return rgbs, alphas


def read_regularization(folder: Path, size: tuple[int, int]) -> RegularizationSet:
    """Pictures resized to ``size = (H, W)`` and their captions (``<name>.txt`` beside ``<name>.png``)."""
    from PIL import Image

    pictures, captions = [], []
    for path in _image_files(folder, "regularization"):
        caption = path.with_suffix(".txt")
        if not caption.is_file():
            raise ReferenceInputError(f"--regularization: {path.name} has no caption file {caption.name}")
        captions.append(caption.read_text(encoding="utf-8-sig").strip())
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
        pictures.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return RegularizationSet(torch.stack(pictures), captions)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mvcustom_core.customization",
                                     description="MVCustom subject customization (train / info).")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a customization from photos of one subject")
    t.add_argument("--images", type=Path, required=True, help="folder of photos of the subject")
    t.add_argument("--masks", type=Path, help="folder of subject masks (white = subject); default: alpha channel")
    t.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize photos and masks to H W")
    poses = t.add_mutually_exclusive_group(required=True)
    poses.add_argument("--cameras", type=Path, help="camera file (CO3D, transforms.json, COLMAP, RealEstate10K …)")
    poses.add_argument("--turntable", action="store_true", help="assume photos evenly around the subject")
    poses.add_argument("--sfm", action="store_true", help="estimate poses with pycolmap structure-from-motion")
    t.add_argument("--camera-format", default=None, help="format of --cameras (default: detected)")
    t.add_argument("--elevation", type=float, default=15.0, help="turntable elevation in degrees")
    t.add_argument("--fov", type=float, default=40.0, help="vertical field of view for --turntable / --sfm")
    t.add_argument("--clockwise", action="store_true", help="turntable photos go clockwise")
    bb = t.add_mutually_exclusive_group(required=True)
    bb.add_argument("--tiny", action="store_true", help="tiny random backbone (tests, demos)")
    bb.add_argument("--checkpoint", type=Path, help="SD1.5 single-file checkpoint")
    t.add_argument("--motion-module", type=Path, help="AnimateDiff motion module (with --checkpoint)")
    t.add_argument("--tokenizer", type=Path, help="CLIP tokenizer folder (vocab.json + merges.txt)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--class-word", required=True)
    t.add_argument("--token", default=DEFAULT_TOKEN)
    defaults = TrainingConfig(class_word="x")
    for name, kind in (("steps", int), ("lr", float), ("token_lr", float), ("frames", int), ("references", int),
                       ("bank_views", int), ("seed", int), ("checkpoint_every", int),
                       ("fg_weight", float), ("bg_weight", float), ("rgb_weight", float),
                       ("denoise_weight", float), ("reference_max_timestep", int), ("ray_chunk", int),
                       ("text_dropout", float), ("reference_dropout", float)):
        t.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name))
    t.add_argument("--blocks", default=defaults.blocks, help="'every_other', 'all' or block indices/names")
    t.add_argument("--samples", type=int, default=24, help="FeatureNeRF samples per ray")
    t.add_argument("--timesteps", choices=["cubic", "uniform"], default=defaults.timesteps,
                   help="training timestep distribution (cubic: biased to high noise)")
    t.add_argument("--regularization", type=Path,
                   help="folder of regularization pictures, each with a same-named .txt caption, the target of "
                        "steps whose references are dropped (--reference-dropout; CustomDiffusion360's addreg)")
    t.add_argument("--out", type=Path, required=True, help="customization file to write (.safetensors)")
    t.add_argument("--embedding", type=Path, help="also write the token as a ComfyUI embedding file")
    t.add_argument("--no-resume", action="store_true", help="ignore an existing <out>.training checkpoint")
    i = sub.add_parser("info", help="describe a customization file")
    i.add_argument("file", type=Path)
    return parser


def _backbone(args):
    if args.tiny:
        from mvcustom_core.backbone.tiny import tiny_backbone

        return tiny_backbone(seed=0)
    from mvcustom_core.backbone.loading import Backbone, build_backbone, load_sd15_checkpoint
    from mvcustom_core.backbone.motion_module import load_motion_module
    from mvcustom_core.backbone.text import load_tokenizer

    if args.motion_module is None or args.tokenizer is None:
        raise TrainingError("--checkpoint needs --motion-module and --tokenizer (e.g. ComfyUI/comfy/sd1_tokenizer)")
    components = load_sd15_checkpoint(args.checkpoint, device=args.device)
    unet = build_backbone(components, load_motion_module(args.motion_module, device=args.device))
    return Backbone(unet=unet, vae=components.vae, text_encoder=components.text_encoder,
                    tokenizer=load_tokenizer(args.tokenizer))


def _train(args) -> int:
    photos, mask_list = read_photos(args.images, args.masks, tuple(args.size) if args.size else None)
    images, masks, _ = check_reference_inputs(photos, mask_list)
    h, w = images.shape[-2:]
    center = None
    if args.cameras is not None:
        cams = reference_cameras_from_file(args.cameras, (h, w), format=args.camera_format)
    elif args.turntable:
        cams = turntable_reference_cameras(len(images), (h, w), elevation_deg=args.elevation, fov_y_deg=args.fov,
                                           clockwise=args.clockwise)
        center = torch.zeros(3)
    else:
        cams = estimate_reference_cameras(images, fov_y_deg=args.fov)
    reference = prepare_reference_set(images, masks, cams, center=center)
    config = TrainingConfig(
        class_word=args.class_word, token=args.token, steps=args.steps, lr=args.lr, token_lr=args.token_lr,
        frames=args.frames, references=args.references, bank_views=args.bank_views, seed=args.seed,
        checkpoint_every=args.checkpoint_every, fg_weight=args.fg_weight, bg_weight=args.bg_weight,
        rgb_weight=args.rgb_weight, denoise_weight=args.denoise_weight,
        reference_max_timestep=args.reference_max_timestep, ray_chunk=args.ray_chunk, blocks=args.blocks,
        text_dropout=args.text_dropout, reference_dropout=args.reference_dropout, timesteps=args.timesteps,
        featurenerf={"num_samples": args.samples})
    config.check()
    regularization = None if args.regularization is None else read_regularization(args.regularization, (h, w))
    backbone = _backbone(args)

    def report(done: int, total: int, losses: dict) -> None:
        parts = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
        print(f"step {done}/{total}  {parts}", flush=True)

    checkpoint = checkpoint_path_for(args.out)
    try:
        result = train_customization(backbone, reference, config, checkpoint=checkpoint,
                                     resume=not args.no_resume, progress=report, regularization=regularization)
    except KeyboardInterrupt:
        print(f"interrupted; progress kept in {checkpoint}: run the same command to resume", file=sys.stderr)
        return 130
    save_customization(args.out, result.customization)
    print(f"wrote {args.out}")
    if args.embedding is not None:
        save_comfy_embedding(args.embedding, result.customization.token_embedding)
        print(f"wrote {args.embedding} (write 'embedding:{args.embedding.stem}' in a ComfyUI prompt)")
    return 0


def _info(args) -> int:
    c = load_customization(args.file)
    print(json.dumps({
        "token": c.token, "class_word": c.class_word, "prompt": c.prompt(), "blocks": c.blocks,
        "reference_views": c.ref_cams.num_frames, "image_size": list(c.ref_cams.image_size),
        "reference_banks": {k: list(v.shape) for k, v in c.references.items()},
        "token_width": int(c.token_embedding.shape[-1]), "training": c.training}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for bad input, with the message on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return _train(args) if args.command == "train" else _info(args)
    except (ReferenceInputError, TrainingError, CustomizationFileError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
