"""Synthetic subject views: exact ground-truth pictures and masks of a procedural subject, for testing a graph."""

from __future__ import annotations

import torch

from mvcustom_core.cameras import CameraSet
from mvcustom_core.synthetic import SUBJECTS, SyntheticScene, turntable_cameras

from ._common import Progress, blame, input_named_in, image_from_chw, mask_from_core, require
from ._host import io
from .types import Trajectory

__all__ = ["SYNTHETIC_NODES", "SyntheticSubjectViews"]

CATEGORY = "MVCustom/synthetic"


class SyntheticSubjectViews(io.ComfyNode):
    """Renders the procedural subject from a turntable (or from a connected trajectory)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        subjects = list(SUBJECTS)
        return io.Schema(
            node_id="MVC_SyntheticSubjectViews",
            display_name="MVCustom Synthetic Subject Views",
            category=CATEGORY,
            description=("Ray-casts a procedural textured subject on a ground plane (deterministic from the seed): "
                         "views, subject masks and their cameras. Without a trajectory input the cameras are a "
                         "turntable around the subject (world up is -y)."),
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Draws the textures; equal seeds give identical pictures."),
                io.Combo.Input("subject", options=subjects, default="default" if "default" in subjects else subjects[0],
                               tooltip="Subject geometry (mvcustom_core.synthetic.SUBJECTS)."),
                io.Int.Input("views", default=8, min=1, max=512,
                             tooltip="Number of turntable views (ignored when a trajectory is connected)."),
                io.Float.Input("elevation_deg", default=20.0, min=-89.0, max=89.0, step=1.0,
                               tooltip="Turntable elevation above the subject, in degrees (ignored with a trajectory)."),
                io.Float.Input("radius", default=2.5, min=0.1, max=5.5, step=0.05,
                               tooltip="Turntable camera distance from the subject centre (ignored with a trajectory)."),
                io.Int.Input("width", default=256, min=8, max=4096, step=8,
                             tooltip="Turntable image width in pixels (ignored with a trajectory)."),
                io.Int.Input("height", default=256, min=8, max=4096, step=8,
                             tooltip="Turntable image height in pixels (ignored with a trajectory)."),
                io.Float.Input("fov_y_deg", default=40.0, min=1.0, max=179.0, step=0.5,
                               tooltip="Turntable vertical field of view in degrees (ignored with a trajectory)."),
                io.Int.Input("supersample", default=2, min=1, max=8,
                             tooltip="Anti-aliasing: s x s rays per pixel for colour and mask coverage."),
                io.Float.Input("max_frequency", default=16.0, min=0.5, max=64.0, step=0.5,
                               tooltip="Texture detail cap in cycles per world unit (lower = smoother)."),
                Trajectory.Input("custom_trajectory", optional=True,
                                 tooltip=("Optional cameras to render from instead of the turntable. The subject "
                                          "spans about 0.8 units around the origin: keep cameras ~2-5 units away.")),
            ],
            outputs=[
                io.Image.Output("images", tooltip="Rendered views, IMAGE [F, H, W, 3]."),
                io.Mask.Output("masks", tooltip="Subject masks, MASK [F, H, W] (1 = subject)."),
                Trajectory.Output("trajectory", tooltip="The cameras the views were rendered from."),
            ],
        )

    @classmethod
    def execute(cls, seed: int, subject: str, views: int, elevation_deg: float, radius: float, width: int,
                height: int, fov_y_deg: float, supersample: int, max_frequency: float,
                custom_trajectory: CameraSet | None = None) -> io.NodeOutput:
        require(cls, "subject", subject in SUBJECTS, f"must be one of {list(SUBJECTS)}, got {subject!r}")
        require(cls, "supersample", int(supersample) >= 1, f"must be ≥ 1, got {supersample}")
        with blame(cls, "seed"):
            scene = SyntheticScene(seed=int(seed), subject=subject, max_frequency=float(max_frequency))
        if custom_trajectory is None:
            require(cls, "views", int(views) >= 1, f"must be ≥ 1, got {views}")
            require(cls, "width", int(width) >= 1, f"must be ≥ 1, got {width}")
            require(cls, "height", int(height) >= 1, f"must be ≥ 1, got {height}")
            turntable_inputs = ["views", "elevation_deg", "radius", "fov_y_deg", "width", "height"]
            with blame(cls, input_named_in(turntable_inputs, "views")):
                cams = turntable_cameras(int(views), elevation_deg=float(elevation_deg), radius=float(radius),
                                         image_size=(int(height), int(width)), fov_y_deg=float(fov_y_deg),
                                         target=tuple(SUBJECTS[subject].center))
        else:
            require(cls, "custom_trajectory", isinstance(custom_trajectory, CameraSet),
                    f"must be an MVC_CAMERA_TRAJECTORY (CameraSet), got {type(custom_trajectory).__name__}")
            cams = custom_trajectory
        # One camera per call so the progress bar moves and Cancel is honoured between views.
        progress = Progress(cams.num_frames)
        rgb, masks = [], []
        for f in range(cams.num_frames):
            with blame(cls, "custom_trajectory"):
                out = scene.render(cams[f], supersample=int(supersample))
            rgb.append(out.rgb)
            masks.append(out.mask)
            progress.step()
        return io.NodeOutput(image_from_chw(torch.cat(rgb)), mask_from_core(torch.cat(masks)), cams)


SYNTHETIC_NODES: list[type[io.ComfyNode]] = [SyntheticSubjectViews]
