"""Tier 3: the pack inside a real ComfyUI (headless, CPU): import, /object_info, and workflows over HTTP.

Skips (with the reason) unless COMFYUI_PATH and COMFYUI_PY are set; see conftest.py.
"""

from __future__ import annotations

import copy
import io
import json
import re
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_FOLDER = "ComfyUI-MVCustom"  # the name conftest.py links the repo under

PIL_Image = pytest.importorskip("PIL.Image")

NODE_IDS = sorted({m for p in (REPO_ROOT / "nodes").glob("*.py")
                   for m in re.findall(r'(?:node_id=|PresetFamily\()"(MVC_\w+)"', p.read_text())})


def _workflow(name: str) -> dict:
    return json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text())


def _png(comfy, image_ref: dict):
    data = comfy.get("/view", filename=image_ref["filename"], subfolder=image_ref["subfolder"],
                     type=image_ref["type"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return PIL_Image.open(io.BytesIO(data)).convert("RGB")


def _run_ok(comfy, prompt: dict, timeout_s: float = 900) -> dict:
    """Queue ``prompt``, wait for it and return its history entry, asserting that it ran to success."""
    status, body = comfy.post_prompt(prompt)
    assert status == 200, body
    entry = comfy.wait_history(body["prompt_id"], timeout_s=timeout_s)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-3000:]
    return entry


def _not_blank(img) -> bool:
    lo, hi = zip(*img.getextrema())
    return max(hi) - min(lo) > 64  # dark lines/markers on a light background, not one flat colour


def test_pack_imports_without_failure(comfy):
    log = comfy.log_text()
    assert f"custom_nodes/{PACK_FOLDER}" in log, f"the pack was not loaded at all:\n{log[-3000:]}"
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and PACK_FOLDER in line]
    assert failed == [], "\n".join(failed) + "\n" + log[-4000:]
    # nothing else about the pack while ComfyUI starts: no traceback through its files, no warning naming it
    # (later lines are prompts' errors, which other tests of the session cause on purpose)
    startup = log.split("To see the GUI go to", 1)[0]
    ours = [line for line in startup.splitlines() if str(REPO_ROOT) in line or PACK_FOLDER in line]
    unexpected = [line for line in ours if not re.fullmatch(rf"\s*[\d.]+ seconds: .*/{PACK_FOLDER}", line)]
    assert unexpected == [], "\n".join(unexpected)


def test_every_node_is_in_object_info(comfy):
    assert len(NODE_IDS) >= 7
    info = comfy.get_json("/object_info")
    registered = sorted(k for k, v in info.items() if v.get("python_module") == f"custom_nodes.{PACK_FOLDER}")
    assert registered == NODE_IDS
    for node_id in NODE_IDS:
        entry = info[node_id]
        assert entry["category"].startswith("MVCustom/"), node_id
        assert entry["display_name"].startswith("MVCustom"), node_id
    assert info["MVC_OrbitTrajectory"]["output"] == ["MVC_CAMERA_TRAJECTORY"]
    assert info["MVC_CameraTrajectory"]["deprecated"] is True  # kept for saved workflows
    assert info["MVC_TrajectoryToCameraCtrlPoses"]["output"] == ["CAMERACTRL_POSES"]
    assert info["MVC_TrajectoryPreview"]["output_node"] is True


def test_trajectory_preview_workflow_runs(comfy):
    prompt = _workflow("trajectory_preview")
    prompt["2"]["inputs"].update(width=320, height=256)
    status, body = comfy.post_prompt(prompt)
    assert status == 200, body
    entry = comfy.wait_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)
    saved = entry["outputs"]["3"]["images"]
    assert len(saved) == 1 and saved[0]["type"] == "output"
    img = _png(comfy, saved[0])
    assert img.size == (320, 256)
    assert _not_blank(img)
    assert (comfy.output_dir / saved[0]["subfolder"] / saved[0]["filename"]).is_file()
    preview = entry["outputs"]["2"]["images"]  # the preview node's own UI image (temp folder)
    assert len(preview) == 1 and _png(comfy, preview[0]).size == (320, 256)


def test_synthetic_views_workflow_runs(comfy):
    prompt = _workflow("synthetic_views")
    prompt["1"]["inputs"].update(views=2, width=48, height=32, supersample=1)
    status, body = comfy.post_prompt(prompt)
    assert status == 200, body
    entry = comfy.wait_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)
    views = [_png(comfy, ref) for ref in entry["outputs"]["2"]["images"]]
    masks = [_png(comfy, ref) for ref in entry["outputs"]["4"]["images"]]
    assert [v.size for v in views] == [(48, 32)] * 2 and [m.size for m in masks] == [(48, 32)] * 2
    assert all(_not_blank(v) for v in views)
    assert all(m.convert("L").getextrema() == (0, 255) for m in masks)  # subject (white) and background (black)


def test_out_of_range_widget_is_rejected_by_comfyui(comfy):
    prompt = copy.deepcopy(_workflow("trajectory_preview"))
    prompt["1"]["inputs"]["frames"] = 0
    status, body = comfy.post_prompt(prompt)
    assert status == 400
    errors = body["node_errors"]["1"]["errors"]
    assert any(e["type"] == "value_smaller_than_min" and "frames" in json.dumps(e) for e in errors), errors


def test_missing_trajectory_file_is_reported_with_node_and_input(comfy):
    prompt = {
        "1": {"class_type": "MVC_LoadTrajectory",
              "inputs": {"file": "no_such_poses.txt", "format": "auto", "width": 0, "height": 0}},
        "2": {"class_type": "MVC_TrajectoryPreview",
              "inputs": {"trajectory": ["1", 0], "width": 128, "height": 128, "title": ""}},
    }
    status, body = comfy.post_prompt(prompt)
    assert status == 400
    errors = body["node_errors"]["1"]["errors"]
    assert len(errors) == 1, errors  # reported once, against 'file'
    assert "MVCustom Load Trajectory: input 'file'" in json.dumps(errors) and "no_such_poses.txt" in json.dumps(errors)


def _upload(comfy, path: Path) -> dict:
    """POST /upload/image (multipart), as web/js/load_trajectory_upload.js does."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\ninput\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
            "Content-Type: text/plain\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{comfy.url}/upload/image", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_upload_script_is_served(comfy):
    extensions = comfy.get_json("/extensions")
    script = f"/extensions/{PACK_FOLDER}/js/load_trajectory_upload.js"
    assert script in extensions, extensions
    assert b"MVC_LoadTrajectory" in comfy.get(script)


def test_uploaded_pose_file_loads_and_saves(comfy, realestate_pose_files):
    src: Path = realestate_pose_files[0]
    assert _upload(comfy, src) == {"name": src.name, "subfolder": "", "type": "input"}
    combo = comfy.get_json("/object_info/MVC_LoadTrajectory")["MVC_LoadTrajectory"]["input"]["required"]["file"]
    options = combo[0] if isinstance(combo[0], list) else combo[1]["options"]  # V1 or V3 combo layout
    assert src.name in options, combo  # the combo re-lists the input folder
    prompt = {
        "1": {"class_type": "MVC_LoadTrajectory",
              "inputs": {"file": src.name, "format": "auto", "width": 512, "height": 288}},
        "2": {"class_type": "MVC_SaveTrajectory",
              "inputs": {"trajectory": ["1", 0], "filename_prefix": "host/poses", "format": "transforms_json"}},
    }
    status, body = comfy.post_prompt(prompt)
    assert status == 200, body
    entry = comfy.wait_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)
    written = comfy.output_dir / "host" / "poses_00001_.json"
    data = json.loads(written.read_text())
    assert len(data["frames"]) == sum(1 for line in src.read_text().splitlines()[1:] if line.strip())


def test_runtime_error_reaches_the_user_naming_node_and_input(comfy):
    traj = {"width": 64, "height": 64, "fov_y_deg": 50.0}
    prompt = {
        "1": {"class_type": "MVC_OrbitTrajectory", "inputs": {**traj, "frames": 4}},
        "2": {"class_type": "MVC_TurnTrajectory", "inputs": {**traj, "frames": 3, "preset": "roll"}},
        "3": {"class_type": "MVC_CombineTrajectories",
              "inputs": {"first": ["1", 0], "second": ["2", 0], "mode": "compose", "drop_repeated": True}},
        "4": {"class_type": "MVC_TrajectoryPreview",
              "inputs": {"trajectory": ["3", 0], "width": 128, "height": 128, "title": ""}},
    }
    status, body = comfy.post_prompt(prompt)
    assert status == 200, body  # valid graph; compose fails at run time (4 vs 3 frames)
    entry = comfy.wait_history(body["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert len(errors) == 1 and errors[0]["node_id"] == "3", errors
    assert errors[0]["exception_message"].startswith("MVCustom Combine Trajectories: input 'second' is invalid")


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json")))
def test_ui_workflow_widget_values_match_the_servers_widget_order(comfy, name):
    """example_workflows/ stores widget values by position; check them against the live /object_info order."""
    ui = json.loads((REPO_ROOT / "example_workflows" / f"{name}.json").read_text())
    api = _workflow(name)
    info = comfy.get_json("/object_info")
    for n in ui["nodes"]:
        entry = info[n["type"]]
        specs = {**entry["input"].get("required", {}), **entry["input"].get("optional", {})}
        order = entry["input_order"]["required"] + entry["input_order"].get("optional", [])
        widgets = [i for i in order if isinstance(specs[i][0], list)
                   or specs[i][0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")]
        inputs = api[str(n["id"])]["inputs"]
        values, stored = list(n["widgets_values"]), {}
        for w in widgets:  # a control_after_generate widget is followed by its mode in the UI format
            stored[w] = values.pop(0)
            if len(specs[w]) > 1 and specs[w][1].get("control_after_generate"):
                values.pop(0)
        assert not values, f"{name} node {n['id']} ({n['type']}): extra widget values {values}"
        constants = {k: v for k, v in inputs.items() if not isinstance(v, list)}
        assert {k: v for k, v in stored.items() if not isinstance(inputs.get(k), list)} == constants, \
            f"{name} node {n['id']} ({n['type']})"


def test_customizations_stay_out_of_animatediff_evolveds_motion_model_list(comfy, tmp_path):
    """models/mvcustom is the pack's own folder: Load Backbone lists its motion modules, animatediff_models (the
    list AnimateDiff-Evolved offers) does not see it, Load Customization lists only customizations."""
    import torch
    from safetensors.torch import save_file

    from mvcustom_core.backbone.tiny import tiny_backbone
    from mvcustom_core.backbone.training import save_motion_module
    from mvcustom_core.customization.file_format import FORMAT_NAME

    folder = comfy.models_dir / "mvcustom"
    folder.mkdir(parents=True, exist_ok=True)
    save_motion_module(tiny_backbone(seed=1).unet, folder / "host_trained_mm.safetensors")
    save_file({"token_embedding": torch.zeros(4)}, str(folder / "host_subject.safetensors"),
              metadata={"format": FORMAT_NAME})

    def options(node_id: str, name: str) -> list:
        spec = comfy.get_json(f"/object_info/{node_id}")[node_id]["input"]["required"][name]
        return spec[0] if isinstance(spec[0], list) else spec[1]["options"]  # V1 or V3 combo layout

    assert "host_trained_mm.safetensors" in options("MVC_LoadBackbone", "motion_module")
    assert "host_subject.safetensors" not in options("MVC_LoadBackbone", "motion_module")
    assert "host_subject.safetensors" in options("MVC_LoadCustomization", "customization")
    motion_models = comfy.get_json("/models/animatediff_models")
    assert not any(name.startswith("host_") for name in motion_models), motion_models
    assert set(comfy.get_json("/models/mvcustom")) >= {"host_subject.safetensors", "host_trained_mm.safetensors"}


def test_whole_mvcustom_job_runs_on_the_tiny_backbone(comfy):
    """workflows/mvcustom_tiny_pipeline.json: customize on synthetic photos, DFR + CLC sampling, decode, export."""
    from mvcustom_core.cameras import load_camera_file
    from mvcustom_core.customization import load_customization
    from mvcustom_core.trajectories import make_trajectory

    prompt = _workflow("mvcustom_tiny_pipeline")
    entry = _run_ok(comfy, prompt)
    traj = prompt["4"]["inputs"]
    frames = [_png(comfy, ref) for ref in entry["outputs"]["11"]["images"]]
    assert [f.size for f in frames] == [(traj["width"], traj["height"])] * traj["frames"]
    assert all(_not_blank(f) for f in frames)
    masks = [_png(comfy, ref) for ref in entry["outputs"]["12"]["images"]]
    assert len(masks) == traj["frames"]

    name = prompt["3"]["inputs"]["name"]
    custom = load_customization(comfy.models_dir / "mvcustom" / f"{name}.safetensors")
    assert custom.class_word == prompt["3"]["inputs"]["class_word"] and custom.blocks
    from safetensors import safe_open
    with safe_open(str(comfy.models_dir / "embeddings" / f"{name}.safetensors"), "pt") as f:
        assert list(f.keys()) == ["emb_params"] and f.get_tensor("emb_params").shape[0] == 1

    exported = sorted((comfy.output_dir / "mvcustom").glob("tiny_pipeline_*/transforms.json"))
    assert exported, "the export node wrote no transforms.json"
    cams = load_camera_file(exported[-1])
    expected = make_trajectory("orbit", traj["frames"], image_size=(traj["height"], traj["width"]),
                               fov_y_deg=traj["fov_y_deg"], radius=traj["radius"], elevation_deg=traj["elevation_deg"],
                               span_deg=traj["span_deg"], start_azimuth_deg=traj["start_azimuth_deg"], loop=traj["loop"])
    assert len(cams) == traj["frames"]
    assert (cams.c2w.double() - expected.c2w.double()).abs().max() < 1e-5
    assert (exported[-1].parent / "anchor_points.ply").is_file()


def _white_share(img) -> float:
    """Share of white pixels of a completion mask (white = the anchor does not see it)."""
    grey = img.convert("L").tobytes()  # one byte per pixel
    return sum(1 for v in grey if v > 127) / len(grey)


def test_two_pass_workflow_renders_the_background_from_the_estimated_depth(comfy):
    """workflows/mvcustom_two_pass.json: pass 1, depth of its anchor frame, pass 2 with DFR + CLC from that depth.
    The anchor then covers the background too: pixels the field depth (subject only) leaves to the model."""
    prompt = _workflow("mvcustom_two_pass")
    entry = _run_ok(comfy, prompt)
    traj = prompt["4"]["inputs"]
    frames = [_png(comfy, ref) for ref in entry["outputs"]["16"]["images"]]
    assert [f.size for f in frames] == [(traj["width"], traj["height"])] * traj["frames"]
    assert all(_not_blank(f) for f in frames)
    (alignment,) = entry["outputs"]["12"]["text"]
    assert alignment.startswith("metric → depth = ") and "fit residual" in alignment
    estimated = [_png(comfy, ref) for ref in entry["outputs"]["17"]["images"]]

    field = copy.deepcopy(prompt)
    field["12"]["inputs"]["depth_source"] = "customization field"
    entry = _run_ok(comfy, field)
    subject_only = [_png(comfy, ref) for ref in entry["outputs"]["17"]["images"]]
    anchor = traj["frames"] // 2
    for f, (a, b) in enumerate(zip(estimated, subject_only)):
        if f == anchor:
            continue
        background = [(x < 128 and y > 127) for x, y in zip(a.convert("L").tobytes(), b.convert("L").tobytes())]
        assert sum(background) > 0.1 * len(background), f  # covered with the estimate, not with the field
        assert _white_share(a) < _white_share(b), f


def test_one_pass_workflow_builds_the_anchor_geometry_inside_the_sampler(comfy):
    """workflows/mvcustom_one_pass.json: the sampler decodes the anchor's x̂0 after 20 % of its 10 steps, estimates
    and aligns its depth, and renders with it from then on; the export's point cloud holds that depth."""
    from mvcustom_core.inference import read_ply

    prompt = _workflow("mvcustom_one_pass")
    entry = _run_ok(comfy, prompt)
    (note,) = entry["outputs"]["10"]["text"]
    assert note.startswith("one pass: anchor depth after step 2; metric → depth = "), note
    frames = [_png(comfy, ref) for ref in entry["outputs"]["12"]["images"]]
    assert len(frames) == prompt["4"]["inputs"]["frames"] and all(_not_blank(f) for f in frames)
    exported = sorted((comfy.output_dir / "mvcustom").glob("one_pass_*/anchor_points.ply"))
    assert exported, "the export node wrote no anchor point cloud"
    points = read_ply(exported[-1])
    size = prompt["4"]["inputs"]["width"] * prompt["4"]["inputs"]["height"]
    assert len(points[0]) > 0.5 * size  # the whole anchor view, not only the subject
