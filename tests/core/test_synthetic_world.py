"""Random worlds: subjects stand on the ground, named colours show, captions and paths follow the spec."""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.synthetic import SceneError, SyntheticScene
from mvcustom_core.synthetic.primitives import Pose, euler_xyz_from_matrix, rotation_xyz
from mvcustom_core.synthetic.textures import checker_texture, color_logit, make_wave_texture
from mvcustom_core.synthetic.world import (CATEGORIES, COLORS, GROUND_Y, PATH_KINDS, build_subject, build_world,
                                           random_path, render_clip, world_spec)

D = torch.float64


def _random_rotation(g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=D))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def test_euler_angles_round_trip_including_gimbal_lock():
    g = torch.Generator().manual_seed(0)
    rotations = [_random_rotation(g) for _ in range(20)]
    rotations += [rotation_xyz((a, s * 90.0, 0.0)) for a in (0.0, 37.0, -120.0) for s in (-1, 1)]
    rotations += [rotation_xyz((25.0, 90.0, 40.0))]  # gimbal lock: only ax - az is determined
    for r in rotations:
        torch.testing.assert_close(rotation_xyz(euler_xyz_from_matrix(r)), r, rtol=0, atol=1e-9)


def test_moved_pose_applies_the_world_motion_after_the_pose():
    g = torch.Generator().manual_seed(1)
    pose = Pose((0.3, -0.2, 0.5), (20.0, -35.0, 70.0))
    motion, offset = _random_rotation(g), (0.1, 0.8, -0.4)
    moved = pose.moved(motion, offset)
    x = torch.randn(10, 3, generator=g, dtype=D)  # local points
    world = x @ pose.rotation.T + torch.tensor(pose.center, dtype=D)
    expected = world @ motion.T + torch.tensor(offset, dtype=D)
    torch.testing.assert_close(x @ moved.rotation.T + torch.tensor(moved.center, dtype=D), expected, rtol=0, atol=1e-9)


def test_checker_texture_has_both_colours_at_square_centres_and_two_waves():
    a, b, f = (0.8, 0.2, 0.3), (0.1, 0.6, 0.9), 0.75
    tex = checker_texture(f, a, b)
    q = 1 / (4 * f)  # sin(2π f x) = ±1 here
    points = torch.tensor([[q, 0.0, q], [-q, 0.3, -q], [q, 0.0, -q], [-q, -0.2, q]], dtype=D)
    colours = tex.albedo(points)
    torch.testing.assert_close(colours[:2], torch.tensor([a, a], dtype=D), rtol=0, atol=1e-12)
    torch.testing.assert_close(colours[2:], torch.tensor([b, b], dtype=D), rtol=0, atol=1e-12)
    assert torch.allclose(tex.frequencies, torch.full((2,), f * math.sqrt(2), dtype=D))
    # Constant along y (a ground texture), and halfway between squares the mean logit.
    torch.testing.assert_close(tex.logit(torch.zeros(1, 3, dtype=D))[0], (color_logit(a) + color_logit(b)) / 2)


def test_wave_texture_base_and_saturation():
    base = color_logit((0.2, 0.5, 0.7))
    free = make_wave_texture(torch.Generator().manual_seed(3), max_frequency=4.0)
    fixed = make_wave_texture(torch.Generator().manual_seed(3), max_frequency=4.0, base=base)
    grey = make_wave_texture(torch.Generator().manual_seed(3), max_frequency=4.0, base=base, saturation=0.0)
    assert torch.equal(free.directions, fixed.directions) and torch.equal(free.phases, fixed.phases)
    torch.testing.assert_close(fixed.base, base)
    # Saturation 0: every wave changes the three channels' logits equally (brightness only).
    assert torch.allclose(grey.colors, grey.colors[:, :1].expand(-1, 3))
    q = torch.randn(200, 3, generator=torch.Generator().manual_seed(4), dtype=D)
    offsets = grey.logit(q) - base
    torch.testing.assert_close(offsets, offsets[:, :1].expand(-1, 3), rtol=0, atol=1e-12)
    assert offsets.std() > 0.5
    with pytest.raises(ValueError, match="saturation"):
        make_wave_texture(torch.Generator(), max_frequency=4.0, saturation=1.5)


def test_world_spec_is_deterministic_and_covers_the_categories():
    assert world_spec(5) == world_spec(5)
    specs = [world_spec(s) for s in range(200)]
    assert {s.category for s in specs} == set(CATEGORIES)
    assert len({(s.category, s.color, s.ground, s.sky) for s in specs}) > 100
    with pytest.raises(ValueError, match="non-negative"):
        world_spec(-1)


@pytest.mark.parametrize("seed", range(10))
def test_subject_stands_on_the_ground_and_is_centred_on_its_height(seed):
    spec = world_spec(seed)
    preset, _ = build_subject(spec)
    floating = SyntheticScene(subject=preset, ground=False)
    xs = torch.linspace(-1.3, 1.3, 261, dtype=D)
    xx, zz = torch.meshgrid(xs, xs, indexing="ij")
    up = torch.tensor([0.0, -1.0, 0.0], dtype=D)
    below = torch.stack([xx, torch.full_like(xx, 5.0), zz], -1).reshape(-1, 3)
    t, ids = floating.intersect(below, up.expand_as(below))  # vertical rays from under the ground, going up
    bottom = (5.0 - t[ids > 0]).max()
    t_top, ids_top = floating.intersect(below * torch.tensor([1.0, -1.0, 1.0], dtype=D), -up.expand_as(below))
    top = (-5.0 + t_top[ids_top > 0]).min()
    assert GROUND_Y - 1e-3 < bottom <= GROUND_Y + 1e-9, spec  # touches the ground, never sinks into it
    assert abs((top + bottom) / 2 - preset.center[1]) < 0.02, spec
    assert 0.5 < bottom - top < 1.8, spec


def test_named_subject_colours_show_in_the_render():
    # Lambertian shading scales the three channels equally, so the subject's chromaticity is its colour's.
    def chroma(c):
        c = torch.as_tensor(c, dtype=torch.float32)
        return c / c.sum()

    names = [n for n in COLORS if n not in ("white", "black")]
    checked = 0
    for seed in range(40):
        clip = render_clip(seed, 2, 48, supersample=1)
        if clip.spec.color not in names or clip.spec.category == "car":  # cars have dark wheels
            continue
        mean = clip.render.rgb.permute(1, 0, 2, 3)[:, clip.render.mask[:, 0].bool()].mean(dim=1)  # [3]
        nearest = min(names, key=lambda n: float((chroma(COLORS[n]) - chroma(mean)).norm()))
        assert nearest == clip.spec.color, (seed, clip.spec, mean)
        checked += 1
    assert checked >= 10


def test_captions_name_the_spec_and_drop_clauses():
    spec = world_spec(7)
    assert spec.caption() == f"photo of a{'n' if spec.color[0] in 'aeiou' else ''} {spec.color} {spec.category} on " \
                             f"{spec.ground} ground under a {spec.sky} sky"
    assert spec.caption(subject="<tok> toy", ground=False) == f"photo of a <tok> toy under a {spec.sky} sky"
    assert spec.caption(color=False, ground=False, sky=False) == f"photo of a{'n' if spec.category[0] in 'aeiou' else ''} " \
                                                                 f"{spec.category}"
    lengths = {len(render_clip(s, 1, 16, supersample=1).caption.split()) for s in range(30)}
    assert len(lengths) > 1  # some clips leave clauses out


@pytest.mark.parametrize("kind", PATH_KINDS)
def test_paths_start_looking_at_the_target(kind):
    target = (0.0, 0.2, 0.0)
    cams, got = random_path(torch.Generator().manual_seed(2), 8, (32, 32), target, kind=kind)
    assert got == kind and cams.num_frames == 8 and cams.c2w.dtype == torch.float32
    forward = cams.c2w[0, :3, 2]
    to_target = torch.tensor(target) - cams.centers[0]
    assert torch.allclose(forward, to_target / to_target.norm(), atol=1e-5)
    assert 2.2 < float(to_target.norm()) < 3.3
    assert float((cams.centers[-1] - cams.centers[0]).norm()) > 0.05  # the camera moves


def test_clip_shows_the_subject_in_every_frame():
    for seed in (1000, 1001, 1002):
        clip = render_clip(seed, 8, 32, supersample=1)
        area = clip.render.mask.mean(dim=(1, 2, 3))
        assert bool((area > 0.01).all()), (seed, clip.path, area)
        assert clip.render.rgb.shape == (8, 3, 32, 32)


def test_scene_refuses_a_wrong_number_of_textures():
    tex = checker_texture(1.0, (0.2, 0.2, 0.2), (0.8, 0.8, 0.8))
    with pytest.raises(SceneError, match="one texture per object"):
        SyntheticScene(subject="sphere", textures=(tex, tex))
    scene = SyntheticScene(subject="sphere", textures=(tex, tex, tex))
    assert scene.preset.center == (0.0, 0.0, 0.0)
