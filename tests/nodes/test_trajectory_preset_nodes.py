"""Preset nodes: each family node shows only its presets' parameters, one default per parameter everywhere,
the CameraCtrl node sums and chains like AnimateDiff-Evolved, and the legacy all-presets node keeps old
workflows running."""

from __future__ import annotations

import importlib

import pytest
import torch

from mvcustom_core.trajectories import (CAMERACTRL_PRESET_NAMES, PRESETS, cameractrl_motion_rows,
                                        cameractrl_trajectory, make_trajectory, preset_parameters)

FIXED = ["frames", "width", "height", "fov_y_deg"]


@pytest.fixture(scope="module")
def presets_module(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.trajectory_presets")


def _same_cameras(a, b, atol=0.0):
    assert a.image_size == b.image_size
    torch.testing.assert_close(a.K, b.K, atol=atol, rtol=0)
    torch.testing.assert_close(a.c2w, b.c2w, atol=atol, rtol=0)


def _widget_ids(pname, default):
    return [f"{pname}_{a}" for a in "xyz"] if isinstance(default, tuple) else [pname]


def _ids(cls, *, optional=None):
    return [i.id for i in cls.GET_SCHEMA().inputs if optional is None or bool(i.optional) == optional]


def test_every_preset_has_exactly_one_node(presets_module):
    families = [p for f in presets_module.FAMILIES for p in f.presets]
    cameractrl = [p for p in PRESETS if p.startswith("cameractrl_")]  # the CameraCtrl node builds these
    assert sorted(families + cameractrl) == sorted(PRESETS)
    assert len(set(families)) == len(families)


@pytest.mark.parametrize("family", range(7))
def test_a_family_node_shows_exactly_its_presets_parameters(node, presets_module, family):
    fam = presets_module.FAMILIES[family]
    cls = node(fam.node_id)
    ids = _ids(cls)
    head = (["preset"] if len(fam.presets) > 1 else []) + FIXED
    assert ids[:len(head)] == head
    for preset in fam.presets:
        own = [w for p, s in preset_parameters(preset).items() for w in _widget_ids(p, s.default)]
        assert sorted(ids[len(head):]) == sorted(own), preset  # nothing another preset uses, nothing missing
    if len(fam.presets) > 1:
        assert cls.GET_SCHEMA().inputs[0].options == list(fam.presets)


@pytest.mark.parametrize("preset", [p for p in PRESETS if not p.startswith("cameractrl_")])
def test_one_default_per_parameter_in_a_family_node(node, run, presets_module, preset):
    fam = next(f for f in presets_module.FAMILIES if preset in f.presets)
    cls = node(fam.node_id)
    widgets = {i.id: i.default for i in cls.GET_SCHEMA().inputs}
    for pname, spec in preset_parameters(preset).items():  # the widget shows the core's default ...
        shown = [widgets[w] for w in _widget_ids(pname, spec.default)]
        assert shown == (list(spec.default) if isinstance(spec.default, tuple) else [spec.default]), pname
    chosen = {"preset": preset} if len(fam.presets) > 1 else {}
    expected = make_trajectory(preset, 16, image_size=(512, 512), fov_y_deg=50.0)
    _same_cameras(run(cls, **chosen).args[0], expected)  # ... a fresh node builds the core's preset ...
    minimal = cls.execute(**chosen, frames=16, width=512, height=512, fov_y_deg=50.0)
    _same_cameras(minimal.args[0], expected)  # ... and so does a prompt that leaves the parameters out


@pytest.mark.parametrize("preset, params", [
    ("orbit", dict(radius=2.5, elevation_deg=30.0, target=(0.5, -0.25, 1.0), direction="cw", loop=False)),
    ("spiral", dict(span_deg=270.0, radius_end=0.5, elevation_end_deg=60.0)),
    ("lemniscate", dict(amplitude=0.5, azimuth_deg=30.0)),
    ("truck", dict(distance=-0.7, radius=2.0)),
    ("tilt", dict(angle_deg=-15.0, elevation_deg=40.0)),
    ("dolly_zoom_out", dict(factor=3.0, target=(0.0, 0.2, 0.0))),
    ("static", dict(azimuth_deg=90.0)),
])
def test_family_widgets_reach_the_core(node, run, presets_module, preset, params):
    fam = next(f for f in presets_module.FAMILIES if preset in f.presets)
    widgets = {}
    for pname, value in params.items():
        if isinstance(value, tuple):
            widgets.update({f"{pname}_{a}": v for a, v in zip("xyz", value)})
        else:
            widgets[pname] = value
    chosen = {"preset": preset} if len(fam.presets) > 1 else {}
    out = run(node(fam.node_id), **chosen, frames=6, width=96, height=64, fov_y_deg=40.0, **widgets).args[0]
    expected = make_trajectory(preset, 6, image_size=(64, 96), fov_y_deg=40.0, **params)
    _same_cameras(out, expected)
    default = make_trajectory(preset, 6, image_size=(64, 96), fov_y_deg=40.0)
    assert not torch.allclose(expected.c2w, default.c2w)  # the widgets did change something


def test_family_errors_name_node_and_input(node, run):
    with pytest.raises(ValueError) as e:
        run(node("MVC_OrbitTrajectory"), frames=0)
    assert str(e.value) == "MVCustom Orbit Trajectory: input 'frames' must be ≥ 1, got 0"
    with pytest.raises(ValueError, match=r"^MVCustom Orbit Trajectory: input 'radius' is invalid: .*radius"):
        run(node("MVC_OrbitTrajectory"), radius=-1.0)
    with pytest.raises(ValueError, match=r"^MVCustom Orbit Trajectory: input 'elevation_deg' is invalid"):
        run(node("MVC_OrbitTrajectory"), elevation_deg=95.0)
    with pytest.raises(ValueError, match=r"^MVCustom Turn Trajectory \(pan, tilt, roll\): input 'preset' must be"):
        run(node("MVC_TurnTrajectory"), preset="orbit")
    with pytest.raises(ValueError, match=r"input 'frames' must be an integer, got 2.5$"):
        run(node("MVC_StaticCamera"), frames=2.5)


# ---------------------------------------------------------------------------------------------- CameraCtrl
def test_cameractrl_node_shows_animatediff_evolveds_names_speed_range_and_no_field_of_view(node):
    schema = node("MVC_CameraCtrlTrajectory").GET_SCHEMA()
    by_id = {i.id: i for i in schema.inputs}
    assert by_id["motion_1"].options == list(CAMERACTRL_PRESET_NAMES)
    assert {"Roll Clockwise", "Roll Anticlockwise", "Tilt Up", "Tilt Down", "Tilt Left", "Tilt Right"} \
        <= set(by_id["motion_1"].options)
    assert (by_id["speed"].min, by_id["speed"].max) == (-100.0, 100.0)
    assert "fov_y_deg" not in by_id
    assert [f"motion_{k}" for k in range(1, 7)] == [i for i in by_id if i.startswith("motion_")]


def test_cameractrl_node_gets_animatediff_evolveds_intrinsics_and_progress(node, run):
    out = run(node("MVC_CameraCtrlTrajectory"), motion_1="Pan Right", frames=8, width=384, height=256).args[0]
    # 0.844111024 · H on the short side and square pixels (source 1280x720 is wider than 384x256)
    torch.testing.assert_close(out.K[:, 1, 1], torch.full((8,), 0.844111024 * 256, dtype=torch.float64))
    torch.testing.assert_close(out.K[:, 0, 0], out.K[:, 1, 1])
    # i/16 per frame at 8 frames: the last camera is 7/16 of the 16-frame move, 1.5 · 7/16 to the right
    assert float(out.centers[-1, 0]) == pytest.approx(1.5 * 7 / 16, abs=1e-12)
    core = run(node("MVC_CameraCtrlTrajectory"), motion_1="Pan Right", frames=8, convention="comfy_core").args[0]
    assert float(core.centers[-1, 0]) == pytest.approx(1.5 * 7 / 8, abs=1e-12)


def test_cameractrl_node_sums_its_motions_in_any_order(node, run):
    cls = node("MVC_CameraCtrlTrajectory")
    a = run(cls, motion_1="Pan Left", motion_2="Roll Clockwise", strength_2=0.5, motion_3="Tilt Down",
            speed=2.0, frames=10).args[0]
    b = run(cls, motion_1="Tilt Down", motion_2="Pan Left", motion_3="Roll Clockwise", strength_3=0.5,
            speed=2.0, frames=10).args[0]
    _same_cameras(a, b)
    rows = cameractrl_motion_rows(["Pan Left", "Roll Clockwise", "Tilt Down"], 10, speed=2.0,
                                  strengths=[1.0, 0.5, 1.0])
    torch.testing.assert_close(a.w2c[:, :3], rows)
    _same_cameras(a, cameractrl_trajectory(["Pan Left", "Roll Clockwise", "Tilt Down"], 10, speed=2.0,
                                           strengths=[1.0, 0.5, 1.0]))


def test_cameractrl_node_continues_previous_like_prev_poses(node, run):
    cls = node("MVC_CameraCtrlTrajectory")
    first = run(cls, motion_1="Pan Left", motion_2="Tilt Up", frames=8).args[0]
    out = run(cls, motion_1="Zoom In", frames=5, previous=first).args[0]
    assert len(out) == 13
    torch.testing.assert_close(out.w2c[:8], first.w2c)
    rows = cameractrl_motion_rows("Zoom In", 5)
    bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    for i in range(5):  # w2c'_i = [R_i | T_i] · w2c_last
        torch.testing.assert_close(out.w2c[8 + i], torch.cat([rows[i], bottom]) @ first.w2c[-1])
    with pytest.raises(ValueError, match=r"^MVCustom CameraCtrl Trajectory: input 'previous' is invalid: .*size"):
        run(cls, frames=5, width=256, previous=first)
    with pytest.raises(ValueError, match=r"^MVCustom CameraCtrl Trajectory: input 'previous' must be"):
        run(cls, previous=[[0.0] * 19])


def test_cameractrl_node_api_prompt_without_the_optional_slots(node):
    out = node("MVC_CameraCtrlTrajectory").execute(motion_1="Roll Anticlockwise", strength_1=1.0, speed=1.0,
                                                   frames=4, width=64, height=64, convention="animatediff_evolved")
    _same_cameras(out.args[0], cameractrl_trajectory("Roll Anticlockwise", 4, image_size=(64, 64)))


# ---------------------------------------------------------------------------------------------- legacy
# The widget values of MVC_CameraTrajectory in example_workflows/trajectory_preview.json as saved before the
# split (UI workflows store them by position).
SAVED = ["orbit", 16, 512, 512, 50.0, 1.0, 20.0, 0.0, 0.0, 0.0, 0.0, 360.0, 0.0, "ccw", True, 0.0, 45.0, 1.0, 0.75,
         0.3, 0.5, 2.0, 30.0, 1.0, "animatediff_evolved"]


def _positional(cls, values):
    widgets = [i.id for i in cls.GET_SCHEMA().inputs if i.io_type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
    assert len(widgets) >= len(values)
    return dict(zip(widgets, values))


def test_legacy_node_still_loads_a_saved_workflow_positionally(node):
    cls = node("MVC_CameraTrajectory")
    assert cls.GET_SCHEMA().is_deprecated
    inputs = _positional(cls, SAVED)
    assert inputs["radius"] == 1.0 and inputs["elevation_deg"] == 20.0 and inputs["convention"] == "animatediff_evolved"
    out = cls.execute(**inputs).args[0]
    _same_cameras(out, make_trajectory("orbit", 16, radius=1.0, elevation_deg=20.0, span_deg=360.0, loop=True,
                                       fov_y_deg=50.0))
    # an earlier preset name saved in a workflow
    acw = cls.execute(**{**inputs, "preset": "cameractrl_acw"}).args[0]
    torch.testing.assert_close(acw.c2w, make_trajectory("cameractrl_roll_anticlockwise", 16).c2w)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_legacy_node_has_one_default_per_widget(node, run, preset):
    """A fresh legacy node and an API prompt that leaves its optional widgets out build the same cameras."""
    cls = node("MVC_CameraTrajectory")
    fresh = run(cls, preset=preset, frames=5).args[0]
    minimal = cls.execute(preset=preset, frames=5, width=512, height=512, fov_y_deg=50.0).args[0]
    _same_cameras(fresh, minimal)
