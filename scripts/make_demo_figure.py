#!/usr/bin/env python
"""Compose the README picture (docs/img/demo.png) from the demo's output.

    bash scripts/demo.sh && python scripts/make_demo_figure.py demo_out docs/img/demo.png

Rows: the customization's reference photos, the built-in backbone's orbit with customization + DFR + CLC,
the first pass (customization only), and the world's ground truth along the same cameras; beside them the
target orbit's cameras.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from mvcustom_core.files import atomic_write

    argv = sys.argv[1:] if argv is None else argv
    demo = Path(argv[0] if argv else "demo_out")
    target = Path(argv[1] if len(argv) > 1 else REPO_ROOT / "docs" / "img" / "demo.png")
    pipeline = demo / "pipeline"
    scores = json.loads((pipeline / "scores.json").read_text())
    mine, first, truth = scores["mvcustom"], scores["customization_only"], scores["ground_truth"]

    def numbers(s: dict) -> str:
        return (f"against the true views: background PSNR {s['background_psnr']:.1f} dB, "
                f"SSIM {s['background_ssim']:.2f}, subject IoU {s['subject_iou']:.2f}; "
                f"view azimuth error {s['azimuth_error_deg']:.0f}°")

    rows = [("reference photos (the customization's input)", "references.png"),
            (f"MVCustom, customization + DFR + CLC  ({numbers(mine)})", "frames.png"),
            (f"customization only  ({numbers(first)})", "first_pass.png"),
            ("the world's true views of the same cameras", "ground_truth.png")]
    images = [np.asarray(Image.open(pipeline / name).convert("RGB")) for _, name in rows]
    path = np.asarray(Image.open(pipeline / "orbit.png").convert("RGB"))

    fig = plt.figure(figsize=(15, 6.4), dpi=100)
    grid = fig.add_gridspec(len(rows), 2, width_ratios=[1, 3.2], wspace=0.02, hspace=0.25)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(path)
    ax.axis("off")
    for i, ((title, _), image) in enumerate(zip(rows, images)):
        ax = fig.add_subplot(grid[i, 1])
        ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=10, loc="left")
        ax.axis("off")
    fig.suptitle(f"built-in backbone, held-out world: \"{scores['prompt']}\" (64×64 views)", fontsize=11)
    atomic_write(target, lambda tmp: fig.savefig(tmp, bbox_inches="tight", facecolor="white"))
    print(target, f"(true views: IoU {truth['subject_iou']:.2f}, azimuth error {truth['azimuth_error_deg']:.1f}°)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
