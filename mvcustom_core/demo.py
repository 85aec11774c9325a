"""The pack's demo on built-in defaults: writes pictures you can look at, no weights needed.

Run ``python -m mvcustom_core.demo --out demo_out`` (or ``bash scripts/demo.sh``). Stages:

1. ``trajectories/``: camera-path previews of several presets (frustums coloured by frame order).
2. ``synthetic/``: the ground-truth scene seen along an orbit: RGB, depth, subject mask.
3. ``dfr/``: depth-aware feature rendering on that scene: the anchor view's colours carried through
   the anchor's depth mesh into every other camera, beside the true views and the coverage masks.
4. ``pipeline/``: the whole MVCustom job on the built-in tiny random backbone: customize on synthetic
   photos of the subject (FeatureNeRF pose blocks + subject token), then sample an orbit with DFR and
   CLC, decode, and export frames + ``transforms.json`` + the anchor point cloud. The weights are random,
   so the frames are noise-like pictures: the stage shows the wiring, the previews show the geometry.

Each stage writes its PNGs atomically and prints what it wrote.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mvcustom_core.cameras import CameraSet
from mvcustom_core.files import colorize, image_grid, save_png
from mvcustom_core.ops import apply_plan, build_feature_mesh, plan_mesh_render
from mvcustom_core.synthetic import SyntheticScene
from mvcustom_core.trajectories import make_trajectory, render_trajectory_preview

__all__ = ["demo_trajectories", "demo_synthetic", "demo_dfr", "demo_pipeline", "main"]

PREVIEW_PRESETS = {
    "orbit": dict(radius=2.5, elevation_deg=20.0),
    "spiral": dict(radius_start=2.8, radius_end=2.0),
    "lemniscate": dict(radius=2.5),
    "dolly_zoom_in": dict(radius=2.5),
    "truck": dict(radius=2.5),
    "cameractrl_roll_anticlockwise": dict(),
}


def demo_trajectories(out: Path, frames: int = 16) -> list[Path]:
    """One preview per preset in :data:`PREVIEW_PRESETS`."""
    written = []
    for name, params in PREVIEW_PRESETS.items():
        cams = make_trajectory(name, frames, **params)
        picture = render_trajectory_preview(cams, size=(480, 480), title=f"{name} ({frames} frames)")
        written.append(save_png(picture, out / "trajectories" / f"{name}.png"))
    return written


def _orbit(frames: int, size: int) -> CameraSet:
    return make_trajectory("orbit", frames, image_size=(size, size), radius=2.6, elevation_deg=20.0,
                           span_deg=120.0, start_azimuth_deg=-60.0, loop=False, dtype=torch.float32)


def demo_synthetic(out: Path, frames: int = 8, size: int = 128, seed: int = 0) -> list[Path]:
    """RGB / depth / mask grids of the synthetic scene along a 120° orbit."""
    scene = SyntheticScene(seed=seed, max_frequency=6.0)
    r = scene.render(_orbit(frames, size), supersample=2)
    cols = min(frames, 4)
    return [
        save_png(image_grid(r.rgb, cols), out / "synthetic" / "rgb.png"),
        save_png(image_grid(colorize(r.depth, r.valid), cols), out / "synthetic" / "depth.png"),
        save_png(image_grid(r.mask.expand(-1, 3, -1, -1), cols), out / "synthetic" / "mask.png"),
    ]


def demo_dfr(out: Path, frames: int = 8, size: int = 128, seed: int = 0) -> list[Path]:
    """Anchor colours rendered through the anchor depth mesh into the other views (method.md §7.2)."""
    scene = SyntheticScene(seed=seed, max_frequency=6.0)
    cams = _orbit(frames, size)
    truth = scene.render(cams, supersample=2)
    anchor = frames // 2
    depth = truth.depth[anchor, 0]
    mesh = build_feature_mesh(depth.where(truth.valid[anchor, 0], torch.zeros_like(depth)), cams[anchor],
                              valid=truth.valid[anchor, 0])
    plan = plan_mesh_render(mesh, cams)
    rendered, coverage = apply_plan(plan, mesh.vertex_features(truth.rgb[anchor]))
    composite = coverage * rendered + (1 - coverage) * truth.rgb * 0.25  # uncovered: dimmed truth
    cols = min(frames, 4)
    return [
        save_png(image_grid(truth.rgb, cols), out / "dfr" / "true_views.png"),
        save_png(image_grid(composite, cols), out / "dfr" / "rendered_from_anchor.png"),
        save_png(image_grid(coverage.expand(-1, 3, -1, -1), cols), out / "dfr" / "coverage.png"),
    ]


def demo_pipeline(out: Path, frames: int = 8, size: int = 64, seed: int = 0, train_steps: int = 12,
                  sample_steps: int = 10) -> list[Path]:
    """Customize + sample + export on the tiny random backbone (the real job's code path, tiny sizes)."""
    from mvcustom_core.backbone.sampler import decode_latents
    from mvcustom_core.backbone.text import encode_prompt
    from mvcustom_core.backbone.tiny import tiny_backbone
    from mvcustom_core.customization import (TrainingConfig, apply_customization, prepare_reference_set,
                                             save_customization, train_customization)
    from mvcustom_core.customization.token import add_subject_token, remove_subject_token
    from mvcustom_core.inference import CLCPlan, DFRPlan, mvcustom_sample, prepare_run
    from mvcustom_core.inference.dfr import dfr_previews
    from mvcustom_core.inference.export import export_views
    from mvcustom_core.synthetic import turntable_cameras

    backbone = tiny_backbone(seed)
    scene = SyntheticScene(seed=seed, max_frequency=6.0)
    ref_cams = turntable_cameras(8, elevation_deg=20.0, radius=2.5, image_size=(size, size), fov_y_deg=40.0)
    photos = scene.render(ref_cams, supersample=2)
    reference = prepare_reference_set(photos.rgb, photos.mask, ref_cams, center=torch.zeros(3))
    config = TrainingConfig(class_word="toy", steps=train_steps, frames=2, references=2, bank_views=4,
                            lr=1e-3, featurenerf={"num_samples": 8}, seed=seed)
    trained = train_customization(backbone, reference, config).customization
    written = [save_customization(out / "pipeline" / "toy.safetensors", trained)]

    # The target path lives in the customization's normalized scene frame (cameras within radius 1).
    cams = make_trajectory("orbit", frames, image_size=(size, size), radius=1.0, elevation_deg=20.0,
                           span_deg=90.0, start_azimuth_deg=-45.0, loop=False, dtype=torch.float32)
    ctx = apply_customization(backbone.unet, trained)
    add_subject_token(backbone.text_encoder, backbone.tokenizer, trained.token, embedding=trained.token_embedding)
    try:
        cond = encode_prompt(backbone.text_encoder, backbone.tokenizer, [f"{trained.prompt()} on a table"])
        uncond = encode_prompt(backbone.text_encoder, backbone.tokenizer, [""])
    finally:
        remove_subject_token(backbone.text_encoder)
    dfr, clc = DFRPlan(), CLCPlan()  # paper fractions of the schedule; depth: the customized field
    with torch.no_grad():
        run = prepare_run(backbone.unet, cams, pose_context=ctx, dfr=dfr, clc=clc, steps=sample_steps)
        completion, rendered = dfr_previews(run.geometry)
        latents = mvcustom_sample(backbone.unet, cond, uncond, cams, pose_context=ctx, dfr=dfr, clc=clc,
                                  seed=seed, steps=sample_steps, cfg=5.0, run=run)
        views = decode_latents(backbone.vae, latents)
    cols = min(frames, 4)
    written += [
        save_png(image_grid(views, cols), out / "pipeline" / "frames.png"),
        save_png(image_grid(completion.expand(-1, 3, -1, -1), cols), out / "pipeline" / "completion_masks.png"),
        save_png(image_grid(rendered, cols), out / "pipeline" / "anchor_depth_rendered.png"),
    ]
    export = export_views(out / "pipeline" / "export", views, cams, anchor=run.geometry.anchor,
                          anchor_depth=run.geometry.depth)
    return written + [export.transforms]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvcustom_core.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for the pictures")
    parser.add_argument("--frames", type=int, default=8, help="views of the synthetic scene (>= 2)")
    parser.add_argument("--size", type=int, default=128, help="image size of the synthetic views")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.frames < 2 or args.size < 16:
        parser.error(f"--frames must be >= 2 and --size >= 16, got {args.frames} and {args.size}")
    stages = [("trajectory previews", lambda: demo_trajectories(args.out)),
              ("synthetic scene", lambda: demo_synthetic(args.out, args.frames, args.size, args.seed)),
              ("depth-aware feature rendering", lambda: demo_dfr(args.out, args.frames, args.size, args.seed)),
              ("MVCustom pipeline on the tiny backbone", lambda: demo_pipeline(args.out, args.frames, seed=args.seed))]
    for title, stage in stages:
        start = time.perf_counter()
        paths = stage()
        print(f"{title}: {len(paths)} file(s) in {time.perf_counter() - start:.1f} s")
        for p in paths:
            print(f"  {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
