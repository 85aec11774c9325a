"""Render docs/img/trajectories.png: preview pictures of several camera presets in one grid.

Usage: ``python scripts/make_trajectory_figure.py [--out docs/img/trajectories.png] [--size 320]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.image
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from mvcustom_core.files import atomic_write  # noqa: E402
from mvcustom_core.trajectories import make_trajectory, render_trajectory_preview  # noqa: E402

# (title, preset, frames, parameters)
PANELS = [
    ("orbit, 360°, elevation 20°", "orbit", 16, {"elevation_deg": 20.0}),
    ("spiral, 2 turns", "spiral", 32, {}),
    ("lemniscate", "lemniscate", 24, {"amplitude": 0.4}),
    ("dolly_zoom_in ×2", "dolly_zoom_in", 8, {"factor": 2.0}),
    ("pan 40° (turns right)", "pan", 8, {"angle_deg": 40.0}),
    ("roll 90° (clockwise)", "roll", 8, {"angle_deg": 90.0}),
    ("cameractrl_pan_left", "cameractrl_pan_left", 16, {}),
    ("cameractrl_zoom_in", "cameractrl_zoom_in", 16, {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "img" / "trajectories.png")
    parser.add_argument("--size", type=int, default=320, help="pixels per panel (square)")
    parser.add_argument("--columns", type=int, default=4)
    args = parser.parse_args()

    panels = []
    for i, (title, name, frames, params) in enumerate(PANELS):
        print(f"[{i + 1}/{len(PANELS)}] {name}", flush=True)
        cams = make_trajectory(name, frames, image_size=(288, 384), **params)
        panels.append(render_trajectory_preview(cams, size=(args.size, args.size), title=title))
    while len(panels) % args.columns:
        panels.append(torch.ones_like(panels[0]))
    rows = [torch.cat(panels[r : r + args.columns], dim=1) for r in range(0, len(panels), args.columns)]
    grid = torch.cat(rows, dim=0).clamp(0, 1).numpy()

    atomic_write(args.out, lambda tmp: matplotlib.image.imsave(tmp, grid))
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})")


if __name__ == "__main__":
    main()
