"""Evaluation protocol: camera pose accuracy (SfM + Sim(3) alignment), reprojection consistency, learned
similarity metrics when local weights exist, and the Table-2 style report. See ``docs/evaluation.md``.

Heavy dependencies (pycolmap, transformers models) are imported only when a metric needs them. The
learned metrics live in :mod:`mvcustom_core.eval.learned` (not re-exported, to keep this import light).
"""

from mvcustom_core.eval.alignment import Similarity, align_by_rotations, align_cameras, umeyama
from mvcustom_core.eval.errors import EvalInputError, MetricUnavailable
from mvcustom_core.eval.pose_errors import (DEFAULT_POINT_THRESHOLD_PX, DEFAULT_ROT_THRESHOLD_DEG,
                                            DEFAULT_TRANS_THRESHOLD, AbsolutePoseErrors, absolute_pose_errors,
                                            accuracy_auc, accuracy_under_thresholds, points_consistent_with_targets,
                                            relative_pose_errors, rotation_angle_deg, scene_scale,
                                            target_reprojection_errors)
from mvcustom_core.eval.protocol import (METRIC_KEYS, EvalOptions, GeneratedSet, LearnedModels, evaluate_folder,
                                         evaluate_set, find_sets, load_learned_models, load_set)
from mvcustom_core.eval.reprojection import (ReprojectionScores, masked_psnr, masked_ssim, neighbour_pairs,
                                             reprojection_consistency, warp_into)
from mvcustom_core.eval.sfm import SfmOptions, SfmResult, frame_png_name, register_frames
from mvcustom_core.eval.table import TABLE_COLUMNS, summarize, write_report

__all__ = [
    "Similarity", "umeyama", "align_by_rotations", "align_cameras",
    "EvalInputError", "MetricUnavailable",
    "DEFAULT_ROT_THRESHOLD_DEG", "DEFAULT_TRANS_THRESHOLD", "AbsolutePoseErrors", "absolute_pose_errors",
    "accuracy_auc", "accuracy_under_thresholds", "relative_pose_errors", "rotation_angle_deg", "scene_scale",
    "DEFAULT_POINT_THRESHOLD_PX", "points_consistent_with_targets", "target_reprojection_errors",
    "ReprojectionScores", "masked_psnr", "masked_ssim", "neighbour_pairs", "reprojection_consistency", "warp_into",
    "SfmOptions", "SfmResult", "frame_png_name", "register_frames",
    "METRIC_KEYS", "EvalOptions", "GeneratedSet", "LearnedModels", "evaluate_folder", "evaluate_set", "find_sets",
    "load_learned_models", "load_set",
    "TABLE_COLUMNS", "summarize", "write_report",
]
