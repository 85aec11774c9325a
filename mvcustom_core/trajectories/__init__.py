"""Camera paths as :class:`~mvcustom_core.cameras.CameraSet`: presets, keyframes, combination, preview.

Entry points: :func:`make_trajectory` with a name from :data:`PRESETS` (geometric presets and the thirteen
CameraCtrl presets as ``cameractrl_*``), :func:`preset_parameters` for UIs, :func:`keyframe_trajectory`
for custom paths, :func:`compose` / :func:`concatenate` / :func:`chain` / :func:`resample` to combine, and
:func:`render_trajectory_preview` for a picture. Conventions: ``docs/trajectories.md``.
"""

from mvcustom_core.trajectories.presets import (
    PRESET_ALIASES,
    PRESETS,
    ParamSpec,
    TrajectoryError,
    make_trajectory,
    orbit_position,
    preset_parameters,
)
from mvcustom_core.trajectories.cameractrl_presets import (  # noqa: E402  (registers the cameractrl_* presets)
    ADE_FRAME_BASE,
    CAMERACTRL_CONVENTIONS,
    CAMERACTRL_PRESET_KEYS,
    CAMERACTRL_PRESET_NAMES,
    cameractrl_motion_rows,
    cameractrl_trajectory,
    canonical_cameractrl_name,
)
from mvcustom_core.trajectories.keyframes import catmull_rom, keyframe_trajectory, slerp_rotations
from mvcustom_core.trajectories.combine import chain, compose, concatenate, resample, reverse
from mvcustom_core.trajectories.preview import estimate_look_at, render_trajectory_preview

__all__ = [
    "PRESETS",
    "PRESET_ALIASES",
    "ParamSpec",
    "TrajectoryError",
    "make_trajectory",
    "preset_parameters",
    "orbit_position",
    "ADE_FRAME_BASE",
    "CAMERACTRL_CONVENTIONS",
    "CAMERACTRL_PRESET_KEYS",
    "CAMERACTRL_PRESET_NAMES",
    "cameractrl_motion_rows",
    "cameractrl_trajectory",
    "canonical_cameractrl_name",
    "keyframe_trajectory",
    "catmull_rom",
    "slerp_rotations",
    "compose",
    "concatenate",
    "chain",
    "resample",
    "reverse",
    "render_trajectory_preview",
    "estimate_look_at",
]
