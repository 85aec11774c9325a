"""The pack's demo on built-in defaults: writes pictures you can look at, no weights needed.

Run ``python -m mvcustom_core.demo --out demo_out`` (or ``bash scripts/demo.sh``). Stages:

1. ``trajectories/``: camera-path previews of several presets (frustums coloured by frame order).
2. ``synthetic/``: the ground-truth scene seen along an orbit: RGB, depth, subject mask.
3. ``dfr/``: depth-aware feature rendering on that scene: the anchor view's colours carried through
   the anchor's depth mesh into every other camera, beside the true views and the coverage masks.

Each stage writes its PNGs atomically and prints what it wrote.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mvcustom_core.files import colorize, image_grid, save_png
from mvcustom_core.ops import apply_plan, build_feature_mesh, plan_mesh_render
from mvcustom_core.synthetic import SyntheticScene
from mvcustom_core.trajectories import make_trajectory, render_trajectory_preview

__all__ = ["demo_trajectories", "demo_synthetic", "demo_dfr", "main"]

PREVIEW_PRESETS = {
    "orbit": dict(radius=2.5, elevation_deg=20.0),
    "spiral": dict(radius_start=2.8, radius_end=2.0),
    "lemniscate": dict(radius=2.5),
    "dolly_zoom_in": dict(radius=2.5),
    "truck": dict(radius=2.5),
    "cameractrl_acw": dict(),
}


def demo_trajectories(out: Path, frames: int = 16) -> list[Path]:
    """One preview per preset in :data:`PREVIEW_PRESETS`."""
    written = []
    for name, params in PREVIEW_PRESETS.items():
        cams = make_trajectory(name, frames, **params)
        picture = render_trajectory_preview(cams, size=(480, 480), title=f"{name} ({frames} frames)")
        written.append(save_png(picture, out / "trajectories" / f"{name}.png"))
    return written


def _orbit(frames: int, size: int) -> "CameraSet":  # noqa: F821
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
              ("depth-aware feature rendering", lambda: demo_dfr(args.out, args.frames, args.size, args.seed))]
    for title, stage in stages:
        start = time.perf_counter()
        paths = stage()
        print(f"{title}: {len(paths)} picture(s) in {time.perf_counter() - start:.1f} s")
        for p in paths:
            print(f"  {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
