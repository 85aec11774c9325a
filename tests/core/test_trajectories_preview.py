"""The preview picture: frustums coloured by frame order, look-at estimate, no pyplot state."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.trajectories import TrajectoryError, estimate_look_at, make_trajectory, render_trajectory_preview
from mvcustom_core.trajectories.preview import frustum_corners

F64 = torch.float64
SIZE = (160, 160)


def _two_cameras(x_first: float) -> CameraSet:
    """Two forward-looking cameras far apart on the x axis; frame 0 at ``x_first``."""
    c2w = torch.eye(4, dtype=F64).repeat(2, 1, 1)
    c2w[0, 0, 3], c2w[1, 0, 3] = x_first, -x_first
    return CameraSet.from_fov(c2w, 60.0, (48, 64))


def _pixels_near(image: torch.Tensor, rgb, tol: float = 0.12) -> torch.Tensor:
    """``[N, 2]`` (row, col) of pixels within ``tol`` of ``rgb`` in every channel."""
    return torch.nonzero(((image - torch.tensor(rgb[:3], dtype=image.dtype)).abs() < tol).all(-1))


@pytest.mark.parametrize("x_first", [-1.0, 1.0])
def test_first_and_last_frustums_take_the_two_ends_of_the_colormap(x_first):
    image = render_trajectory_preview(_two_cameras(x_first), size=SIZE, colorbar=False, colormap="viridis")
    cmap = matplotlib.colormaps["viridis"]
    first, last = _pixels_near(image, cmap(0.0)), _pixels_near(image, cmap(1.0))
    assert len(first) > 15 and len(last) > 15, (len(first), len(last))
    # The default view looks along +y of the plot with x to the right: the camera at world x = -1 is
    # drawn left of the one at x = +1, whichever frame it is.
    first_col, last_col = first[:, 1].double().mean(), last[:, 1].double().mean()
    assert (first_col < last_col) if x_first < 0 else (first_col > last_col), (float(first_col), float(last_col))


def test_picture_is_non_blank_rgb_in_unit_range_and_sized_as_asked():
    image = render_trajectory_preview(make_trajectory("orbit", 6), size=(120, 200), title="orbit")
    assert image.shape == (120, 200, 3) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    not_white = (image < 0.9).any(-1).double().mean()
    assert 0.02 < float(not_white) < 0.9
    red = _pixels_near(image, (1.0, 0.0, 0.0), tol=0.2)  # the look-at star
    assert len(red) > 5


def test_no_pyplot_figures_are_left_behind():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    render_trajectory_preview(make_trajectory("pan", 3), size=(96, 96))
    assert plt.get_fignums() == before


def test_estimate_look_at_recovers_the_orbit_target_and_rejects_parallel_axes():
    target = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    cams = make_trajectory("orbit", 5, span_deg=120.0, target=target.tolist(), radius=2.0)
    torch.testing.assert_close(estimate_look_at(cams), target)
    assert estimate_look_at(_two_cameras(-1.0)) is None  # parallel viewing axes never meet
    assert estimate_look_at(make_trajectory("pan", 5)) is None  # axes meet only at the shared centre
    # cameras facing away from each other's meeting point: the point is behind them
    away = CameraSet.from_fov(look_at(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]], dtype=F64),
                                      torch.tensor([[2.0, 0, 0], [0, 0, 2.0]], dtype=F64)), 50.0, (32, 32))
    assert estimate_look_at(away) is None


def test_frustum_corners_project_back_to_the_image_corners():
    cams = make_trajectory("spiral", 3, image_size=(48, 80))
    corners = frustum_corners(cams, 0.4)
    uv, depth = cams.project(corners)
    expected = torch.tensor([[0.0, 0.0], [80.0, 0.0], [80.0, 48.0], [0.0, 48.0]], dtype=F64)
    torch.testing.assert_close(uv, expected.expand(3, 4, 2))
    torch.testing.assert_close(depth, torch.full((3, 4), 0.4, dtype=F64))


def test_bad_inputs_are_named():
    cams = make_trajectory("orbit", 3)
    with pytest.raises(TrajectoryError, match="size"):
        render_trajectory_preview(cams, size=(10, 10))
    with pytest.raises(TrajectoryError, match="look_at"):
        render_trajectory_preview(cams, size=(96, 96), look_at=(0.0, 1.0))
