"""Render docs/img/synthetic.png: the default synthetic scene from turntable cameras (RGB, depth, mask).

Usage: ``python scripts/make_synthetic_figure.py [--out docs/img/synthetic.png] [--views 6] [--size 128]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from mvcustom_core.files import atomic_write  # noqa: E402
from mvcustom_core.synthetic import SyntheticScene, turntable_cameras  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "img" / "synthetic.png")
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    scene = SyntheticScene(seed=args.seed, subject="default", max_frequency=8.0)
    cams = turntable_cameras(args.views, elevation_deg=12.0, radius=3.0, image_size=(args.size, args.size),
                             fov_y_deg=45.0, target=scene.subject_center)
    out = scene.render(cams, supersample=3)

    depth = out.depth[:, 0]
    finite = torch.isfinite(depth)
    lo, hi = float(depth[finite].min()), 2.0 * 3.0  # the far ground saturates; the subject stays readable
    fig, axes = plt.subplots(3, args.views, figsize=(1.8 * args.views, 5.8))
    for f in range(args.views):
        axes[0, f].imshow(out.rgb[f].permute(1, 2, 0).clamp(0, 1).numpy())
        shown = axes[1, f].imshow(torch.where(finite[f], depth[f], torch.nan).numpy(), cmap="viridis",
                                  vmin=lo, vmax=hi)
        axes[2, f].imshow(out.mask[f, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0, f].set_title(f"azimuth {360 * f / args.views:.0f}°", fontsize=9)
    for row, label in enumerate(["RGB", "depth (z)", "subject mask"]):
        axes[row, 0].set_ylabel(label)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=axes[1].tolist(), fraction=0.015, pad=0.01, label="z (clipped at 6; sky: inf, blank)")
    fig.suptitle(f"SyntheticScene(seed={args.seed}, subject='default', max_frequency=8), elevation 12°, "
                 f"{args.size}² px, 3×3 supersampling", fontsize=10)

    atomic_write(args.out, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
