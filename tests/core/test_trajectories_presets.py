"""Geometric trajectory presets against analytic ground truth (radius, look-at, steps, signs, image size)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from mvcustom_core.trajectories import PRESETS, TrajectoryError, make_trajectory, preset_parameters

TARGET = (0.3, -0.2, 0.5)
UP = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)  # world up is -y


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))


def _looks_at(cams, target) -> None:
    to_target = torch.as_tensor(target, dtype=torch.float64) - cams.centers
    # forward · (target − centre) = |target − centre| holds only when forward points exactly at the target
    torch.testing.assert_close((cams.forward * to_target).sum(-1), to_target.norm(dim=-1), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- orbit
@pytest.mark.parametrize("direction", ["ccw", "cw"])
def test_orbit_radius_look_at_equal_steps_and_direction(direction):
    cams = make_trajectory("orbit", 8, radius=2.5, elevation_deg=20.0, target=TARGET, direction=direction)
    cams.validate()
    offset = cams.centers - torch.tensor(TARGET, dtype=torch.float64)
    torch.testing.assert_close(offset.norm(dim=-1), torch.full((8,), 2.5, dtype=torch.float64))
    _looks_at(cams, TARGET)
    # height above the target: r sin(el) towards world up
    torch.testing.assert_close(offset @ UP, torch.full((8,), 2.5 * math.sin(math.radians(20.0)), dtype=torch.float64))
    horizontal = offset - (offset @ UP)[:, None] * UP
    nxt = torch.roll(horizontal, -1, 0)
    # a closed 360° loop of 8 frames: 45° between neighbours, including last -> first
    torch.testing.assert_close(_angle_deg(horizontal, nxt), torch.full((8,), 45.0, dtype=torch.float64))
    turn = torch.linalg.cross(horizontal, nxt, dim=-1) @ UP  # > 0: counter-clockwise seen from above
    assert bool((turn > 0).all()) if direction == "ccw" else bool((turn < 0).all())


def test_orbit_open_span_includes_both_ends_and_starts_on_minus_z():
    cams = make_trajectory("orbit", 5, span_deg=90.0, elevation_deg=0.0, loop=True)
    # 90° is not a full turn, so loop does not apply: 4 steps of 22.5°, first at azimuth 0 (the -z side)
    torch.testing.assert_close(cams.centers[0], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(cams.centers[-1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))  # ccw -> +x
    steps = _angle_deg(cams.centers[:-1], cams.centers[1:])
    torch.testing.assert_close(steps, torch.full((4,), 22.5, dtype=torch.float64))
    # azimuth 0, elevation 0 is the identity rotation
    torch.testing.assert_close(cams.rotations[0], torch.eye(3, dtype=torch.float64))


def test_spiral_radius_and_elevation_end_values():
    cams = make_trajectory("spiral", 9, radius_start=2.0, radius_end=1.0, elevation_start_deg=0.0,
                           elevation_end_deg=40.0, target=TARGET)
    offset = cams.centers - torch.tensor(TARGET, dtype=torch.float64)
    torch.testing.assert_close(offset.norm(dim=-1), torch.linspace(2.0, 1.0, 9, dtype=torch.float64))
    elevation = torch.rad2deg(torch.asin(offset @ UP / offset.norm(dim=-1)))
    torch.testing.assert_close(elevation, torch.linspace(0.0, 40.0, 9, dtype=torch.float64))
    _looks_at(cams, TARGET)


def test_lemniscate_centres_satisfy_bernoulli_equation():
    a = 0.4
    cams = make_trajectory("lemniscate", 12, amplitude=a, target=TARGET, radius=2.0, elevation_deg=10.0)
    base = make_trajectory("static", 1, target=TARGET, radius=2.0, elevation_deg=10.0)
    d = cams.centers - base.centers
    right, up, fwd = base.rotations[0, :, 0], -base.rotations[0, :, 1], base.rotations[0, :, 2]
    x, y = d @ right, d @ up
    torch.testing.assert_close(d @ fwd, torch.zeros(12, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close((x**2 + y**2) ** 2, a**2 * (x**2 - y**2), atol=1e-12, rtol=0)
    assert float(x.max()) == pytest.approx(a) and float(x.min()) == pytest.approx(-a, abs=0.05)
    _looks_at(cams, TARGET)


# ---------------------------------------------------------------------------------------------- dolly / zoom
@pytest.mark.parametrize("name, sign", [("dolly_in", 1.0), ("dolly_out", -1.0), ("dolly", 1.0)])
def test_dolly_changes_distance_linearly_along_the_viewing_axis(name, sign):
    cams = make_trajectory(name, 6, distance=0.5, radius=2.0, target=TARGET)
    move = cams.centers - cams.centers[0]
    t = torch.linspace(0, 1, 6, dtype=torch.float64)
    torch.testing.assert_close(move, sign * 0.5 * t[:, None] * cams.forward[0])
    dist = (cams.centers - torch.tensor(TARGET, dtype=torch.float64)).norm(dim=-1)
    torch.testing.assert_close(dist, 2.0 - sign * 0.5 * t)
    torch.testing.assert_close(cams.rotations, cams.rotations[:1].expand(6, 3, 3))


@pytest.mark.parametrize("name, ratio", [("zoom_in", 3.0), ("zoom_out", 1 / 3.0)])
def test_zoom_scales_focal_geometrically_with_the_camera_fixed(name, ratio):
    cams = make_trajectory(name, 5, factor=3.0, fov_y_deg=40.0)
    f = cams.K[:, 0, 0]
    torch.testing.assert_close(f[-1] / f[0], torch.tensor(ratio, dtype=torch.float64))
    torch.testing.assert_close(f[1:] / f[:-1], torch.full((4,), ratio**0.25, dtype=torch.float64))
    torch.testing.assert_close(cams.K[:, 1, 1], f)
    torch.testing.assert_close(cams.fov_y_deg()[0], torch.tensor(40.0, dtype=torch.float64))
    torch.testing.assert_close(cams.c2w, cams.c2w[:1].expand(5, 4, 4))


@pytest.mark.parametrize("name", ["dolly_zoom_in", "dolly_zoom_out"])
def test_dolly_zoom_keeps_the_subject_plane_size_and_changes_the_background(name):
    cams = make_trajectory(name, 7, factor=2.0, radius=2.0, target=TARGET, elevation_deg=10.0)
    dist = (cams.centers - torch.tensor(TARGET, dtype=torch.float64)).norm(dim=-1)
    expected_end = 1.0 if name == "dolly_zoom_in" else 4.0
    assert float(dist[-1]) == pytest.approx(expected_end)
    right, fwd = cams.rotations[0, :, 0], cams.forward[0]
    target = torch.tensor(TARGET, dtype=torch.float64)
    subject = torch.stack([target - 0.3 * right, target + 0.3 * right])  # in the target plane
    background = torch.stack([target + fwd - 0.3 * right, target + fwd + 0.3 * right])  # 1 unit behind
    uv, _ = cams.project(subject)
    width = (uv[:, 1] - uv[:, 0]).norm(dim=-1)
    torch.testing.assert_close(width, width[:1].expand(7))
    uv_bg, _ = cams.project(background)
    width_bg = (uv_bg[:, 1] - uv_bg[:, 0]).norm(dim=-1)
    assert float((width_bg[-1] - width_bg[0]).abs()) > 0.05 * float(width_bg[0])


# ---------------------------------------------------------------------------------------------- turns / moves
@pytest.mark.parametrize("name, axis_index", [("pan", 1), ("tilt", 0), ("roll", 2)])
def test_turns_rotate_about_the_camera_own_axis_with_the_stated_sign(name, axis_index):
    angle = 40.0
    cams = make_trajectory(name, 5, angle_deg=angle, target=TARGET, radius=2.0, azimuth_deg=30.0, elevation_deg=20.0)
    torch.testing.assert_close(cams.centers, cams.centers[:1].expand(5, 3))
    relative = cams.rotations[0].T @ cams.rotations  # [F, 3, 3] in the first camera's frame
    e = torch.eye(3, dtype=torch.float64)[axis_index]
    torch.testing.assert_close(relative[:, :, axis_index], e.expand(5, 3))  # the turn axis stays put
    turned = torch.rad2deg(torch.acos(((torch.diagonal(relative, dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)))
    torch.testing.assert_close(turned, torch.linspace(0, angle, 5, dtype=torch.float64))
    last = cams.rotations[-1]
    right0, down0, fwd0 = cams.rotations[0].T
    if name == "pan":  # > 0 turns right: the view moves towards the old right
        assert float(last[:, 2] @ right0) > 0
    elif name == "tilt":  # > 0 tilts up: the view moves towards the old up (-down)
        assert float(last[:, 2] @ -down0) > 0
    else:  # > 0 turns the camera clockwise seen from behind: right swings towards down
        assert float(last[:, 0] @ down0) > 0


@pytest.mark.parametrize("name, axis_index, sign", [("truck", 0, 1.0), ("pedestal", 1, -1.0), ("dolly", 2, 1.0)])
def test_moves_translate_along_the_camera_own_axis(name, axis_index, sign):
    cams = make_trajectory(name, 4, distance=-0.6, target=TARGET, azimuth_deg=70.0, elevation_deg=-15.0)
    t = torch.linspace(0, 1, 4, dtype=torch.float64)
    expected = sign * -0.6 * t[:, None] * cams.rotations[0, :, axis_index]
    torch.testing.assert_close(cams.centers - cams.centers[0], expected)
    torch.testing.assert_close(cams.rotations, cams.rotations[:1].expand(4, 3, 3))


def test_static_repeats_one_camera_looking_at_the_target():
    cams = make_trajectory("static", 3, target=TARGET, radius=1.5)
    torch.testing.assert_close(cams.c2w, cams.c2w[:1].expand(3, 4, 4))
    _looks_at(cams, TARGET)


# ---------------------------------------------------------------------------------------------- entry point
@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("frames", [1, 7])
def test_every_preset_gives_valid_cameras(name, frames):
    cams = make_trajectory(name, frames, image_size=(48, 64))
    assert cams.num_frames == frames and cams.image_size == (48, 64)
    cams.validate(where=name)


@pytest.mark.parametrize("frames", [0, -3, 2.5, True, "8"])
def test_bad_frame_counts_name_the_input(frames):
    with pytest.raises(TrajectoryError, match="frames"):
        make_trajectory("orbit", frames)


def test_unknown_names_parameters_and_out_of_range_values_are_named():
    with pytest.raises(TrajectoryError, match="unknown trajectory preset 'orbitt'"):
        make_trajectory("orbitt", 4)
    with pytest.raises(TrajectoryError, match="no parameter 'radiuss'"):
        make_trajectory("orbit", 4, radiuss=2.0)
    with pytest.raises(TrajectoryError, match="elevation_deg"):
        make_trajectory("orbit", 4, elevation_deg=95.0)
    with pytest.raises(TrajectoryError, match="direction"):
        make_trajectory("orbit", 4, direction="up")
    with pytest.raises(TrajectoryError, match="radius"):
        make_trajectory("static", 2, radius=0.0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_specs_match_the_preset_defaults(name):
    specs = preset_parameters(name)
    assert specs, name
    for pname, spec in specs.items():
        assert spec.help, (name, pname)
        if spec.min is not None:
            assert spec.min <= spec.default <= spec.max, (name, pname)
        if spec.choices is not None:
            assert spec.default in spec.choices
    # building with every default spelled out equals building with none
    explicit = make_trajectory(name, 3, **{p: s.default for p, s in specs.items()})
    torch.testing.assert_close(explicit.c2w, make_trajectory(name, 3).c2w)


def test_a_parameter_name_has_one_range_across_presets():
    # The node layer builds one widget per parameter name for all presets.
    seen = {}
    for name in PRESETS:
        for pname, spec in preset_parameters(name).items():
            seen.setdefault(pname, set()).add((spec.min, spec.max, spec.choices))
    assert all(len(v) == 1 for v in seen.values()), {k: v for k, v in seen.items() if len(v) > 1}


_SHARED = ("target", "radius", "azimuth_deg", "elevation_deg", "image_size", "fov_y_deg", "dtype")
_BASE_PRESETS = ("lemniscate", "dolly_in", "dolly_out", "zoom_in", "zoom_out", "dolly_zoom_in", "dolly_zoom_out",
                 "pan", "tilt", "roll", "truck", "pedestal", "dolly", "static")


@pytest.mark.parametrize("name", _BASE_PRESETS)
def test_base_presets_have_a_keyword_only_signature_ending_in_the_shared_arguments(name):
    # preset_parameters() and the node widgets (and their order in saved workflows) read these signatures.
    fn = PRESETS[name]
    params = list(inspect.signature(fn).parameters.values())
    assert params[0].name == "frames" and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
    assert tuple(p.name for p in params[-len(_SHARED):]) == _SHARED
    shared = {p.name: p.default for p in params[-len(_SHARED):]}
    assert shared == {"target": (0.0, 0.0, 0.0), "radius": 1.0, "azimuth_deg": 0.0, "elevation_deg": 15.0,
                      "image_size": (512, 512), "fov_y_deg": 50.0, "dtype": torch.float64}
    assert fn.__name__ == name and fn.__doc__
    # called like a plain keyword-only function: frames by keyword, no extra positional or unknown arguments
    torch.testing.assert_close(fn(frames=3, radius=2.0).c2w, make_trajectory(name, 3, radius=2.0).c2w)
    with pytest.raises(TypeError):
        fn(3, 0.5)
    with pytest.raises(TypeError):
        fn(3, no_such_parameter=1.0)
