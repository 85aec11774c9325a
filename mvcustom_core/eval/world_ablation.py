"""The MVCustom job on held-out synthetic worlds, scored against their exact ground truth (docs/ablation.md).

A *case* is a held-out world (:mod:`mvcustom_core.synthetic.world`, seed below ``HELD_OUT_SEEDS``) with
turntable reference photos (subject on its ground, with masks) and a target orbit; its ground truth is
the exact render of the world along that orbit. One case is generated in four configurations, the
paper's inference ablation (Table A3) in miniature:

* ``backbone``: the prompt alone ("photo of a red toy on grass ground under a blue sky");
* ``customized``: + the customization (pose blocks with the reference bank, the subject token);
* ``dfr``: + depth-aware feature rendering, the anchor depth estimated on the ``customized`` output's
  anchor frame (a first pass, method.md §7.2 option 1) by the built-in depth model and scaled to the
  customized field's depth on the subject;
* ``dfr_clc``: + consistency-aware latent completion.

Scores (:func:`score_views`), all weight-free:

* ``ground_reproj_psnr``: the anchor view warped into every other view through the anchor's *true*
  depth and the known cameras, PSNR on the ground (the subject, as the anchor sees it and where the
  target sees it, left out): does the background move with the camera as the geometry says?
* ``anchor_reproj_psnr``: the same through the anchor depth the DFR configurations used (estimated).
* ``azimuth_error_deg`` / ``pose_accuracy``: each view's camera recovered by direct photometric
  alignment (Irani & Anandan, "About direct methods", 1999): among orbit cameras every degree within
  ±100° of the anchor, the one through which the anchor view warped by its true depth best matches the
  view (mean absolute error on the ground, both blurred by a 3×3 box); its azimuth error to the target,
  and the fraction of views within ``POSE_TOLERANCE_DEG``. A static background recovers the anchor's
  azimuth and scores the path's angular distance. COLMAP registers none of these 64×64 views, not even
  the true renders, so this replaces SfM's camera pose accuracy here.
* ``neighbour_reproj_psnr``: :func:`~mvcustom_core.eval.reprojection.reprojection_consistency` between
  neighbouring views through the true depth of every view.
* ``background_psnr`` / ``background_ssim``: each view against the true view of its camera on the pixels the
  true subject leaves free (ground and sky); the ground's texture is drawn per world, so a generated ground
  matches it in colour and layout at best, not pixel by pixel.
* ``subject_iou``: the subject segmented in each view by colour (5-nearest neighbours in RGB among
  reference pixels labelled by the reference masks) against the true mask of that view; ``subject_color_err``:
  distance of the segmented subject's mean colour to the references' (0-255 scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mvcustom_core.cameras import CameraSet
from mvcustom_core.eval.reprojection import masked_psnr, masked_ssim, reprojection_consistency
from mvcustom_core.synthetic.scene import SceneRender, SyntheticScene
from mvcustom_core.synthetic.world import HELD_OUT_SEEDS, WorldSpec, build_world, world_spec

__all__ = ["CONFIGS", "CONFIG_TITLES", "POSE_TOLERANCE_DEG", "DEFAULT_CUSTOMIZE_STEPS", "CUSTOMIZE_LR",
           "WorldCase", "Generated", "make_case", "turntable_references",
           "customization_config", "customize_case", "generate", "anchor_depth_from_image", "score_views", "recover_azimuths",
           "color_subject_mask", "run_case"]

CONFIGS = ("backbone", "customized", "dfr", "dfr_clc")
CONFIG_TITLES = {"backbone": "(a) backbone alone", "customized": "(b) + customization", "dfr": "(c) + DFR",
                 "dfr_clc": "(d) + DFR + CLC"}
POSE_TOLERANCE_DEG = 5.0
# Customization from the built-in pose prior: 10 steps; from the identity initialization the ablation takes 150. Both
# at the learning rate the prior's inner steps took (docs/ablation.md measures both, and other step counts and rates).
DEFAULT_CUSTOMIZE_STEPS = 10
CUSTOMIZE_LR = 2e-3
_SEARCH_DEG = 100


@dataclass
class WorldCase:
    """A held-out world, its references and a target orbit, all with ground truth.

    Attributes:
        spec, scene: the world.
        reference: references (``images [M, 3, H, W]``, masks, normalized cameras; ``prepare_reference_set``).
        targets: the target orbit in the normalized frame (subject at the origin, radius 1).
        truth: the exact render of the orbit (depth in normalized units).
        start_azimuth_deg, span_deg, elevation_deg, fov_y_deg: the orbit.
    """

    spec: WorldSpec
    scene: SyntheticScene
    reference: Any
    targets: CameraSet
    truth: SceneRender
    start_azimuth_deg: float
    span_deg: float
    elevation_deg: float
    fov_y_deg: float
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def anchor(self) -> int:
        return self.targets.num_frames // 2

    def prompt(self, subject: str | None = None) -> str:
        """The caption naming the world's ground and sky; ``subject`` replaces "red toy" (e.g. "<token> toy")."""
        return self.spec.caption(subject=subject)

    def orbit(self, azimuths_deg: Tensor) -> CameraSet:
        """Cameras of this orbit at other azimuths (normalized frame)."""
        from mvcustom_core.trajectories import orbit_position
        from mvcustom_core.cameras import look_at

        az = azimuths_deg.double()
        target = torch.zeros(3, dtype=torch.float64)
        eyes = orbit_position(target, torch.ones_like(az), az, torch.full_like(az, self.elevation_deg))
        h, w = self.targets.image_size
        return CameraSet.from_fov(look_at(eyes, target), self.fov_y_deg, (h, w)).to(dtype=torch.float32)

    @property
    def target_azimuths(self) -> Tensor:
        f = self.targets.num_frames
        return self.start_azimuth_deg + self.span_deg * torch.arange(f, dtype=torch.float64) / (f - 1)


def make_case(seed: int, *, size: int = 64, frames: int = 8, references: int = 8, span_deg: float | None = None,
              elevation_deg: float | None = None, radius: float = 2.6, fov_y_deg: float = 40.0) -> WorldCase:
    """The case of held-out world ``seed``: ``references`` turntable photos and an orbit of ``frames`` views.

    The orbit's start azimuth, span (60-120° unless given) and elevation (10-30° unless given) are drawn
    from the seed; references and targets share the radius and field of view, so the normalized frame
    has the references at radius 1 and the orbit too.
    """
    from mvcustom_core.trajectories import make_trajectory

    if not 0 <= seed < HELD_OUT_SEEDS:
        raise ValueError(f"held-out worlds have seeds in [0, {HELD_OUT_SEEDS}), got {seed}")
    spec = world_spec(seed)
    scene = build_world(spec)
    g = torch.Generator().manual_seed(seed * 7919 + 11)
    draw = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=g))  # noqa: E731
    start = draw(0.0, 360.0)
    span = span_deg if span_deg is not None else draw(60.0, 120.0)
    elevation = elevation_deg if elevation_deg is not None else draw(10.0, 30.0)
    reference = turntable_references(scene, references, start, size=size, radius=radius, fov_y_deg=fov_y_deg)
    orbit = dict(span_deg=span, start_azimuth_deg=start, elevation_deg=elevation, loop=False,
                 image_size=(size, size), fov_y_deg=fov_y_deg, dtype=torch.float32)
    world_targets = make_trajectory("orbit", frames, radius=radius, target=scene.subject_center, **orbit)
    truth = scene.render(world_targets, supersample=2)
    scale = 1.0 / radius
    truth = SceneRender(rgb=truth.rgb, depth=truth.depth * scale, mask=truth.mask, object_id=truth.object_id,
                        points=truth.points, coverage=truth.coverage)
    targets = make_trajectory("orbit", frames, radius=1.0, **orbit)
    return WorldCase(spec, scene, reference, targets, truth, start, span, elevation, fov_y_deg)


def turntable_references(scene: SyntheticScene, count: int, start_azimuth_deg: float, *, size: int = 64,
                         radius: float = 2.6, fov_y_deg: float = 40.0):
    """``count`` photos of ``scene``'s subject on a turntable (elevation 20°) from ``start_azimuth_deg`` on, with
    masks, as a normalized reference set (``prepare_reference_set``: subject at the origin, cameras at radius 1)."""
    from mvcustom_core.customization import prepare_reference_set
    from mvcustom_core.synthetic import turntable_cameras

    cams = turntable_cameras(count, elevation_deg=20.0, radius=radius, image_size=(size, size), fov_y_deg=fov_y_deg,
                             target=scene.subject_center, start_azimuth_deg=start_azimuth_deg)
    photos = scene.render(cams, supersample=2)
    return prepare_reference_set(photos.rgb, photos.coverage, cams, center=torch.tensor(scene.subject_center))


def customization_config(spec: WorldSpec, *, steps: int, lr: float, token_lr: float, seed: int = 0):
    """The customization settings of a world's subject: the token stands for "<colour> <category>" in the world's
    caption ("photo of a <token> robot on snow ground under a blue sky"); 4 target frames and 4 references a step,
    16 FeatureNeRF samples a ray."""
    from mvcustom_core.customization import TrainingConfig

    template = "photo of a {token} {class_word}" + spec.caption()[len(spec.caption(ground=False, sky=False)):]
    return TrainingConfig(class_word=spec.category, prompt_template=template, steps=steps, lr=lr, token_lr=token_lr,
                          frames=4, references=4, bank_views=8, featurenerf={"num_samples": 16}, seed=seed,
                          checkpoint_every=max(1, steps))


def customize_case(backbone, case: WorldCase, *, steps: int = DEFAULT_CUSTOMIZE_STEPS, lr: float = CUSTOMIZE_LR,
                   seed: int = 0, pose_prior: Any = "built-in", progress: Callable | None = None):
    """Train the case's customization (FeatureNeRF pose blocks + token) on its references.

    ``pose_prior``: where the pose blocks start: ``"built-in"`` (the built-in backbone's pose prior,
    :func:`~mvcustom_core.backbone.tiny_world.load_tiny_world_pose_prior`), a
    :class:`~mvcustom_core.customization.pose_prior.PosePrior`, or None (the identity initialization).
    ``lr``: of the pose weights and the token alike.
    """
    from mvcustom_core.customization import train_customization

    if isinstance(pose_prior, str) and pose_prior == "built-in":
        from mvcustom_core.backbone.tiny_world import load_tiny_world_pose_prior

        pose_prior = load_tiny_world_pose_prior()
    config = customization_config(case.spec, steps=steps, lr=lr, token_lr=lr, seed=seed)
    return train_customization(backbone, case.reference, config, progress=progress,
                               pose_init=None if pose_prior is None else pose_prior.weights).customization


@dataclass
class Generated:
    """One generated set: ``frames [F, 3, H, W]`` in [0, 1] and the anchor depth DFR used (``[H, W]``, or None)."""

    frames: Tensor
    anchor_depth: Tensor | None = None


@torch.no_grad()
def anchor_depth_from_image(depth_model, image: Tensor, unet, context, cam: CameraSet) -> Tensor:
    """The anchor's z-depth ``[H, W]`` (0 = none) from the depth model on ``image [3, H, W]``, in the scene's units.

    The model's disparity is known up to scale (``scripts/train_tiny_world.py``); the scale is the least-squares
    ``s = Σ x y / Σ x²`` of the disparity ``x`` against the customized field's inverse depth ``y`` on its opaque
    pixels (method.md §7.2, alignment to D(r)), so the ground keeps its place relative to the subject.
    """
    from mvcustom_core.backbone.tiny_world import estimate_disparity
    from mvcustom_core.inference.anchor_depth import field_depth
    from mvcustom_core.ops import resample_depth

    disparity = estimate_disparity(depth_model, image[None])[0]
    h, w = disparity.shape
    field, opacity = field_depth(unet, context, cam, (max(2, h // 8), max(2, w // 8)))
    x = resample_depth(disparity, tuple(field.shape), mode="nearest")
    ok = (field > 0) & (x > 0)
    if int(ok.sum()) < 1:
        # No opaque field pixel: put the median disparity at the anchor's distance to the subject (the origin).
        s = float(1.0 / (cam.centers[0].norm() * disparity[disparity > 0].median()))
    else:
        y = 1.0 / field[ok]
        s = float((x[ok] * y).sum() / (x[ok] ** 2).sum())
    z = 1.0 / (s * disparity)
    return torch.where((disparity > 1e-6) & torch.isfinite(z), z, torch.zeros_like(z))


def generate(backbone, case: WorldCase, config: str, *, customization=None, depth_model=None,
             first_pass: Tensor | None = None, steps: int = 25, seed: int = 0, cfg: float = 5.0) -> Generated:
    """Generate the case's orbit in one configuration of :data:`CONFIGS`.

    ``dfr`` and ``dfr_clc`` need ``customization``, ``depth_model`` and ``first_pass`` (the ``customized``
    frames, whose anchor view gives the anchor depth).
    """
    from mvcustom_core.backbone.sampler import decode_latents, sample
    from mvcustom_core.backbone.text import encode_prompt
    from mvcustom_core.customization import apply_customization
    from mvcustom_core.customization.pose_block import remove_pose_blocks
    from mvcustom_core.customization.token import add_subject_token, remove_subject_token
    from mvcustom_core.inference import CLCPlan, DFRPlan, mvcustom_sample

    if config not in CONFIGS:
        raise ValueError(f"config must be one of {CONFIGS}, got {config!r}")
    unet, text_encoder, tokenizer = backbone.unet, backbone.text_encoder, backbone.tokenizer
    with torch.no_grad():
        uncond = encode_prompt(text_encoder, tokenizer, [""])
        if config == "backbone":
            cond = encode_prompt(text_encoder, tokenizer, [case.prompt()])
            latents = sample(unet, cond, uncond, case.targets.num_frames, *case.targets.image_size, steps=steps,
                             cfg=cfg, seed=seed)
            return Generated(decode_latents(backbone.vae, latents))
    if customization is None:
        raise ValueError(f"config {config!r} needs a customization")
    ctx = apply_customization(unet, customization)
    add_subject_token(text_encoder, tokenizer, customization.token, embedding=customization.token_embedding)
    try:
        with torch.no_grad():
            cond = encode_prompt(text_encoder, tokenizer, [case.prompt(f"{customization.token} {case.spec.category}")])
            dfr = clc = depth = None
            if config in ("dfr", "dfr_clc"):
                if depth_model is None or first_pass is None:
                    raise ValueError(f"config {config!r} needs the depth model and the first pass's frames")
                depth = anchor_depth_from_image(depth_model, first_pass[case.anchor], unet, ctx,
                                                case.targets[case.anchor])
                # Already in scene units: the "metric" kind (z = s·x) with s = 1; the paper's 35-of-50 fraction.
                dfr = DFRPlan(anchor=case.anchor, depth=depth, depth_valid=depth > 0, depth_kind="metric",
                              scale=1.0)
                clc = CLCPlan() if config == "dfr_clc" else None
            latents = mvcustom_sample(unet, cond, uncond, case.targets, pose_context=ctx, dfr=dfr, clc=clc,
                                      seed=seed, steps=steps, cfg=cfg)
            return Generated(decode_latents(backbone.vae, latents), depth)
    finally:
        remove_subject_token(text_encoder)
        remove_pose_blocks(unet)


# ------------------------------------------------------------------------------------------ scores
def _blur(x: Tensor) -> Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def _anchor_geometry(depth: Tensor, anchor_cam: CameraSet, cams: CameraSet):
    """The anchor's depth mesh rasterized into ``cams`` (anchor at index 0 of the geometry's cameras)."""
    from mvcustom_core.inference.dfr import AnchorGeometry

    return AnchorGeometry(0, CameraSet.concat([anchor_cam, cams]),
                          torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth)))


def _anchor_warp(geometry, image: Tensor) -> tuple[Tensor, Tensor]:
    """``image [C, H, W]`` of the anchor rendered through ``geometry``: ``([N, C, H, W], coverage [N, 1, H, W])``."""
    rendered, coverage = geometry.render(image)
    return rendered[1:], coverage[1:]


def _ground_depth(case: WorldCase) -> Tensor:
    """The anchor's true depth on the ground only (0 on the subject and the sky)."""
    truth, a = case.truth, case.anchor
    return torch.where(truth.mask[a, 0] > 0, torch.zeros_like(truth.depth[a, 0]), truth.depth[a, 0])


def _azimuth_search(case: WorldCase, search_deg: int) -> tuple[Tensor, Any, Tensor]:
    """Candidate azimuths, their geometry and the ground pixels each candidate can score (cached per case)."""
    key = ("azimuth_search", search_deg)
    if key not in case.cache:
        a = case.anchor
        azimuths = float(case.target_azimuths[a]) + torch.arange(-search_deg, search_deg + 1, dtype=torch.float64)
        cams = case.orbit(azimuths)
        geometry = _anchor_geometry(_ground_depth(case), case.targets[a], cams)
        subject, coverage = _anchor_warp(geometry, case.truth.mask[a])
        candidate_mask = case.scene.render(_world_cams(case, cams)).mask  # [N, 1, H, W]
        covered = (coverage > 0) & (subject < 0.5) & (candidate_mask < 0.5)
        case.cache[key] = (azimuths, geometry, covered)
    return case.cache[key]


def recover_azimuths(frames: Tensor, case: WorldCase, *, search_deg: int = _SEARCH_DEG) -> Tensor:
    """Each view's orbit azimuth (degrees) by direct alignment with the anchor view (module docstring); ``[F]``.

    The anchor view is warped through the true anchor depth into orbit cameras every 1° within ±``search_deg`` of
    the anchor's azimuth; a view's azimuth is the candidate with the lowest mean absolute error on pixels covered
    by ground that the true subject covers in neither the anchor nor the candidate (at least 5 % of the image).
    """
    azimuths, geometry, covered = _azimuth_search(case, search_deg)
    warped, _ = _anchor_warp(geometry, _blur(frames[case.anchor][None])[0])
    views = _blur(frames)
    enough = covered.flatten(1).float().mean(1) >= 0.05
    errors = torch.full((frames.shape[0], len(azimuths)), math.inf, dtype=torch.float64)
    for f in range(frames.shape[0]):
        diff = (warped - views[f][None]).abs().mean(1, keepdim=True)  # [N, 1, H, W]
        mae = (diff * covered).flatten(1).sum(1) / covered.flatten(1).sum(1).clamp_min(1)
        errors[f] = torch.where(enough, mae.double(), torch.full_like(mae.double(), math.inf))
    return azimuths[errors.argmin(dim=1)]


def _world_cams(case: WorldCase, cams: CameraSet) -> CameraSet:
    """Normalized-frame cameras back in the world frame (undo ``prepare_reference_set``'s similarity)."""
    new_from_old = case.reference.new_from_old.double()
    s = float(new_from_old[:3, :3].det() ** (1 / 3))
    c2w = cams.c2w.double().clone()
    c2w[:, :3, 3] /= s  # X_new = s (X_old - p): undo the scale, then the translation
    c2w[:, :3, 3] -= new_from_old[:3, 3] / s
    return CameraSet(K=cams.K, c2w=c2w.to(cams.c2w.dtype), image_size=cams.image_size)


def color_subject_mask(frames: Tensor, images: Tensor, masks: Tensor, *, k: int = 5, samples: int = 1000,
                       seed: int = 0) -> Tensor:
    """``[F, 1, H, W]`` 0/1: pixels whose ``k`` nearest reference pixels in RGB are mostly subject pixels.

    ``images [M, 3, H, W]``, ``masks [M, 1, H, W]`` (1 = subject, > 0.5 counts); ``samples`` reference pixels are
    drawn, half subject, half background.
    """
    g = torch.Generator().manual_seed(seed)
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3)
    labels = (masks.reshape(-1) > 0.5)
    chosen = []
    for cls in (True, False):
        idx = torch.nonzero(labels == cls).flatten()
        chosen.append(idx[torch.randint(len(idx), (samples // 2,), generator=g)] if len(idx) else idx)
    idx = torch.cat(chosen)
    bank, bank_labels = pixels[idx], labels[idx].float()
    query = frames.permute(0, 2, 3, 1).reshape(-1, 3)
    nearest = torch.cdist(query, bank).topk(k, largest=False).indices  # [P, k]
    votes = bank_labels[nearest].mean(1)
    f, _, h, w = frames.shape
    return (votes > 0.5).float().reshape(f, 1, h, w)


def _iou(a: Tensor, b: Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    union = (a | b).sum()
    return float((a & b).sum() / union) if union > 0 else math.nan


def score_views(frames: Tensor, case: WorldCase, *, anchor_depth: Tensor | None = None) -> dict[str, float]:
    """Every score of one generated set (module docstring). ``frames [F, 3, H, W]`` in [0, 1]."""
    a, truth, cams = case.anchor, case.truth, case.targets
    others = [f for f in range(frames.shape[0]) if f != a]
    out: dict[str, float] = {}

    def anchor_psnr(depth: Tensor, key: Any) -> float:
        if key not in case.cache:  # the geometry depends on the case (and the DFR depth), not on the frames
            geometry = _anchor_geometry(depth, cams[a], cams)
            case.cache[key] = (geometry, _anchor_warp(geometry, truth.mask[a])[0])
        geometry, subject = case.cache[key]
        warped, coverage = _anchor_warp(geometry, frames[a])
        keep = (coverage > 0) & (subject < 0.5) & (truth.mask < 0.5)
        values = [float(masked_psnr(warped[f:f + 1], frames[f:f + 1], keep[f:f + 1])) for f in others
                  if keep[f].float().mean() >= 0.05]
        return sum(values) / len(values) if values else math.nan

    out["ground_reproj_psnr"] = anchor_psnr(_ground_depth(case), "ground_geometry")
    if anchor_depth is not None:
        out["anchor_reproj_psnr"] = anchor_psnr(anchor_depth, ("anchor_geometry", anchor_depth.data_ptr()))
    recovered = recover_azimuths(frames, case)
    error = (recovered - case.target_azimuths).abs()[others]
    out["azimuth_error_deg"] = float(error.mean())
    out["pose_accuracy"] = float((error < POSE_TOLERANCE_DEG).double().mean())
    depth = torch.where(torch.isfinite(truth.depth), truth.depth, torch.zeros_like(truth.depth))
    out["neighbour_reproj_psnr"] = reprojection_consistency(frames, depth, cams).mean_psnr
    background = truth.mask < 0.5
    out["background_psnr"] = float(masked_psnr(frames, truth.rgb, background).nanmean())
    out["background_ssim"] = float(masked_ssim(frames, truth.rgb, background).nanmean())
    segmented = color_subject_mask(frames, case.reference.images, case.reference.masks)
    out["subject_iou"] = sum(_iou(segmented[f], truth.mask[f]) for f in range(frames.shape[0])) / frames.shape[0]
    ref_subject = case.reference.images.permute(1, 0, 2, 3)[:, case.reference.masks[:, 0] > 0.5].mean(1)
    mine = frames.permute(1, 0, 2, 3)[:, segmented[:, 0] > 0.5]
    out["subject_color_err"] = float((mine.mean(1) - ref_subject).norm() * 255) if mine.shape[1] else math.nan
    return out


def run_case(backbone, depth_model, seed: int, *, customize_steps: int = DEFAULT_CUSTOMIZE_STEPS, steps: int = 25,
             sample_seed: int = 0, pose_prior: Any = "built-in", customize_lr: float = CUSTOMIZE_LR,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Make, customize (from ``pose_prior``, see :func:`customize_case`), generate (all of :data:`CONFIGS`) and score
    one case.

    Returns ``{"case": WorldCase, "customization": ..., "generated": {config: Generated}, "scores": {config:
    dict}, "truth_scores": dict}`` (the ground truth scored like a generated set, an upper reference).
    """
    say = progress or (lambda _message: None)
    case = make_case(seed)
    say(f"world {seed}: {case.prompt()} (orbit {case.span_deg:.0f} deg)")
    customization = customize_case(backbone, case, steps=customize_steps, lr=customize_lr, seed=sample_seed,
                                   pose_prior=pose_prior)
    generated = {"backbone": generate(backbone, case, "backbone", steps=steps, seed=sample_seed)}
    generated["customized"] = generate(backbone, case, "customized", customization=customization, steps=steps,
                                       seed=sample_seed)
    for config in ("dfr", "dfr_clc"):
        generated[config] = generate(backbone, case, config, customization=customization, depth_model=depth_model,
                                     first_pass=generated["customized"].frames, steps=steps, seed=sample_seed)
    scores = {c: score_views(g.frames, case, anchor_depth=generated["dfr"].anchor_depth)
              for c, g in generated.items()}
    return {"case": case, "customization": customization, "generated": generated, "scores": scores,
            "truth_scores": score_views(case.truth.rgb, case, anchor_depth=generated["dfr"].anchor_depth)}
