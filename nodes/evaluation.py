"""Evaluation: the paper's protocol (camera pose accuracy, learned identity/consistency/text metrics) on a set of views."""

from __future__ import annotations

import math

from mvcustom_core.cameras import CameraSet
from mvcustom_core.eval import EvalOptions, evaluate_set, summarize
from mvcustom_core.eval.table import format_markdown

from ._common import blame, image_to_chw, redact_server_paths, require
from ._files import read_path
from ._host import io, ui
from .types import Trajectory

__all__ = ["EVALUATION_NODES", "EvaluateViews"]

CATEGORY = "MVCustom/evaluation"
EVAL_FOLDER = "mvcustom_eval"  # models/<this>/<folder>: local transformers models for the learned metrics


def _model_folder(node: type, input_name: str, value: str) -> str | None:
    """The model folder ``value`` names inside models/mvcustom_eval, None when empty."""
    if not isinstance(value, str) or not value.strip():
        return None
    return str(read_path(node, input_name, value.strip(), EVAL_FOLDER, kind="dir", what="model folder",
                         hint=f"a folder inside ComfyUI's models/{EVAL_FOLDER}"))


class EvaluateViews(io.ComfyNode):
    """Scores generated views against their target cameras (mvcustom_core.eval.evaluate_set)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVC_EvaluateViews",
            display_name="MVCustom Evaluate Views",
            category=CATEGORY,
            description=("Registers the views with structure-from-motion (pycolmap), aligns them to the target "
                         "cameras and reports camera pose accuracy and errors; with local CLIP / DINOv2 folders "
                         "also identity, multi-view consistency and text alignment. Metrics that cannot run are "
                         "listed with the reason."),
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="Generated views, IMAGE [F, H, W, 3], in trajectory order."),
                Trajectory.Input("trajectory", tooltip="The F target cameras the views were generated for."),
                io.Boolean.Input("pose_accuracy", default=True,
                                 tooltip="Run structure-from-motion and score the camera poses (seconds per set)."),
                io.Float.Input("rot_threshold_deg", default=15.0, min=0.1, max=180.0, step=0.5,
                               tooltip="A frame counts as accurate below this rotation error (degrees)."),
                io.Float.Input("trans_threshold", default=0.1, min=0.001, max=10.0, step=0.01,
                               tooltip="... and below this translation error (fraction of the path's radius)."),
                io.String.Input("prompt", default="", optional=True, tooltip="Prompt, for CLIP text alignment."),
                io.Image.Input("references", optional=True, tooltip="Subject photos, for identity metrics."),
                io.String.Input("clip_folder", default="", optional=True,
                                tooltip=(f"Folder in models/{EVAL_FOLDER} holding a transformers CLIP model "
                                         "(save_pretrained layout; nothing is downloaded); empty = skip.")),
                io.String.Input("dino_folder", default="", optional=True,
                                tooltip=(f"Folder in models/{EVAL_FOLDER} holding a transformers DINOv2 model "
                                         "(nothing is downloaded); empty = skip.")),
            ],
            outputs=[
                io.String.Output("report", tooltip="Markdown table in the layout of the paper's Table 2."),
                io.Float.Output("camera_pose_accuracy", tooltip="Fraction of frames within both thresholds."),
                io.Float.Output("rotation_error_deg", tooltip="Mean rotation error of the registered frames."),
            ],
        )

    @classmethod
    def execute(cls, images, trajectory: CameraSet, pose_accuracy: bool, rot_threshold_deg: float,
                trans_threshold: float, prompt: str = "", references=None, clip_folder: str = "",
                dino_folder: str = "") -> io.NodeOutput:
        frames = image_to_chw(cls, "images", images)
        require(cls, "trajectory", isinstance(trajectory, CameraSet),
                f"must be a camera trajectory, got {type(trajectory).__name__}")
        require(cls, "trajectory", len(trajectory) == frames.shape[0],
                f"has {len(trajectory)} cameras for {frames.shape[0]} images")
        refs = None if references is None else image_to_chw(cls, "references", references)
        models = {name: _model_folder(cls, name, value) for name, value in (("clip_folder", clip_folder),
                                                                            ("dino_folder", dino_folder))}
        options = EvalOptions(pose_accuracy=bool(pose_accuracy), reprojection=False,
                              rot_threshold_deg=float(rot_threshold_deg), trans_threshold=float(trans_threshold),
                              clip_path=models["clip_folder"], dino_path=models["dino_folder"])
        cams = trajectory.with_image_size(tuple(frames.shape[-2:]))
        with blame(cls, "images"):
            result = evaluate_set(frames, cams, references=refs, prompt=prompt.strip() or None, options=options)
        report = format_markdown(summarize([{"method": "this graph", **result}]))
        skipped = result.get("unavailable", {})
        if skipped:
            report += "\n" + "\n".join(f"- {metric}: {redact_server_paths(reason)}"
                                        for metric, reason in skipped.items()) + "\n"
        cpa, rot = result["cpa"], result["rot_err_deg"]
        return io.NodeOutput(report, float(cpa), float(rot) if not math.isnan(rot) else math.nan,
                             ui=ui.PreviewText(report))


EVALUATION_NODES = [EvaluateViews]
