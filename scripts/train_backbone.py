#!/usr/bin/env python
"""Backbone-stage training: the AnimateDiff motion modules learn dense spatio-temporal attention (MVCustom §3.3).

Single GPU:
    python scripts/train_backbone.py --data clips/ --checkpoint sd15.safetensors \\
        --motion-module mm_sd_v15_v2.ckpt --output runs/dense --steps 20000 --mixed-precision bf16

Several GPUs / nodes (same arguments; one process per GPU):
    accelerate launch --num_processes 8 scripts/train_backbone.py ...
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        scripts/train_backbone.py ...

Re-running the same command resumes from the newest checkpoint in --output. Ctrl-C or SIGTERM saves a checkpoint
and exits. Logged steps are also appended to --output/train_log.jsonl. See docs/backbone_training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file from a checkout
    sys.path.insert(0, str(REPO_ROOT))


def _window(text: str) -> int | None:
    return None if text.lower() in ("full", "none", "0") else int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mvcustom_core.backbone.training import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", type=Path, help="SD1.x single-file checkpoint (.safetensors / .ckpt)")
    g.add_argument("--motion-module", type=Path, help="AnimateDiff motion module to start from")
    g.add_argument("--tokenizer", type=Path, help="CLIP tokenizer folder (vocab.json + merges.txt), e.g. "
                   "ComfyUI's comfy/sd1_tokenizer or a diffusers model's tokenizer/")
    g.add_argument("--tiny", action="store_true", help="train the tiny random backbone instead (smoke test)")
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, required=True, help="folder of frame folders / videos with captions")
    g.add_argument("--frames", type=int, default=16, help="frames per clip")
    g.add_argument("--height", type=int, default=256)
    g.add_argument("--width", type=int, default=256)
    g.add_argument("--stride", type=int, default=4, help="frame step within a clip")
    g.add_argument("--caption-dropout", type=float, default=0.1, help="probability of an empty caption")
    g.add_argument("--default-caption", default=None, help="caption for clips without one (default: error)")
    g.add_argument("--skip-videos", action="store_true", help="ignore video files when PyAV is missing")
    g = p.add_argument_group("training")
    g.add_argument("--output", type=Path, required=True, help="checkpoints and the final motion module")
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="clips per process and forward pass")
    g.add_argument("--gradient-accumulation", type=int, default=d.gradient_accumulation,
                   help="forward/backward passes per optimizer step")
    g.add_argument("--lr", type=float, default=d.learning_rate)
    g.add_argument("--lr-warmup", type=int, default=d.lr_warmup_steps)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    g.add_argument("--window-start", type=int, default=d.window_start)
    g.add_argument("--window-end", type=_window, default=d.window_end, help="'full' or k")
    g.add_argument("--window-steps", type=int, default=d.window_steps, help="length of the widening ramp")
    g.add_argument("--window-warmup", type=int, default=d.window_warmup)
    g.add_argument("--window-shape", choices=("linear", "cosine"), default=d.window_shape)
    g.add_argument("--attention-impl", default=d.attention_impl, choices=("auto", "tiled", "gather", "flex"))
    g.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=d.prediction_type)
    g.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=d.mixed_precision)
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--num-workers", type=int, default=d.num_workers)
    g.add_argument("--log-every", type=int, default=d.log_every)
    g.add_argument("--resume", default="auto", help="'auto' (newest checkpoint in --output), 'no', or a "
                   "checkpoint folder")
    args = p.parse_args(argv)
    if not args.tiny and (args.checkpoint is None or args.motion_module is None or args.tokenizer is None):
        p.error("--checkpoint, --motion-module and --tokenizer are required (or --tiny)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from mvcustom_core.backbone.loading import Backbone, build_backbone, load_sd15_checkpoint
    from mvcustom_core.backbone.motion_module import load_motion_module
    from mvcustom_core.backbone.text import load_tokenizer
    from mvcustom_core.backbone.tiny import tiny_backbone
    from mvcustom_core.backbone.training import TrainConfig, train_motion_module
    from mvcustom_core.backbone.video_data import VideoClipDataset, scan_clips

    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, gradient_accumulation=args.gradient_accumulation,
        learning_rate=args.lr, lr_warmup_steps=args.lr_warmup,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, window_start=args.window_start,
        window_end=args.window_end, window_steps=args.window_steps, window_warmup=args.window_warmup,
        window_shape=args.window_shape, attention_impl=args.attention_impl, prediction_type=args.prediction_type,
        mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints, seed=args.seed,
        num_workers=args.num_workers, log_every=args.log_every)
    clips = scan_clips(args.data, videos="skip" if args.skip_videos else "error",
                       default_caption=args.default_caption)
    dataset = VideoClipDataset(clips, args.frames, (args.height, args.width), stride=args.stride,
                               caption_dropout=args.caption_dropout)
    if args.tiny:
        backbone = tiny_backbone(seed=args.seed)
    else:
        components = load_sd15_checkpoint(args.checkpoint, dtype=torch.float32)
        unet = build_backbone(components, load_motion_module(args.motion_module, dtype=torch.float32))
        backbone = Backbone(unet, components.vae, components.text_encoder, load_tokenizer(args.tokenizer))
    resume = {"auto": True, "no": False}.get(args.resume, args.resume)

    log_file = args.output / "train_log.jsonl"

    def report(p) -> None:
        if p.log:
            window = "full" if p.window is None else p.window
            print(f"step {p.step}/{p.total}  loss {p.loss:.5f}  window {window}  lr {p.learning_rate:.2e}  "
                  f"{p.seconds:.2f}s/step", flush=True)
            args.output.mkdir(parents=True, exist_ok=True)
            with open(log_file, "a", encoding="utf-8") as handle:  # a log, appended: not a checkpoint file
                handle.write(json.dumps({"step": p.step, "loss": p.loss, "window": p.window,
                                         "lr": p.learning_rate, "seconds": round(p.seconds, 4)}) + "\n")

    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise SystemExit(f"launched as {launched} processes but accelerate set up {accelerator.num_processes}: "
                         "each would train alone and overwrite the others' checkpoints (on CPU-only machines set "
                         "ACCELERATE_USE_CPU=1)")
    result = train_motion_module(backbone, dataset, args.output, config, resume=resume, accelerator=accelerator,
                                 progress=report if accelerator.is_main_process else None)
    if accelerator.is_main_process:
        print(json.dumps({"step": result.step, "stopped": result.stopped,
                          "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                          "motion_module": str(result.motion_module) if result.motion_module else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
