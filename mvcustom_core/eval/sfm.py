"""Register generated frames with structure-from-motion (pycolmap: SIFT, exhaustive matching, incremental mapping).

CPU only and deterministic for a given thread count. COLMAP's image coordinates put pixel centres at
+0.5, the pack's convention, so known intrinsics pass through unchanged.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mvcustom_core.checks import check_finite, check_shape
from mvcustom_core.eval.errors import EvalInputError

__all__ = ["SfmOptions", "SfmResult", "register_frames", "frame_png_name"]


@dataclass(frozen=True)
class SfmOptions:
    """Settings of the registration run.

    Attributes:
        known_intrinsics: give COLMAP the target intrinsics (PINHOLE, not refined). The generated frames
            are meant to be rendered through exactly those cameras, and with unknown focal length small
            images often fail to initialise. ``False`` lets COLMAP estimate one shared SIMPLE_RADIAL camera,
            closer to running plain ``colmap automatic_reconstructor``.
        per_image_camera: one camera per image (COLMAP ``CameraMode.PER_IMAGE``), for paths whose
            intrinsics change; only with ``known_intrinsics=False``.
        num_threads: threads for extraction, matching and mapping.
        max_num_features: SIFT features per image.
        min_num_inliers: two-view inliers needed to start a model and to register an image; COLMAP's
            defaults (100 / 30) assume megapixel photos, generated views at 256 px give fewer matches.
        seed: mapper random seed (the result is reproducible for a fixed thread count).
        quiet: hide COLMAP's INFO log lines during the run (warnings and errors still show).
    """

    known_intrinsics: bool = True
    per_image_camera: bool = False
    num_threads: int = 1
    max_num_features: int = 4096
    min_num_inliers: int = 30
    seed: int = 0
    quiet: bool = True


@dataclass(frozen=True)
class SfmResult:
    """Outcome of :func:`register_frames`.

    Attributes:
        c2w: ``[F, 4, 4]`` float64 camera-to-world in the reconstruction's arbitrary similarity frame;
            identity rows for unregistered frames.
        registered: ``[F]`` bool.
        num_points: 3D points in the kept (largest) model; 0 when mapping failed.
        focal_px: ``[F]`` float64 focal length COLMAP used (NaN when unregistered).
        points: ``[P, 3]`` float64 triangulated points (reconstruction frame), P = ``num_points``.
        obs_point: ``[M]`` int64 index into ``points`` of each observation (one per track element).
        obs_frame: ``[M]`` int64 frame that observes it.
        obs_uv: ``[M, 2]`` float64 keypoint position in pixels (centres at +0.5, the pack's convention).
    """

    c2w: Tensor
    registered: Tensor
    num_points: int
    focal_px: Tensor
    points: Tensor = field(default_factory=lambda: torch.zeros(0, 3, dtype=torch.float64))
    obs_point: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    obs_frame: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    obs_uv: Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.float64))

    @property
    def num_registered(self) -> int:
        return int(self.registered.sum())


def frame_png_name(index: int) -> str:
    """File name of frame ``index`` in the generated-set layout (``frame_000.png`` ...)."""
    return f"frame_{index:03d}.png"


def _write_pngs(frames: Tensor, folder: Path) -> list[str]:
    from PIL import Image

    names = []
    arr = (frames.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    for f, img in enumerate(arr):
        name = frame_png_name(f)
        Image.fromarray(img).save(folder / name)
        names.append(name)
    return names


def register_frames(frames: Tensor, K: Tensor | None = None, options: SfmOptions = SfmOptions()) -> SfmResult:
    """Estimate the camera of every frame with incremental SfM.

    Args:
        frames: ``[F, 3, H, W]`` RGB in [0, 1].
        K: ``[F, 3, 3]`` target intrinsics in pixels (used when ``options.known_intrinsics``; they must
            agree across frames, as COLMAP's single shared camera holds one K).
        options: :class:`SfmOptions`.

    Returns:
        :class:`SfmResult`; a run where mapping fails returns no registered frames rather than raising.
    """
    try:
        import pycolmap
    except ImportError as exc:  # pragma: no cover - pycolmap is in the test extra
        raise EvalInputError("camera pose accuracy needs pycolmap: pip install 'pycolmap>=3.10'") from exc
    dims = check_shape(frames, "F 3 H W", "frames")
    check_finite(frames, "frames")
    if options.known_intrinsics:
        if K is None:
            raise EvalInputError("K: known_intrinsics=True needs the target intrinsics")
        check_shape(K, "F 3 3", "K", dims)
        if not torch.allclose(K, K[:1].expand_as(K), rtol=1e-6, atol=1e-6):
            raise EvalInputError("K: the intrinsics differ between frames; a shared PINHOLE camera needs one K "
                                 "(use SfmOptions(known_intrinsics=False, per_image_camera=True))")
        if options.per_image_camera:
            raise EvalInputError("options: per_image_camera needs known_intrinsics=False")
    previous_level = pycolmap.logging.minloglevel
    if options.quiet:
        pycolmap.logging.minloglevel = 1  # glog levels: 0 INFO, 1 WARNING, 2 ERROR
    try:
        return _run_sfm(pycolmap, frames, K, options)
    finally:
        pycolmap.logging.minloglevel = previous_level


def _run_sfm(pycolmap, frames: Tensor, K: Tensor | None, options: SfmOptions) -> SfmResult:
    f, (h, w) = frames.shape[0], frames.shape[-2:]
    c2w = torch.eye(4, dtype=torch.float64).repeat(f, 1, 1)
    registered = torch.zeros(f, dtype=torch.bool)
    focal = torch.full((f,), float("nan"), dtype=torch.float64)
    with tempfile.TemporaryDirectory(prefix="mvc_sfm_") as tmp:
        tmp_path = Path(tmp)
        image_dir = tmp_path / "images"
        image_dir.mkdir()
        names = _write_pngs(frames, image_dir)
        database = tmp_path / "database.db"

        reader = pycolmap.ImageReaderOptions()
        if options.known_intrinsics:
            k = K[0].double()
            reader.camera_model = "PINHOLE"
            reader.camera_params = ",".join(f"{float(v):.10g}" for v in (k[0, 0], k[1, 1], k[0, 2], k[1, 2]))
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.use_gpu = False
        extraction.num_threads = options.num_threads
        extraction.max_image_size = max(h, w)
        extraction.sift.max_num_features = options.max_num_features
        mode = pycolmap.CameraMode.PER_IMAGE if options.per_image_camera else pycolmap.CameraMode.SINGLE
        pycolmap.extract_features(database, image_dir, image_names=names, camera_mode=mode,
                                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)

        matching = pycolmap.FeatureMatchingOptions()
        matching.use_gpu = False
        matching.num_threads = options.num_threads
        pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)

        pipeline = pycolmap.IncrementalPipelineOptions()
        pipeline.num_threads = options.num_threads
        pipeline.random_seed = options.seed
        pipeline.min_model_size = 3
        pipeline.multiple_models = False
        pipeline.min_num_matches = min(15, options.min_num_inliers)
        pipeline.mapper.init_min_num_inliers = options.min_num_inliers
        pipeline.mapper.abs_pose_min_num_inliers = min(30, options.min_num_inliers)
        pipeline.mapper.random_seed = options.seed
        pipeline.triangulation.random_seed = options.seed
        if options.known_intrinsics:
            pipeline.ba_refine_focal_length = False
            pipeline.ba_refine_principal_point = False
            pipeline.ba_refine_extra_params = False
            pipeline.mapper.abs_pose_refine_focal_length = False
            pipeline.mapper.abs_pose_refine_extra_params = False
        out_dir = tmp_path / "sparse"
        out_dir.mkdir()
        try:
            models = pycolmap.incremental_mapping(database, image_dir, out_dir, options=pipeline)
        except RuntimeError:
            models = {}
        if not models:
            return SfmResult(c2w, registered, 0, focal)
        rec = max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
        index = {name: i for i, name in enumerate(names)}
        for image in rec.images.values():
            if not image.has_pose:
                continue
            i = index[image.name]
            w2c = np.eye(4)
            w2c[:3, :] = image.cam_from_world().matrix()
            c2w[i] = torch.linalg.inv(torch.from_numpy(w2c))
            registered[i] = True
            focal[i] = float(image.camera.mean_focal_length())
        points, obs_point, obs_frame, obs_uv = [], [], [], []
        for p, point in enumerate(rec.points3D.values()):
            points.append(np.asarray(point.xyz, dtype=np.float64))
            for el in point.track.elements:
                image = rec.images[el.image_id]
                obs_point.append(p)
                obs_frame.append(index[image.name])
                obs_uv.append(np.asarray(image.points2D[el.point2D_idx].xy, dtype=np.float64))
        return SfmResult(c2w, registered, int(rec.num_points3D()), focal,
                         points=torch.from_numpy(np.array(points, dtype=np.float64).reshape(-1, 3)),
                         obs_point=torch.tensor(obs_point, dtype=torch.int64),
                         obs_frame=torch.tensor(obs_frame, dtype=torch.int64),
                         obs_uv=torch.from_numpy(np.array(obs_uv, dtype=np.float64).reshape(-1, 2)))
