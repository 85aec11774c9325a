"""Draw the pack's icon, docs/img/icon.svg: an orbit of camera frustums around a subject, seen from above.

The frustums are the pack's own: ``make_trajectory("orbit", ...)`` cameras, their image corners at a fixed
depth (``frustum_corners``), projected through a viewer camera (``look_at``) and drawn far to near, coloured
by frame order as in the trajectory preview. 400 x 400, the registry's largest icon size (``[tool.comfy]
Icon``).

Usage: ``python scripts/make_icon.py [--out docs/img/icon.svg]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from mvcustom_core.cameras import CameraSet, look_at  # noqa: E402
from mvcustom_core.files import atomic_write_text  # noqa: E402
from mvcustom_core.trajectories import make_trajectory  # noqa: E402
from mvcustom_core.trajectories.preview import frustum_corners  # noqa: E402

SIZE = 400
FRAMES = 8
FRUSTUM_DEPTH = 0.4  # world units from each camera centre to its drawn image plane
SUBJECT_RADIUS = 0.28


def _viewer() -> CameraSet:
    """The camera the icon is seen from: above and behind the orbit, looking at the subject."""
    eye = torch.tensor([[0.0, -2.9, -3.4]], dtype=torch.float64)  # world up is -y
    c2w = look_at(eye, torch.zeros(3, dtype=torch.float64))
    return CameraSet.from_fov(c2w, 38.0, (SIZE, SIZE))


def _project(viewer: CameraSet, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, 3]`` world points -> (``[N, 2]`` pixels, ``[N]`` depth) in the viewer."""
    cam = (viewer.w2c[0, :3, :3] @ points.T).T + viewer.w2c[0, :3, 3]
    uv = (viewer.K[0] @ cam.T).T
    return uv[:, :2] / uv[:, 2:], cam[:, 2]


def _colour(i: int) -> str:
    r, g, b, _ = matplotlib.colormaps["viridis"](0.15 + 0.85 * i / (FRAMES - 1))
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _points(uv: torch.Tensor) -> str:
    return " ".join(f"{float(u):.1f},{float(v):.1f}" for u, v in uv)


def icon_svg() -> str:
    """The icon as SVG text."""
    cams = make_trajectory("orbit", FRAMES, radius=1.35, elevation_deg=8.0, image_size=(3, 4), fov_y_deg=55.0)
    corners = frustum_corners(cams, FRUSTUM_DEPTH)  # [F, 4, 3]
    viewer = _viewer()
    subject_uv, subject_depth = _project(viewer, torch.zeros(1, 3, dtype=torch.float64))
    # Subject's apparent radius: a pinhole scales a length L at depth z to f·L/z pixels.
    subject_px = float(viewer.K[0, 1, 1]) * SUBJECT_RADIUS / float(subject_depth[0])

    shapes = []
    for i in range(FRAMES):
        apex_uv, apex_depth = _project(viewer, cams.centers[i:i + 1])
        plane_uv, _ = _project(viewer, corners[i])
        colour = _colour(i)
        sides = "".join(f'<line x1="{float(apex_uv[0, 0]):.1f}" y1="{float(apex_uv[0, 1]):.1f}" '
                        f'x2="{float(u):.1f}" y2="{float(v):.1f}"/>' for u, v in plane_uv)
        shape = (f'<g stroke="{colour}" stroke-width="4.5" stroke-linejoin="round" stroke-linecap="round">'
                 f'<polygon points="{_points(plane_uv)}" fill="{colour}" fill-opacity="0.35"/>{sides}'
                 f'<line x1="{float(plane_uv[0, 0]):.1f}" y1="{float(plane_uv[0, 1]):.1f}" '
                 f'x2="{float(plane_uv[1, 0]):.1f}" y2="{float(plane_uv[1, 1]):.1f}" stroke-width="8"/></g>')
        shapes.append((float(apex_depth[0]), shape))
    su, sv = (float(x) for x in subject_uv[0])
    subject = (f'<circle cx="{su:.1f}" cy="{sv:.1f}" r="{subject_px:.1f}" fill="url(#subject)"/>')
    shapes.append((float(subject_depth[0]), subject))
    body = "\n  ".join(shape for _, shape in sorted(shapes, key=lambda s: -s[0]))  # far first
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" viewBox="0 0 {SIZE} {SIZE}">\n'
            f'  <title>MVCustom: cameras around a subject</title>\n'
            f'  <defs><radialGradient id="subject" cx="0.35" cy="0.3" r="0.75">'
            f'<stop offset="0" stop-color="#ffe2b8"/><stop offset="1" stop-color="#d9822b"/></radialGradient></defs>\n'
            f'  <rect width="{SIZE}" height="{SIZE}" rx="64" fill="#1d1f27"/>\n'
            f'  {body}\n</svg>\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "img" / "icon.svg")
    args = parser.parse_args()
    print(atomic_write_text(args.out, icon_svg()))


if __name__ == "__main__":
    main()
