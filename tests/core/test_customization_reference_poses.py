"""Reference set: bad inputs named, turntable geometry, pose files normalized like CustomDiffusion360."""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.cameras import CameraSet, save_camera_file
from mvcustom_core.customization.reference_poses import (
    ReferenceInputError, check_reference_inputs, estimate_reference_cameras, prepare_reference_set,
    reference_cameras_from_file,
    turntable_reference_cameras)
from mvcustom_core.synthetic import SyntheticScene, turntable_cameras


@pytest.fixture
def photos(subject_turntable):
    """``(views=4) -> (rgb, mask, cams)`` at 32²."""
    def make(views: int = 4):
        render, cams = subject_turntable(views, 32)
        return render.rgb, render.mask, cams

    return make


def test_bad_inputs_raise_errors_naming_the_input(photos):
    rgb, mask, cams = photos()
    with pytest.raises(ReferenceInputError, match="images: 1 reference image"):
        check_reference_inputs(rgb[:1], mask[:1], cams[:1])
    with pytest.raises(ReferenceInputError, match="cameras: 3 cameras for 4 images"):
        check_reference_inputs(rgb, mask, cams[:3])
    with pytest.raises(ReferenceInputError, match="masks: 3 masks for 4 images"):
        check_reference_inputs(rgb, mask[:3], cams)
    zero = mask.clone()
    zero[2] = 0
    with pytest.raises(ReferenceInputError, match=r"masks\[2\] is all zero"):
        check_reference_inputs(rgb, zero, cams)
    one = mask.clone()
    one[1] = 1
    with pytest.raises(ReferenceInputError, match=r"masks\[1\] is all one"):
        check_reference_inputs(rgb, one, cams)
    sizes = [rgb[0], rgb[1], torch.zeros(3, 32, 40)]
    with pytest.raises(ReferenceInputError, match=r"images\[2\] is 40x32 .* images\[0\] is 32x32"):
        check_reference_inputs(sizes, list(mask), cams[:3])
    with pytest.raises(ReferenceInputError, match="masks are 16x16 but images 32x32"):
        check_reference_inputs(rgb, mask[..., :16, :16], cams)
    with pytest.raises(ReferenceInputError, match="another aspect ratio"):
        check_reference_inputs(rgb, mask, cams.with_image_size((32, 64)))


def test_comfy_layout_masks_and_rescaled_cameras_are_accepted(photos):
    rgb, mask, cams = photos()
    imgs, masks, scaled = check_reference_inputs(rgb, mask[:, 0], cams.with_image_size((64, 64)))
    assert masks.shape == (4, 1, 32, 32) and torch.equal(masks, mask)
    torch.testing.assert_close(scaled.K, cams.K)  # rescaled back to the photos' size
    assert scaled.image_size == (32, 32)


def test_turntable_cameras_circle_the_origin_at_unit_distance_in_order():
    cams = turntable_reference_cameras(8, (48, 64), elevation_deg=30.0, fov_y_deg=50.0)
    torch.testing.assert_close(cams.centers.norm(dim=-1), torch.ones(8))
    # Every optical axis passes through the origin: the centre lies on the forward ray.
    to_origin = -cams.centers / cams.centers.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(cams.forward, to_origin, rtol=0, atol=1e-6)
    # Elevation: world up is -y, so the camera height is -y = sin(30°).
    torch.testing.assert_close(-cams.centers[:, 1], torch.full((8,), math.sin(math.radians(30.0))))
    azimuth = torch.atan2(cams.centers[:, 0], -cams.centers[:, 2])
    steps = torch.remainder(azimuth.diff(), 2 * math.pi)
    torch.testing.assert_close(steps, torch.full((7,), 2 * math.pi / 8))
    reverse = turntable_reference_cameras(8, (48, 64), elevation_deg=30.0, clockwise=True)
    steps = torch.remainder(torch.atan2(reverse.centers[:, 0], -reverse.centers[:, 2]).diff(), 2 * math.pi)
    torch.testing.assert_close(steps, torch.full((7,), 2 * math.pi - 2 * math.pi / 8))
    torch.testing.assert_close(cams.fov_y_deg(), torch.full((8,), 50.0))


def test_pose_file_cameras_are_normalized_to_the_unit_sphere_around_the_subject(tmp_path, photos):
    rgb, mask, _ = photos(5)
    # Cameras in an arbitrary world: orbit of radius 3.7 around (1, -2, 0.5).
    cams = turntable_cameras(5, elevation_deg=25.0, radius=3.7, image_size=(32, 32), fov_y_deg=45.0,
                             target=(1.0, -2.0, 0.5), dtype=torch.float64)
    path = save_camera_file(cams, tmp_path / "transforms.json", "transforms_json")
    loaded = reference_cameras_from_file(path, (32, 32))
    ref = prepare_reference_set(rgb, mask, loaded)
    # The optical axes meet at the subject: it moves to the origin and the cameras to radius 1.
    torch.testing.assert_close(ref.cameras.centers.norm(dim=-1), torch.ones(5), rtol=0, atol=1e-5)
    torch.testing.assert_close(ref.cameras.forward, -ref.cameras.centers, rtol=0, atol=1e-5)
    subject = torch.tensor([1.0, -2.0, 0.5, 1.0])
    torch.testing.assert_close((ref.new_from_old @ subject)[:3], torch.zeros(3), rtol=0, atol=1e-5)
    assert isinstance(ref.cameras, CameraSet) and len(ref) == 5


def _relative_rotation_errors_deg(a: CameraSet, b: CameraSet) -> torch.Tensor:
    """Angles between the pairwise relative rotations of two camera sets (invariant to their world frames)."""
    ra, rb = a.c2w[:, :3, :3], b.c2w[:, :3, :3]
    rel_a = ra[:, None].transpose(-1, -2) @ ra[None]
    rel_b = rb[:, None].transpose(-1, -2) @ rb[None]
    d = rel_a.transpose(-1, -2) @ rel_b
    return torch.rad2deg(torch.acos(((d.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)))


def test_structure_from_motion_recovers_the_orbit_up_to_a_similarity():
    pytest.importorskip("pycolmap")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # 8 views 8 degrees apart of the texture-rich subject on its ground (as in test_eval_sfm).
        cams = turntable_cameras(45, elevation_deg=25.0, radius=2.5, image_size=(256, 256), fov_y_deg=45.0)
        cams = cams[list(range(8))]
        render = SyntheticScene(seed=0).render(cams)
        estimated = estimate_reference_cameras(render.rgb, fov_y_deg=45.0)
    finally:
        torch.set_num_threads(torch_threads)
    torch.testing.assert_close(estimated.K, cams.K)  # assumed intrinsics = the true ones here
    est = prepare_reference_set(render.rgb, render.mask, estimated).cameras
    true = prepare_reference_set(render.rgb, render.mask, cams).cameras
    assert _relative_rotation_errors_deg(est, true).max() < 1.0
    # After normalization both sets have the same scale: pairwise camera distances agree.
    assert (torch.cdist(est.centers, est.centers) - torch.cdist(true.centers, true.centers)).abs().max() < 0.02
    with pytest.raises(ReferenceInputError, match="structure-from-motion registered"):
        estimate_reference_cameras(torch.full((3, 3, 64, 64), 0.5), fov_y_deg=45.0)  # featureless photos
