"""The evaluation protocol: every metric of one generated set, and a folder of sets.

Folder layout read by :func:`evaluate_folder` (and ``python -m mvcustom_core.eval``)::

    <root>/<method>/<set>/frame_000.png ...   generated views, in file-name order
    <root>/<method>/<set>/transforms.json     target cameras (any format of mvcustom_core.cameras.formats:
                                               transforms.json, poses.txt, cameras.json or a sparse/ model)
    <root>/<method>/<set>/depth.safetensors   optional: tensor "depth" [F, H, W] camera-space z, world units
    <root>/<method>/<set>/prompt.txt          optional: the prompt (text alignment)
    <root>/<method>/<set>/references/*.png    optional: the customization photos (identity)

``<root>`` may also be one method folder (its sets directly inside) or one set folder. A set is any
folder holding frames and a cameras file; the method is the name of the folder above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from mvcustom_core.cameras import CameraSet
from mvcustom_core.checks import check_finite, check_shape
from mvcustom_core.eval.errors import EvalInputError, MetricUnavailable
from mvcustom_core.eval.learned import (clip_score, load_clip, load_dino, load_dreamsim, mean_cross_distance,
                                        mean_pairwise_distance, mean_pairwise_similarity)
from mvcustom_core.eval.pose_errors import (DEFAULT_POINT_THRESHOLD_PX, DEFAULT_ROT_THRESHOLD_DEG,
                                            DEFAULT_TRANS_THRESHOLD, absolute_pose_errors, accuracy_auc,
                                            accuracy_under_thresholds, points_consistent_with_targets,
                                            target_reprojection_errors)
from mvcustom_core.eval.reprojection import reprojection_consistency
from mvcustom_core.eval.sfm import SfmOptions, register_frames

__all__ = ["EvalOptions", "LearnedModels", "load_learned_models", "evaluate_set", "GeneratedSet", "find_sets",
           "load_set", "evaluate_folder", "CAMERA_FILE_NAMES", "METRIC_KEYS"]

CAMERA_FILE_NAMES = ("transforms.json", "poses.txt", "cameras.json", "sparse")
"""Cameras file names looked for in a set folder, in this order."""

METRIC_KEYS = ("num_frames", "num_registered", "cpa", "cpa_auc", "rot_err_deg", "trans_err", "colmap_points",
               "colmap_points_target", "target_reproj_px",
               "reproj_psnr", "reproj_ssim", "reproj_overlap", "mv_dreamsim", "identity_dreamsim", "mv_clip",
               "identity_clip", "mv_dino", "identity_dino", "text_clip_s")
"""Every numeric key :func:`evaluate_set` returns (NaN when a metric was not computed)."""


@dataclass(frozen=True)
class EvalOptions:
    """What to compute and how.

    Attributes:
        pose_accuracy: run SfM and score the poses (CPA, errors, # points).
        sfm: registration settings (:class:`~mvcustom_core.eval.sfm.SfmOptions`).
        rot_threshold_deg, trans_threshold: CPA thresholds (degrees; fraction of the path's mean radius).
        point_threshold_px: an SfM point counts as consistent with the targets when all its observations
            reproject within this many pixels through the aligned target cameras.
        reprojection: score reprojection consistency when depth is given.
        window: neighbour distance of the reprojection pairs.
        depth_tolerance: relative depth-test tolerance of the warp.
        clip_path, dino_path, dreamsim_path: local model folders (``None``: metric skipped, reported).
        device: where the learned models run.
    """

    pose_accuracy: bool = True
    sfm: SfmOptions = field(default_factory=SfmOptions)
    rot_threshold_deg: float = DEFAULT_ROT_THRESHOLD_DEG
    trans_threshold: float = DEFAULT_TRANS_THRESHOLD
    point_threshold_px: float = DEFAULT_POINT_THRESHOLD_PX
    reprojection: bool = True
    window: int = 1
    depth_tolerance: float = 0.02
    clip_path: str | None = None
    dino_path: str | None = None
    dreamsim_path: str | None = None
    device: str = "cpu"


@dataclass
class LearnedModels:
    """Loaded embedders (``None`` where unavailable) and, per missing model, the reason."""

    clip: Any = None
    dino: Any = None
    dreamsim: Any = None
    unavailable: dict[str, str] = field(default_factory=dict)


def load_learned_models(options: EvalOptions) -> LearnedModels:
    """Load every learned model whose folder ``options`` names; record why the others are unavailable."""
    models = LearnedModels()
    for name, loader, path in (("clip", load_clip, options.clip_path), ("dino", load_dino, options.dino_path),
                               ("dreamsim", load_dreamsim, options.dreamsim_path)):
        try:
            setattr(models, name, loader(path, device=options.device))
        except MetricUnavailable as exc:
            models.unavailable[name] = str(exc)
    return models


def _pose_metrics(frames: Tensor, cams: CameraSet, options: EvalOptions, notes: dict[str, str]) -> dict[str, float]:
    sfm_options = options.sfm
    if sfm_options.known_intrinsics and not torch.allclose(cams.K, cams.K[:1].expand_as(cams.K), rtol=1e-6, atol=1e-6):
        # COLMAP's shared PINHOLE camera holds one K; a zooming path must let COLMAP estimate per image.
        sfm_options = replace(sfm_options, known_intrinsics=False, per_image_camera=True)
        notes["known_intrinsics"] = "target intrinsics differ between frames; COLMAP estimated them per image"
    sfm = register_frames(frames, cams.K, sfm_options)
    err = absolute_pose_errors(sfm.c2w, cams.c2w, sfm.registered)
    reg = sfm.registered
    target_px, consistent = math.nan, 0.0
    if err.alignment is not None:
        px = target_reprojection_errors(sfm.points, sfm.obs_point, sfm.obs_frame, sfm.obs_uv, err.alignment, cams)
        target_px = float(px.median()) if px.numel() else math.nan
        consistent = float(points_consistent_with_targets(px, sfm.obs_point, sfm.num_points,
                                                          options.point_threshold_px))
    return {
        "colmap_points_target": consistent,
        "target_reproj_px": target_px,
        "num_registered": float(sfm.num_registered),
        "cpa": accuracy_under_thresholds(err.rotation_deg, err.translation, options.rot_threshold_deg,
                                         options.trans_threshold),
        "cpa_auc": accuracy_auc(err.rotation_deg, err.translation, 2 * options.rot_threshold_deg,
                                2 * options.trans_threshold),
        "rot_err_deg": float(err.rotation_deg[reg].mean()) if err.alignment is not None else math.nan,
        "trans_err": float(err.translation[reg].mean()) if err.alignment is not None else math.nan,
        "colmap_points": float(sfm.num_points),
    }


def _learned_metrics(frames: Tensor, references: Tensor | None, prompt: str | None, models: LearnedModels
                     ) -> tuple[dict[str, float], dict[str, str]]:
    out: dict[str, float] = {}
    notes: dict[str, str] = {}
    embeddings: dict[str, Tensor] = {}
    for name in ("dreamsim", "clip", "dino"):
        model = getattr(models, name)
        if model is None:
            continue
        emb = embeddings[name] = model.embed_images(frames)
        out[f"mv_{name}"] = mean_pairwise_distance(emb) if name == "dreamsim" else mean_pairwise_similarity(emb)
        if references is not None:
            ref = model.embed_images(references)
            d = mean_cross_distance(emb, ref)
            out[f"identity_{name}"] = d if name == "dreamsim" else 1.0 - d
    if prompt and models.clip is not None:
        try:
            out["text_clip_s"] = clip_score(embeddings["clip"], models.clip.embed_texts([prompt])[0])
        except MetricUnavailable as exc:
            notes["text_clip_s"] = str(exc)
    return out, notes


def evaluate_set(frames: Tensor, cams: CameraSet, *, depth: Tensor | None = None, references: Tensor | None = None,
                 prompt: str | None = None, options: EvalOptions = EvalOptions(),
                 models: LearnedModels | None = None) -> dict[str, Any]:
    """Every metric of one generated set.

    Args:
        frames: ``[F, 3, H, W]`` generated views in [0, 1].
        cams: the F target cameras (image size (H, W)).
        depth: optional ``[F, 1, H, W]`` (or ``[F, H, W]``) camera-space z in the cameras' world units;
            enables reprojection consistency.
        references: optional ``[R, 3, h, w]`` customization photos in [0, 1] (identity metrics).
        prompt: optional prompt (text alignment, needs a CLIP folder with its tokenizer).
        options: :class:`EvalOptions`.
        models: preloaded :class:`LearnedModels` (default: loaded from ``options`` for this call).

    Returns:
        ``{key: float}`` for every key of :data:`METRIC_KEYS` (NaN when not computed), plus
        ``"unavailable": {metric: reason}``. CPA is 0 when registration fails (the paper's scoring).
    """
    dims = check_shape(frames, "F 3 H W", "frames")
    check_finite(frames, "frames")
    if cams.num_frames != dims["F"]:
        raise EvalInputError(f"cams: {cams.num_frames} target cameras for {dims['F']} frames")
    if cams.image_size != (dims["H"], dims["W"]):
        raise EvalInputError(f"cams: image size {cams.image_size} differs from the frames' {(dims['H'], dims['W'])}; "
                             f"rescale with CameraSet.with_image_size")
    cams.validate(where="target cameras")
    result: dict[str, Any] = {k: math.nan for k in METRIC_KEYS}
    result["num_frames"] = float(dims["F"])
    unavailable: dict[str, str] = {}
    if options.pose_accuracy:
        result.update(_pose_metrics(frames, cams, options, unavailable))
    if options.reprojection:
        if depth is None:
            unavailable["reprojection"] = "no depth given (depth.safetensors in the set folder)"
        else:
            if depth.dim() == 3:
                depth = depth.unsqueeze(1)
            check_shape(depth, "F 1 H W", "depth", dict(dims))
            scores = reprojection_consistency(frames, depth, cams, window=options.window,
                                              depth_tolerance=options.depth_tolerance)
            result.update(reproj_psnr=scores.mean_psnr, reproj_ssim=scores.mean_ssim,
                          reproj_overlap=scores.mean_overlap)
    if references is not None:
        check_shape(references, "R 3 h w", "references")
    models = models if models is not None else load_learned_models(options)
    unavailable.update(models.unavailable)
    learned, notes = _learned_metrics(frames, references, prompt, models)
    result.update(learned)
    unavailable.update(notes)
    if references is None:
        unavailable.setdefault("identity", "no reference photos given (references/ in the set folder)")
    if not prompt:
        unavailable.setdefault("text_clip_s", "no prompt given (prompt.txt in the set folder)")
    result["unavailable"] = unavailable
    return result


# ---------------------------------------------------------------------------------------------- folders
@dataclass(frozen=True)
class GeneratedSet:
    """One set folder of the layout in the module docstring."""

    method: str
    name: str
    folder: Path


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")


def _cameras_file(folder: Path) -> Path | None:
    for name in CAMERA_FILE_NAMES:
        if (folder / name).exists():
            return folder / name
    return None


def _is_set(folder: Path) -> bool:
    return folder.is_dir() and _cameras_file(folder) is not None and bool(_frame_files(folder))


def find_sets(root: str | Path) -> list[GeneratedSet]:
    """Every generated set under ``root`` (root itself, its children, or its grandchildren), sorted.

    Raises:
        EvalInputError: ``root`` is missing or holds no set.
    """
    root = Path(root)
    if not root.is_dir():
        raise EvalInputError(f"{root}: not a folder")
    if _is_set(root):
        return [GeneratedSet(root.parent.name or "method", root.name, root)]
    sets = [GeneratedSet(root.name, c.name, c) for c in sorted(root.iterdir()) if _is_set(c)]
    for method in sorted(p for p in root.iterdir() if p.is_dir() and not _is_set(p)):
        sets += [GeneratedSet(method.name, c.name, c) for c in sorted(method.iterdir()) if _is_set(c)]
    if not sets:
        raise EvalInputError(f"{root}: no generated set found (a set folder holds frame PNGs and one of "
                             f"{', '.join(CAMERA_FILE_NAMES)}; see docs/evaluation.md)")
    return sets


def _read_pngs(files: list[Path], what: str) -> Tensor:
    from PIL import Image

    images = []
    for path in files:
        try:
            with Image.open(path) as img:
                images.append(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
        except OSError as exc:
            raise EvalInputError(f"{path}: cannot read the image ({exc})") from exc
        if images[-1].shape != images[0].shape:
            raise EvalInputError(f"{path}: size {images[-1].shape[1::-1]} differs from {files[0].name}'s "
                                 f"{images[0].shape[1::-1]}; all {what} must share one size")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def load_set(generated: GeneratedSet) -> dict[str, Any]:
    """Read one set folder: ``frames``, ``cams`` (at the frames' size), and optional ``depth``, ``references``,
    ``prompt``.

    Raises:
        EvalInputError: naming the file that is missing, unreadable or inconsistent.
    """
    from mvcustom_core.cameras.formats import load_camera_file

    folder = generated.folder
    files = _frame_files(folder)
    frames = _read_pngs(files, "frames")
    size = (int(frames.shape[-2]), int(frames.shape[-1]))
    cam_path = _cameras_file(folder)
    try:
        cams = load_camera_file(cam_path, image_size=size)
    except (ValueError, OSError) as exc:
        raise EvalInputError(f"{cam_path}: {exc}") from exc
    if cams.num_frames != len(files):
        raise EvalInputError(f"{cam_path}: {cams.num_frames} cameras for {len(files)} frame PNGs in {folder}")
    out: dict[str, Any] = {"frames": frames, "cams": cams, "depth": None, "references": None, "prompt": None}
    depth_path = folder / "depth.safetensors"
    if depth_path.is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(depth_path))
        if "depth" not in tensors:
            raise EvalInputError(f"{depth_path}: no tensor named 'depth' (found {sorted(tensors)})")
        depth = tensors["depth"].float()
        if depth.dim() == 3:
            depth = depth.unsqueeze(1)
        try:
            check_shape(depth, f"{len(files)} 1 {size[0]} {size[1]}", f"{depth_path}: depth")
        except ValueError as exc:
            raise EvalInputError(str(exc)) from exc
        out["depth"] = depth
    refs = folder / "references"
    if refs.is_dir() and _frame_files(refs):
        out["references"] = _read_references(_frame_files(refs), size)
    prompt = folder / "prompt.txt"
    if prompt.is_file():
        out["prompt"] = prompt.read_text(encoding="utf-8").strip() or None
    return out


def _read_references(files: list[Path], size: tuple[int, int]) -> Tensor:
    """Reference photos of any sizes, each resized to ``size`` (the learned metrics resize and crop anyway)."""
    imgs = [torch.nn.functional.interpolate(_read_pngs([p], "references"), size=size, mode="bicubic",
                                            antialias=True, align_corners=False).clamp(0, 1) for p in files]
    return torch.cat(imgs)


def evaluate_folder(root: str | Path, options: EvalOptions = EvalOptions(), *,
                    progress: Callable[[int, int, str], None] | None = None,
                    check_interrupt: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """:func:`evaluate_set` over every set under ``root``.

    Args:
        root: see the module docstring.
        options: :class:`EvalOptions`; learned models are loaded once for all sets.
        progress: called as ``progress(done, total, "<method>/<set>")`` after each set.
        check_interrupt: called before each set; raise from it to stop (e.g. the host's interrupt check).

    Returns:
        One row per set: ``{"method", "set", **metrics}``.
    """
    sets = find_sets(root)
    models = load_learned_models(options)
    rows = []
    for i, generated in enumerate(sets):
        if check_interrupt is not None:
            check_interrupt()
        data = load_set(generated)
        metrics = evaluate_set(data["frames"], data["cams"], depth=data["depth"], references=data["references"],
                               prompt=data["prompt"], options=options, models=models)
        rows.append({"method": generated.method, "set": generated.name, **metrics})
        if progress is not None:
            progress(i + 1, len(sets), f"{generated.method}/{generated.name}")
    return rows
