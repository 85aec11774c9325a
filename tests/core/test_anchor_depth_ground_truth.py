"""Anchor depth of every supported kind, aligned to the subject, recovers the synthetic scene's true depth, and DFR
then covers the ground plane where the anchor sees it.

Scene: ``SyntheticScene`` (default subject on the ground), anchor and three targets at 128 x 128. The alignment's
reference is what the customization's field would give: the true z-depth on subject pixels at latent resolution
(16 x 16). Each kind is fed the true depth as a depth source would give it:
- metric: z · 2.7 (metres of another scale);
- relative: (z − 0.8) / 3.1;
- disparity IMAGE, near = bright, normalized and percentile-clipped: 1/z mapped so that its 15th percentile is black
  and its 98th white, then clipped (the far 15 % and the nearest 2 % saturate; ZoeDepth's preprocessor uses these
  two percentiles on depth);
- depth IMAGE, near = bright, as comfyui_controlnet_aux's ZoeDepth preprocessor: 1 − (z − p2)/(p85 − p2), clipped.
Criteria (issue 11): aligned depth within 1 % of the truth on every valid pixel (measured max: metric 0.006 %,
relative 0.024 %, disparity image 0.164 %, ZoeDepth image 0.021 %); DFR coverage of the ground plane against
analytic visibility, IoU >= 0.97 at 128 px over all visible ground, out to the horizon (measured 0.993-0.9996 for
every kind). Analytic visibility: the ground point is the first hit along the anchor's ray, projects inside the
anchor's pixel-centre hull, and the four anchor pixels around it carry depth. Two one-pixel bands are left out of
the comparison, each where the samples cannot decide:
- on the anchor's side, ground points whose four surrounding anchor pixels do not all see ground: the silhouette
  lies somewhere inside that anchor pixel, so no mesh over the samples can say whether the point is seen; any
  method must guess. (On grazing ground one anchor pixel is a long strip of ground, up to 0.03 of the IoU.)
- on the target's side, pixels within one pixel of the target's own subject/ground silhouette, where the silhouette
  guards uncover by design (test_dfr_ground_truth.py); without guards the anchor's band alone gives 0.984-0.998.
Before the mesh kept planes at grazing incidence (a face was cut at a relative depth jump > 10 % whatever the
surface), the far ground lost its faces: IoU 0.79-0.96 with the target band alone.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mvcustom_core.cameras import CameraSet
from mvcustom_core.depth import depth_map_from_image
from mvcustom_core.inference.dfr import AnchorGeometry, DFRPlan, align_anchor_depth

synthetic = pytest.importorskip("mvcustom_core.synthetic")

SIZE = (128, 128)
LATENT = (16, 16)
VIEWS = [(0.0, 20.0), (-20.0, 15.0), (12.0, 25.0), (25.0, 20.0)]  # (azimuth, elevation); the first is the anchor


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    return torch.quantile(x.flatten(), q)


@pytest.fixture(scope="module")
def world():
    scene = synthetic.SyntheticScene(seed=1, subject="default", max_frequency=3.0)
    cams = CameraSet.concat([synthetic.turntable_cameras(1, image_size=SIZE, start_azimuth_deg=a, elevation_deg=e,
                                                         dtype=torch.float64) for a, e in VIEWS])
    truth = scene.render(cams)
    field = scene.render(cams[0].with_image_size(LATENT))
    subject = field.mask[0, 0] > 0
    reference = torch.where(subject, field.depth[0, 0], torch.zeros_like(field.depth[0, 0]))
    return scene, cams, truth, reference, subject


def _sources(z: torch.Tensor, finite: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor, str]]:
    """``name -> (values, valid, kind)`` for the true z-depth ``[H, W]`` (inf on the sky)."""
    zero = torch.zeros_like(z)
    inverse = torch.where(finite, 1 / z, zero)
    lo, hi = _quantile(inverse, 0.15), _quantile(inverse, 0.98)
    disparity_image = ((inverse - lo) / (hi - lo)).clamp(0, 1)
    far = torch.where(finite, z, torch.full_like(z, 1e9))
    lo, hi = _quantile(far, 0.02), _quantile(far, 0.85)
    zoe_image = (1 - (far - lo) / (hi - lo)).clamp(0, 1)
    out = {"metric": (torch.where(finite, z * 2.7, zero), finite, "metric"),
           "relative": (torch.where(finite, (z - 0.8) / 3.1, zero), finite, "relative")}
    for name, image, encoding in (("disparity image", disparity_image, "disparity, near = bright"),
                                  ("zoe depth image", zoe_image, "depth, near = bright")):
        depth = depth_map_from_image(image[None].float(), encoding, "clipped ends")
        assert depth.valid.float().mean() < 0.9  # the clipping really removed pixels
        out[name] = (depth.values[0], depth.valid[0], depth.kind)
    return out


def _aligned(world, name):
    _, cams, truth, reference, subject = world
    z = truth.depth[0, 0]
    values, valid, kind = _sources(z, truth.valid[0, 0])[name]
    plan = DFRPlan(anchor=0, depth=values.float(), depth_valid=valid, depth_kind=kind)
    return align_anchor_depth(plan, cams.to(dtype=torch.float32), reference.float(), subject), z


def _analytic_visibility(scene, cams, truth, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For the targets, ``[F-1, H, W]`` bool each: visible (first hit from the anchor, inside its pixel-centre hull,
    depth around) and undecided (the four anchor pixels around the point do not all see its object)."""
    anchor = cams[0]
    h, w = SIZE
    points = truth.points[1:].permute(0, 2, 3, 1).reshape(-1, 3)
    uv, z = anchor.project(points)
    u, v = uv[0, :, 0], uv[0, :, 1]
    in_hull = (u >= 0.5) & (u <= w - 0.5) & (v >= 0.5) & (v <= h - 0.5) & (z[0] > 0)
    to_point = points - anchor.centers[0]
    dist = to_point.norm(dim=-1)
    first, _ = scene.intersect(anchor.centers[0].expand_as(points), to_point / dist[:, None])
    x0 = (u - 0.5).floor().long().clamp(0, w - 2)
    y0 = (v - 0.5).floor().long().clamp(0, h - 2)
    corners = [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)]
    around = torch.stack([valid[y, x] for y, x in corners]).all(0)
    anchor_id, own_id = truth.object_id[0, 0], truth.object_id[1:, 0].reshape(-1)
    same = torch.stack([anchor_id[y, x] == own_id for y, x in corners]).all(0)
    visible = in_hull & (first >= dist * (1 - 1e-6)) & around
    return visible.reshape(-1, h, w), (visible & ~same).reshape(-1, h, w)


def _silhouette_band(object_id: torch.Tensor) -> torch.Tensor:
    """``[F, H, W]`` bool: pixels within one pixel of a change of object (subject / ground)."""
    edge = torch.zeros_like(object_id, dtype=torch.bool)
    for dim in (-1, -2):
        change = object_id.diff(dim=dim) != 0
        pad_after = (0, 1) if dim == -1 else (0, 0, 0, 1)
        pad_before = (1, 0) if dim == -1 else (0, 0, 1, 0)
        edge |= F.pad(change, pad_after) | F.pad(change, pad_before)
    return F.max_pool2d(edge.double()[:, None], 3, 1, 1)[:, 0].bool()


@pytest.mark.parametrize("name", ["metric", "relative", "disparity image", "zoe depth image"])
def test_aligned_depth_recovers_true_depth_within_one_percent(world, name):
    aligned, z = _aligned(world, name)
    error = ((aligned.depth.double() - z).abs() / z)[aligned.valid]
    assert aligned.valid.float().mean() > 0.75
    assert float(error.max()) < 0.01, float(error.max())
    assert aligned.fit is not None and aligned.fit.residual < 0.001


@pytest.mark.parametrize("name", ["metric", "relative", "disparity image", "zoe depth image"])
def test_dfr_covers_the_visible_ground(world, name):
    scene, cams, truth, *_ = world
    aligned, _ = _aligned(world, name)
    geometry = AnchorGeometry(0, cams.to(dtype=torch.float32), aligned.depth)
    coverage = geometry.coverage(SIZE)[1:, 0].bool()
    visible, undecided = _analytic_visibility(scene, cams, truth, aligned.valid)
    ground = truth.object_id[1:, 0] == synthetic.scene.GROUND_ID
    region = ground & ~undecided & ~_silhouette_band(truth.object_id[1:, 0])
    assert (truth.points[1:].norm(dim=1)[visible & region] > 9).any()  # ground far out (clipped images: to 9.7)
    for f in range(len(VIEWS) - 1):
        a, b = coverage[f] & region[f], visible[f] & region[f]
        assert b.sum() > 1000, f
        assert float((a & b).sum() / (a | b).sum()) >= 0.97, (f, float((a & b).sum() / (a | b).sum()))


def test_field_depth_alone_leaves_the_ground_uncovered(world):
    """The field's depth exists only on the subject: with it the ground gets no features, with an estimate it does."""
    scene, cams, truth, reference, subject = world
    field_only = AnchorGeometry(0, cams.to(dtype=torch.float32), reference.float())
    ground = truth.object_id[1:, 0] == synthetic.scene.GROUND_ID
    region = ground & (truth.points[1:].norm(dim=1) < 5.0) & ~_silhouette_band(truth.object_id[1:, 0])
    aligned, _ = _aligned(world, "disparity image")
    estimate = AnchorGeometry(0, cams.to(dtype=torch.float32), aligned.depth)
    for f in range(len(VIEWS) - 1):
        # measured 0.6-1.5 %: the field's 16 x 16 silhouette is up to half a latent pixel (4 px) wider than the subject
        assert float((field_only.coverage(SIZE)[f + 1, 0].bool() & region[f]).sum() / region[f].sum()) < 0.05
        assert float((estimate.coverage(SIZE)[f + 1, 0].bool() & region[f]).sum() / region[f].sum()) > 0.25  # measured 0.31-0.59
