"""A picture of a camera path: frustums in 3D, coloured by frame order, drawn with matplotlib.

Drawn off-screen with the Agg canvas on a :class:`matplotlib.figure.Figure` built directly (no
``pyplot``), so nothing leaks into global matplotlib state and it runs headless.

Display convention: the world is the pack's OpenCV-style world (up is ``-y``). The plot puts world
``x`` and ``z`` on the horizontal axes and world ``y`` on the vertical axis **inverted** (``-y`` up),
so a camera above the subject appears above it. (x, z, -y) is a rotation of (x, y, z), so the picture
is not mirrored. Each frustum is a pyramid from the camera centre to the image corners at a fixed
depth; its top edge (image row 0) is drawn thicker, so roll is visible.
"""

from __future__ import annotations

import math
from typing import Callable

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the "3d" projection)
from torch import Tensor

from mvcustom_core.cameras.camera_set import CameraSet
from mvcustom_core.trajectories.presets import TrajectoryError

__all__ = ["render_trajectory_preview", "estimate_look_at", "frustum_corners"]

_DPI = 100


def render_trajectory_preview(
    cams: CameraSet,
    *,
    size: tuple[int, int] = (512, 512),
    look_at: Tensor | tuple[float, float, float] | None = None,
    title: str | None = None,
    frustum_depth: float | None = None,
    colormap: str = "viridis",
    colorbar: bool = True,
    elev_deg: float = 25.0,
    azim_deg: float = -60.0,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Draw the cameras of ``cams`` as frustums coloured by frame order.

    Args:
        cams: ``F >= 1`` cameras.
        size: ``(H, W)`` of the picture in pixels (each >= 64).
        look_at: ``[3]`` point to mark (a red star); ``None`` marks :func:`estimate_look_at`'s point
            when the viewing axes meet, nothing otherwise.
        title: text above the plot; ``None`` writes the frame count.
        frustum_depth: depth of the drawn image plane in world units; ``None`` picks 15% of the scene
            extent.
        colormap: matplotlib colormap name; frame 0 takes its low end, frame ``F-1`` its high end.
        colorbar: draw a colorbar of the frame index (otherwise "start"/"end" labels only).
        elev_deg, azim_deg: matplotlib view angles of the plot.
        progress: ``progress(done, 2)`` after the plot is built and after it is drawn (drawing thousands of
            frustums takes seconds); it may raise to stop.

    Returns:
        ``[H, W, 3]`` float32 RGB in ``[0, 1]``.

    Example:
        >>> from mvcustom_core.trajectories import make_trajectory
        >>> img = render_trajectory_preview(make_trajectory("orbit", 8), size=(256, 256))
        >>> tuple(img.shape)
        (256, 256, 3)
    """
    h, w = (int(s) for s in size)
    if h < 64 or w < 64:
        raise TrajectoryError(f"render_trajectory_preview: size must be at least (64, 64), got {size!r}")
    cams.validate(where="render_trajectory_preview: cams")
    c2w = cams.c2w.detach().to("cpu", torch.float64)
    centers = c2w[:, :3, 3]
    if look_at is None:
        target = estimate_look_at(cams)
    else:
        target = torch.as_tensor(look_at, dtype=torch.float64).flatten()
        if target.numel() != 3 or not bool(torch.isfinite(target).all()):
            raise TrajectoryError(f"render_trajectory_preview: look_at must be 3 finite values, got {look_at!r}")

    depth = _frustum_depth(centers, target) if frustum_depth is None else float(frustum_depth)
    if not (math.isfinite(depth) and depth > 0):
        raise TrajectoryError(f"render_trajectory_preview: frustum_depth must be > 0, got {frustum_depth!r}")
    corners = frustum_corners(cams.to("cpu", torch.float64), depth)  # [F, 4, 3]

    fig = Figure(figsize=(w / _DPI, h / _DPI), dpi=_DPI)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.12 if colorbar else 0.02, 1.0, 0.8 if colorbar else 0.88), projection="3d")
    cmap = matplotlib.colormaps[colormap]
    n = cams.num_frames
    colours = [cmap(i / max(n - 1, 1)) for i in range(n)]

    ax.plot(*_display(centers).T, color="0.6", lw=1.0, zorder=1)
    _draw_frustums(ax, _display(centers), _display(corners.reshape(-1, 3)).reshape(n, 4, 3), colours)
    if target is not None:
        ax.scatter(*_display(target[None]).T, color="red", marker="*", s=120, depthshade=False, label="look-at")
    points = torch.cat([centers, corners.reshape(-1, 3)] + ([target[None]] if target is not None else []))
    _set_equal_limits(ax, _display(points))

    ax.set_xlabel("x", fontsize=8, labelpad=-2)
    ax.set_ylabel("z", fontsize=8, labelpad=-2)
    ax.set_zlabel("y (down; axis inverted)", fontsize=8, labelpad=-2)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
    ax.tick_params(labelsize=6, pad=0)
    ax.view_init(elev=elev_deg, azim=azim_deg)
    start, end = _display(centers[:1])[0], _display(centers[-1:])[0]
    ax.text(*start, " start", color=colours[0], fontsize=8)
    if n > 1:
        ax.text(*end, " end", color=colours[-1], fontsize=8)
    if colorbar and n > 1:
        mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, n - 1), cmap=cmap)
        cax = fig.add_axes((0.25, 0.06, 0.5, 0.025))
        bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
        fig.text(0.24, 0.072, "frame", ha="right", va="center", fontsize=8)
        bar.ax.tick_params(labelsize=6)
    # A figure-level title: the 3D axes' own title sits outside the figure at small sizes.
    fig.text(0.5, 0.99, title if title is not None else f"{n} camera{'s' if n != 1 else ''}",
             ha="center", va="top", fontsize=10)

    if progress is not None:
        progress(1, 2)
    canvas.draw()
    if progress is not None:
        progress(2, 2)
    rgba = np.asarray(canvas.buffer_rgba())
    image = torch.from_numpy(rgba[..., :3].astype(np.float32) / 255.0)
    return _fit(image, h, w)


def estimate_look_at(cams: CameraSet, *, min_angle_deg: float = 1.0) -> Tensor | None:
    """The point closest (least squares) to all viewing axes, or ``None`` if they do not meet in front.

    Minimizes ``Σ_f |(I − d_f d_fᵀ)(p − c_f)|²`` over ``p`` (closed form, the normal equations
    ``Σ (I − d dᵀ) p = Σ (I − d dᵀ) c``; the standard multi-ray triangulation, Hartley & Zisserman
    §12.2 in its midpoint form). Returns ``None`` when the axes are nearly parallel (their spread is
    under ``min_angle_deg``) or the point is not in front of every camera.

    Args:
        cams: ``F`` cameras.

    Returns:
        ``[3]`` float64 world point, or ``None``.
    """
    c = cams.centers.detach().to("cpu", torch.float64)
    d = cams.forward.detach().to("cpu", torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    spread = torch.rad2deg(torch.acos((d @ d.mean(0) / d.mean(0).norm()).clamp(-1, 1))).max()
    if cams.num_frames < 2 or float(spread) < min_angle_deg:
        return None
    proj = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]  # [F, 3, 3]
    p = torch.linalg.solve(proj.sum(0), (proj @ c[:, :, None]).sum(0))[:, 0]
    # Turning in place (pan/tilt): the axes meet at the shared centre, which is no look-at point.
    if float(((p - c) * d).sum(-1).min()) <= 1e-6 * (1.0 + float(c.norm(dim=-1).max())):
        return None
    return p


def frustum_corners(cams: CameraSet, depth: float) -> Tensor:
    """``[F, 4, 3]`` world positions of the image corners at camera depth ``depth``.

    Order: top-left, top-right, bottom-right, bottom-left (pixel corners (0, 0), (W, 0), (W, H), (0, H)).
    """
    h, w = cams.image_size
    uv = torch.tensor([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]], dtype=cams.K.dtype, device=cams.K.device)
    uv = uv.expand(cams.num_frames, 4, 2)
    return cams.unproject(uv, torch.full(uv.shape[:2], float(depth), dtype=uv.dtype, device=uv.device))


# ---------------------------------------------------------------------------------------------- helpers
def _display(points: Tensor) -> np.ndarray:
    """``[N, 3]`` world (x, y, z) -> plot coordinates (x, z, y); the plot's vertical axis is inverted."""
    return points[:, [0, 2, 1]].numpy()


def _frustum_depth(centers: Tensor, target: Tensor | None) -> float:
    pts = centers if target is None else torch.cat([centers, target[None]])
    extent = float((pts - pts.mean(0)).norm(dim=-1).max()) * 2
    if target is not None:
        extent = max(extent, float((centers - target).norm(dim=-1).mean()))
    return 0.15 * extent if extent > 1e-9 else 0.15


def _draw_frustums(ax, centres: np.ndarray, corners: np.ndarray, colours: list) -> None:
    """``centres [F, 3]``, ``corners [F, 4, 3]`` (plot coordinates): per frustum 4 edges from the centre, the image
    ring and a thick top edge (image row 0). Two line collections, not 6·F artists: drawing time then grows with
    the segments only (2048 cameras took over a minute as separate lines)."""
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    n = len(centres)
    edges = np.stack([np.broadcast_to(centres[:, None], corners.shape), corners], axis=2)  # [F, 4, 2, 3]
    ring = np.stack([corners, np.roll(corners, -1, axis=1)], axis=2)  # [F, 4, 2, 3]: k -> k+1
    thin = np.concatenate([edges, ring], axis=1).reshape(-1, 2, 3)  # [F·8, 2, 3], frame-major
    ax.add_collection3d(Line3DCollection(thin, colors=np.repeat(np.asarray(colours), 8, axis=0), linewidths=1.0))
    ax.add_collection3d(Line3DCollection(corners[:, :2], colors=colours, linewidths=2.5))  # top edges


def _set_equal_limits(ax, pts: np.ndarray) -> None:
    """Equal scale on all three axes: a cube around the points; the vertical axis inverted."""
    lo, hi = pts.min(0), pts.max(0)
    mid, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6) * 1.05
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_zlim(mid[2] + half, mid[2] - half)  # world y points down: invert so up is up
    ax.set_box_aspect((1, 1, 1), zoom=0.92)


def _fit(image: Tensor, h: int, w: int) -> Tensor:
    """Crop or pad (white) to exactly ``[h, w, 3]``; Agg may round the canvas by a pixel."""
    out = torch.ones(h, w, 3, dtype=image.dtype)
    hh, ww = min(h, image.shape[0]), min(w, image.shape[1])
    out[:hh, :ww] = image[:hh, :ww]
    return out
