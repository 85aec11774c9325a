"""The pack's demo on built-in defaults: pictures you can look at, nothing downloaded (the backbone ships).

Run ``python -m mvcustom_core.demo --out demo_out`` (or ``bash scripts/demo.sh``). Stages:

1. ``trajectories/``: camera-path previews of several presets (frustums coloured by frame order).
2. ``synthetic/``: the ground-truth scene seen along an orbit: RGB, depth, subject mask.
3. ``dfr/``: depth-aware feature rendering on that scene: the anchor view's colours carried through
   the anchor's depth mesh into every other camera, beside the true views and the coverage masks.
4. ``pipeline/``: the whole MVCustom job on the built-in trained backbone (``docs/tiny_world.md``):
   customize on 8 photos of a held-out synthetic world (FeatureNeRF pose blocks, started from the backbone's
   pose prior, + subject token), sample
   an orbit with DFR and CLC, decode, export frames + ``transforms.json`` + the anchor point cloud, and
   score the views against the world's exact ground truth (``scores.json``).

Each stage writes its PNGs atomically and prints what it wrote.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import torch

from mvcustom_core.cameras import CameraSet
from mvcustom_core.eval.world_ablation import DEFAULT_CUSTOMIZE_STEPS
from mvcustom_core.files import colorize, image_grid, save_png
from mvcustom_core.ops import apply_plan, build_feature_mesh, plan_mesh_render
from mvcustom_core.synthetic import SceneRender, SyntheticScene
from mvcustom_core.synthetic.world import HELD_OUT_SEEDS
from mvcustom_core.trajectories import make_trajectory, render_trajectory_preview

__all__ = ["demo_trajectories", "demo_synthetic", "demo_dfr", "demo_pipeline", "step_printer", "main"]

DEMO_WORLD = 0
DEMO_CUSTOMIZE_STEPS = DEFAULT_CUSTOMIZE_STEPS  # from the built-in backbone's pose prior
DEMO_SAMPLE_STEPS = 25
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


@functools.lru_cache(maxsize=1)
def _orbit_truth(frames: int, size: int, seed: int) -> tuple[CameraSet, SceneRender]:
    """The synthetic scene along the demo's orbit, rendered once for the synthetic and the DFR stage."""
    cams = _orbit(frames, size)
    return cams, SyntheticScene(seed=seed, max_frequency=6.0).render(cams, supersample=2)


def demo_synthetic(out: Path, frames: int = 8, size: int = 128, seed: int = 0) -> list[Path]:
    """RGB / depth / mask grids of the synthetic scene along a 120° orbit."""
    _, r = _orbit_truth(frames, size, seed)
    cols = min(frames, 4)
    return [
        save_png(image_grid(r.rgb, cols), out / "synthetic" / "rgb.png"),
        save_png(image_grid(colorize(r.depth, r.valid), cols), out / "synthetic" / "depth.png"),
        save_png(image_grid(r.mask.expand(-1, 3, -1, -1), cols), out / "synthetic" / "mask.png"),
    ]


def demo_dfr(out: Path, frames: int = 8, size: int = 128, seed: int = 0) -> list[Path]:
    """Anchor colours rendered through the anchor depth mesh into the other views (method.md §7.2)."""
    cams, truth = _orbit_truth(frames, size, seed)
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


def demo_pipeline(out: Path, world: int = DEMO_WORLD, customize_steps: int = DEMO_CUSTOMIZE_STEPS,
                  sample_steps: int = DEMO_SAMPLE_STEPS) -> list[Path]:
    """The whole MVCustom job on the built-in trained backbone, judged against the world's ground truth.

    Customize on 8 turntable photos of a held-out world, sample its orbit with DFR (anchor depth from a first
    pass, the built-in depth model scaled to the customized field) and CLC, decode, export, and score the views
    (``mvcustom_core.eval.world_ablation``; ``scores.json``).
    """
    import json

    from mvcustom_core.backbone.tiny_world import load_tiny_world, load_tiny_world_depth
    from mvcustom_core.customization import save_customization
    from mvcustom_core.eval.world_ablation import customize_case, generate, make_case, score_views
    from mvcustom_core.files import atomic_write_text
    from mvcustom_core.inference.dfr import AnchorGeometry, dfr_previews
    from mvcustom_core.inference.export import export_views

    folder = out / "pipeline"
    backbone, depth_model = load_tiny_world(), load_tiny_world_depth()
    case = make_case(world)
    customization = customize_case(backbone, case, steps=customize_steps,
                                   progress=step_printer("customization", every=max(1, customize_steps // 4)))
    first = generate(backbone, case, "customized", customization=customization, steps=sample_steps)
    final = generate(backbone, case, "dfr_clc", customization=customization, depth_model=depth_model,
                     first_pass=first.frames, steps=sample_steps)
    geometry = AnchorGeometry(case.anchor, case.targets, final.anchor_depth)
    completion, rendered = dfr_previews(geometry, final.frames[case.anchor])
    scores = {"prompt": case.prompt(), "mvcustom": score_views(final.frames, case, anchor_depth=final.anchor_depth),
              "customization_only": score_views(first.frames, case, anchor_depth=final.anchor_depth),
              "ground_truth": score_views(case.truth.rgb, case, anchor_depth=final.anchor_depth)}
    cols = case.targets.num_frames
    written = [save_customization(folder / f"{case.spec.category}.safetensors", customization),
               save_png(render_trajectory_preview(case.targets, size=(480, 480), look_at=(0.0, 0.0, 0.0),
                                                  title=f"target orbit ({cols} views, {case.span_deg:.0f} deg)"),
                        folder / "orbit.png"),
               save_png(image_grid(case.reference.images, cols), folder / "references.png"),
               save_png(image_grid(final.frames, cols), folder / "frames.png"),
               save_png(image_grid(first.frames, cols), folder / "first_pass.png"),
               save_png(image_grid(case.truth.rgb, cols), folder / "ground_truth.png"),
               save_png(image_grid(completion.expand(-1, 3, -1, -1), cols), folder / "completion_masks.png"),
               save_png(image_grid(rendered, cols), folder / "anchor_depth_rendered.png"),
               atomic_write_text(folder / "scores.json", json.dumps(scores, indent=1) + "\n")]
    export = export_views(folder / "export", final.frames, case.targets, anchor=case.anchor,
                          anchor_depth=final.anchor_depth)
    print(f"  {case.prompt()}; against the world's true views (MVCustom / customization only / the true views "
          "themselves):")
    for key, title, unit in _REPORTED:
        values = " / ".join(f"{scores[name][key]:.{2 if unit else 3}f}" for name in
                            ("mvcustom", "customization_only", "ground_truth"))
        print(f"    {title}: {values}{unit}")
    return written + [export.transforms]


def step_printer(title: str, every: int):
    """A training ``progress(done, total, losses)`` that prints every ``every`` steps and at the last, with the time
    since it was made."""
    start = time.perf_counter()

    def report(done: int, total: int, losses: dict) -> None:
        if done % every == 0 or done == total:
            print(f"  {title}: step {done}/{total}, loss {losses['total']:.4f}, {time.perf_counter() - start:.0f} s",
                  flush=True)

    return report


_REPORTED = (("background_psnr", "background PSNR", " dB"), ("background_ssim", "background SSIM", ""),
             ("subject_iou", "subject mask IoU", ""), ("azimuth_error_deg", "view azimuth error", " deg"),
             ("ground_reproj_psnr", "ground reprojection PSNR between views", " dB"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvcustom_core.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for the pictures")
    parser.add_argument("--frames", type=int, default=8, help="views of the synthetic scene (>= 2)")
    parser.add_argument("--size", type=int, default=128, help="image size of the synthetic views")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world", type=int, default=DEMO_WORLD, help="held-out world of the pipeline stage")
    parser.add_argument("--customize-steps", type=int, default=DEMO_CUSTOMIZE_STEPS,
                        help="training steps of the pipeline's customization")
    parser.add_argument("--sample-steps", type=int, default=DEMO_SAMPLE_STEPS, help="sampler steps of each pass")
    args = parser.parse_args(argv)
    if args.frames < 2 or args.size < 16:
        parser.error(f"--frames must be >= 2 and --size >= 16, got {args.frames} and {args.size}")
    if not 0 <= args.world < HELD_OUT_SEEDS:
        parser.error(f"--world must be a held-out world in [0, {HELD_OUT_SEEDS}), got {args.world}")
    if args.customize_steps < 1 or args.sample_steps < 1:
        parser.error(f"--customize-steps and --sample-steps must be >= 1, got {args.customize_steps} and "
                     f"{args.sample_steps}")
    stages = [("trajectory previews", lambda: demo_trajectories(args.out)),
              ("synthetic scene", lambda: demo_synthetic(args.out, args.frames, args.size, args.seed)),
              ("depth-aware feature rendering", lambda: demo_dfr(args.out, args.frames, args.size, args.seed)),
              ("MVCustom pipeline on the built-in backbone",
               lambda: demo_pipeline(args.out, args.world, args.customize_steps, args.sample_steps))]
    for title, stage in stages:
        start = time.perf_counter()
        paths = stage()
        print(f"{title}: {len(paths)} file(s) in {time.perf_counter() - start:.1f} s")
        for p in paths:
            print(f"  {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
