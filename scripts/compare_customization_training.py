#!/usr/bin/env python
"""Customization training details compared on the synthetic subject (tiny random backbone, CPU).

Trains one customization per variant on 12 photos of a 16-view turntable of the synthetic subject and scores it on
the 4 views between them: the field's opacity IoU against the true mask (every pose block, at its grid) and the
denoising error inside the mask with the subject prompt (t = 250, 500, 750; fixed noise). docs/customization.md
("Against CustomDiffusion360's released code") reports the numbers.

    python scripts/compare_customization_training.py --steps 150 --seeds 0 1
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file from a checkout
    sys.path.insert(0, str(REPO_ROOT))

VARIANTS = {
    "defaults (CustomDiffusion360's details)": {},
    "token at 0.05 x lr": {"token_lr": 5e-5},
    "no reference dropout": {"reference_dropout": 0.0},
    "reference dropout 0.25": {"reference_dropout": 0.25},
    "reference noise over the whole schedule": {"reference_max_timestep": 1000},
}


def _data(size: int):
    import torch

    from mvcustom_core.customization.reference_poses import ReferenceSet, prepare_reference_set
    from mvcustom_core.synthetic import SyntheticScene, turntable_cameras

    cams = turntable_cameras(16, elevation_deg=20.0, radius=2.5, image_size=(size, size), fov_y_deg=45.0)
    render = SyntheticScene(seed=1, ground=False).render(cams)
    full = prepare_reference_set(render.rgb, render.mask, cams, center=torch.zeros(3))
    held = torch.arange(1, 16, 4)
    train = torch.tensor([i for i in range(16) if i % 4 != 1])
    subset = lambda idx: ReferenceSet(full.images[idx], full.masks[idx], full.cameras[idx], full.new_from_old)
    return subset(train), subset(held)


def evaluate(backbone, customization, held) -> tuple[float, float]:
    """(held-out opacity IoU, held-out masked ε-MSE) of a customization."""
    import torch
    from diffusers import DDPMScheduler

    from mvcustom_core.backbone.sampler import ANIMATEDIFF_SCHEDULER_CONFIG
    from mvcustom_core.backbone.text import encode_prompt
    from mvcustom_core.customization.file_format import apply_customization
    from mvcustom_core.customization.token import add_subject_token
    from mvcustom_core.customization.training import encode_references, unet_epsilon

    unet, text_encoder = copy.deepcopy(backbone.unet), copy.deepcopy(backbone.text_encoder)
    tokenizer = copy.deepcopy(backbone.tokenizer)
    ctx = apply_customization(unet, customization)
    add_subject_token(text_encoder, tokenizer, customization.token, embedding=customization.token_embedding)
    scheduler = DDPMScheduler(**{k: ANIMATEDIFF_SCHEDULER_CONFIG[k]
                                 for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")})
    generator = torch.Generator().manual_seed(123)
    ious, errors = [], []
    with torch.no_grad():
        text = encode_prompt(text_encoder, tokenizer, [customization.prompt()])
        latents = encode_references(backbone.vae, held.images)
        for i in range(len(held)):
            ctx.mode, ctx.target_cams, ctx.jitter, ctx.outputs = "render", held.cameras[i:i + 1], False, {}
            for t in (250, 500, 750):
                noise = torch.randn(latents[i:i + 1].shape, generator=generator)
                eps = unet_epsilon(unet, scheduler.add_noise(latents[i:i + 1], noise, torch.tensor([t])), t, text)
                inside = torch.nn.functional.interpolate(held.masks[i:i + 1], size=eps.shape[-2:], mode="area") > 0.5
                errors.append(float(((eps - noise) ** 2).mean(1, keepdim=True)[inside].mean()))
            for outputs in ctx.outputs.values():
                opacity = outputs[0].opacity
                mask = torch.nn.functional.interpolate(held.masks[i:i + 1], size=opacity.shape[-2:], mode="area") > 0.5
                seen = opacity > 0.5
                ious.append(float((seen & mask).sum() / (seen | mask).sum().clamp(min=1)))
    return sum(ious) / len(ious), sum(errors) / len(errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    import torch

    from mvcustom_core.backbone.tiny import tiny_backbone
    from mvcustom_core.customization.training import TrainingConfig, train_customization

    torch.set_num_threads(1)
    train, held = _data(args.size)
    base = dict(class_word="toy", steps=args.steps, frames=2, references=4, bank_views=8, lr=1e-3, token_lr=1e-3,
                featurenerf={"num_samples": 8}, checkpoint_every=10**6)
    for seed in args.seeds:
        backbone = tiny_backbone(seed=0)
        for name in args.variants:
            started = time.perf_counter()
            config = TrainingConfig(**{**base, **VARIANTS[name], "seed": seed})
            result = train_customization(backbone, train, config)
            iou, error = evaluate(backbone, result.customization, held)
            print(json.dumps({"seed": seed, "variant": name, "steps": args.steps, "held_out_iou": round(iou, 4),
                              "held_out_eps_mse": round(error, 5),
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
