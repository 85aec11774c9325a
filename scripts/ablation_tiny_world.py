#!/usr/bin/env python
"""The paper's inference ablation (Table A3) in miniature, on held-out synthetic worlds (docs/ablation.md).

    python scripts/ablation_tiny_world.py --out runs/ablation --worlds 20

For each held-out world (seeds 0, 1, ... below ``HELD_OUT_SEEDS``): customize the built-in backbone on 8
turntable photos (from its pose prior, or with ``--identity-start`` from the paper's identity initialization),
generate the world's target orbit as (a) backbone alone, (b) + customization, (c) + DFR, (d) + DFR + CLC, and
score every set against the world's exact ground truth (:mod:`mvcustom_core.eval.world_ablation`). Writes

* ``<out>/<config>/world_XXX/``: frame PNGs, ``transforms.json``, the true ``depth.safetensors``,
  ``prompt.txt`` and ``references/`` (the layout of ``python -m mvcustom_core.eval``);
* ``<out>/scores.json`` (every score of every set; a world already in it is not run again, so an
  interrupted run resumes), ``<out>/table.md`` (mean ± std over worlds, and the paired differences);
* ``<out>/examples.png``: the first world's four sets above its ground truth.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file from a checkout
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from mvcustom_core.eval.world_ablation import CUSTOMIZE_LR, DEFAULT_CUSTOMIZE_STEPS  # noqa: E402

KEYS = ("ground_reproj_psnr", "anchor_reproj_psnr", "azimuth_error_deg", "pose_accuracy", "neighbour_reproj_psnr",
        "background_psnr", "background_ssim", "subject_iou", "subject_color_err")
HEADERS = {"ground_reproj_psnr": "Ground reproj. PSNR, true depth ↑", "anchor_reproj_psnr": "Reproj. PSNR, DFR depth ↑",
           "azimuth_error_deg": "Azimuth err. (°) ↓", "pose_accuracy": "Pose acc. (< 5°) ↑",
           "neighbour_reproj_psnr": "Neighbour reproj. PSNR ↑", "background_psnr": "Background PSNR vs truth ↑",
           "background_ssim": "Background SSIM vs truth ↑", "subject_iou": "Subject IoU ↑",
           "subject_color_err": "Subject colour err. ↓"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--worlds", type=int, default=20, help="held-out worlds 0 .. N-1")
    p.add_argument("--first-world", type=int, default=0)
    p.add_argument("--customize-steps", type=int, default=DEFAULT_CUSTOMIZE_STEPS)
    p.add_argument("--identity-start", action="store_true",
                   help="customize from the identity initialization (the paper's start) instead of the built-in "
                        "backbone's pose prior (then --customize-steps 150 as in docs/ablation.md)")
    p.add_argument("--customize-lr", type=float, default=CUSTOMIZE_LR, help="learning rate of the customization")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0, help="sampling and customization seed")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def _write_set(folder: Path, frames, case, prompt: str) -> None:
    from safetensors.torch import save_file

    from mvcustom_core.cameras.formats import save_camera_file
    from mvcustom_core.files import atomic_write, atomic_write_text, save_png

    for i, frame in enumerate(frames):
        save_png(frame, folder / f"frame_{i:03d}.png")
    save_camera_file(case.targets, folder / "transforms.json", "transforms_json")
    depth = case.truth.depth[:, 0].contiguous()
    atomic_write(folder / "depth.safetensors", lambda tmp: save_file({"depth": depth}, str(tmp)))
    atomic_write_text(folder / "prompt.txt", prompt + "\n")
    for i, image in enumerate(case.reference.images):
        save_png(image, folder / "references" / f"ref_{i:03d}.png")


def _stats(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan, 0
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)), len(values)


def format_table(scores: dict[str, dict]) -> str:
    """Markdown, one row per score: mean (± population std) per configuration, then paired differences."""
    from mvcustom_core.eval.world_ablation import CONFIG_TITLES, CONFIGS

    worlds = sorted(scores, key=int)
    columns = [("ground truth", "truth")] + [(CONFIG_TITLES[c], c) for c in CONFIGS]
    lines = [f"{len(worlds)} worlds; mean (± standard deviation over worlds):", "",
             "| Score | " + " | ".join(title for title, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for k in KEYS:
        cells = []
        for _, column in columns:
            mean, std, n = _stats([scores[w][column].get(k, math.nan) for w in worlds])
            fine = k in ("pose_accuracy", "subject_iou", "background_ssim")
            cells.append("–" if n == 0 else f"{mean:.3f} (±{std:.3f})" if fine else f"{mean:.2f} (±{std:.2f})")
        lines.append(f"| {HEADERS[k]} | " + " | ".join(cells) + " |")
    changes = (("backbone", "customized"), ("customized", "dfr"), ("dfr", "dfr_clc"), ("customized", "dfr_clc"))
    lines += ["", "Paired differences over the same worlds, mean (± standard error of the mean), and in how many "
              "worlds the change is an improvement:", "",
              "| Score | " + " | ".join(f"{CONFIG_TITLES[a]} → {CONFIG_TITLES[b]}" for a, b in changes) + " |",
              "|---|" + "---|" * len(changes)]
    lower_better = {"azimuth_error_deg", "subject_color_err"}
    for k in KEYS:
        cells = []
        for a, b in changes:
            diffs = [scores[w][b].get(k, math.nan) - scores[w][a].get(k, math.nan) for w in worlds]
            mean, std, n = _stats(diffs)
            if n == 0:
                cells.append("–")
                continue
            better = sum(1 for d in diffs if math.isfinite(d) and (d < 0 if k in lower_better else d > 0))
            cells.append(f"{mean:+.3f} (±{std / math.sqrt(max(1, n - 1)):.3f}), {better}/{n}")
        lines.append(f"| {HEADERS[k]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    from mvcustom_core.backbone.tiny_world import load_tiny_world, load_tiny_world_depth
    from mvcustom_core.eval.world_ablation import CONFIGS, run_case
    from mvcustom_core.files import atomic_write_text, image_grid, save_png

    backbone, depth_model = load_tiny_world(), load_tiny_world_depth()
    path = args.out / "scores.json"
    scores = json.loads(path.read_text()) if path.is_file() else {}
    for world in range(args.first_world, args.first_world + args.worlds):
        if str(world) in scores:
            continue
        began = time.perf_counter()
        result = run_case(backbone, depth_model, world, customize_steps=args.customize_steps, steps=args.steps,
                          sample_seed=args.seed, pose_prior=None if args.identity_start else "built-in",
                          customize_lr=args.customize_lr,
                          progress=lambda m: print(m, flush=True))
        case = result["case"]
        for config, generated in result["generated"].items():
            _write_set(args.out / config / f"world_{world:03d}", generated.frames, case, case.prompt())
        scores[str(world)] = {**result["scores"], "truth": result["truth_scores"],
                              "prompt": case.prompt(), "span_deg": case.span_deg}
        atomic_write_text(path, json.dumps(scores, indent=1) + "\n")
        if world == args.first_world:
            grid = torch.cat([result["generated"][c].frames for c in CONFIGS] + [case.truth.rgb])
            save_png(image_grid(grid, case.targets.num_frames), args.out / "examples.png")
        summary = {c: round(result["scores"][c]["azimuth_error_deg"], 1) for c in CONFIGS}
        print(f"world {world}: {time.perf_counter() - began:.0f} s, azimuth error {summary}", flush=True)
    atomic_write_text(args.out / "table.md", format_table(scores))
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
