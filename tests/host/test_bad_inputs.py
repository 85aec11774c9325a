"""Tier 3: the bad-input table. Each case queues one graph with one bad input through ``POST /prompt`` and checks:
the server stays up; the error (HTTP 400 at queue time, or the run's ``execution_error``) names the right node and
input; no file changed in the models, input or an outside folder (hashed before and after). No case may succeed.

Graphs are built from ``/object_info`` defaults, so a node gaining a widget does not break the table.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


class Graph:
    """An API prompt under construction: ``add`` fills every required widget the node has with its default."""

    def __init__(self, info: dict):
        self.info, self.prompt = info, {}

    def add(self, class_type: str, **inputs) -> str:
        spec = self.info[class_type]["input"]
        for name, entry in spec.get("required", {}).items():
            if name in inputs:
                continue
            kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, list):  # V1 combo layout
                inputs[name] = options.get("default", kind[0])
            elif kind == "COMBO":
                inputs[name] = options.get("default", options.get("options", [None])[0])
            elif kind in WIDGETS:
                inputs[name] = options.get("default")
        nid = str(len(self.prompt) + 1)
        self.prompt[nid] = {"class_type": class_type, "inputs": inputs}
        return nid

    def sink(self, nid: str, slot: int = 0) -> str:
        """A core PreviewAny on ``nid``'s output, so a non-output node runs."""
        return self.add("PreviewAny", source=[nid, slot])


@dataclass
class Case:
    name: str
    build: Callable[[Graph, dict], tuple[str, str]]  # -> (bad node id, input the error must name)

    def __str__(self) -> str:
        return self.name


# ------------------------------------------------------------------------------------------------- graphs
def _orbit(g: Graph, **kw) -> str:
    return g.add("MVC_OrbitTrajectory", **{"frames": 4, "width": 64, "height": 64, "fov_y_deg": 50.0, "radius": 1.2,
                                           **kw})


def _views(g: Graph, **kw) -> str:
    return g.add("MVC_SyntheticSubjectViews", **{"views": 4, "width": 64, "height": 64, "supersample": 1, **kw})


def _train(g: Graph, views: dict | None = None, **kw) -> str:
    backbone, photos = g.add("MVC_TinyBackbone"), _views(g, **(views or {}))
    return g.add("MVC_TrainCustomization", **{"backbone": [backbone, 0], "images": [photos, 0], "masks": [photos, 1],
                                             "cameras": [photos, 2], "steps": 1, "frames": 2, "references": 1,
                                             "samples": 4, "class_word": "toy", "name": "table_subject",
                                             "resume": False, **kw})


def _sampler(g: Graph, traj: dict | None = None, **kw) -> str:
    backbone, path = g.add("MVC_TinyBackbone"), _orbit(g, **(traj or {}))
    pos = g.add("MVC_EncodePrompt", backbone=[backbone, 0], text="a toy")
    neg = g.add("MVC_EncodePrompt", backbone=[backbone, 0], text="")
    nid = g.add("MVC_MVCustomSampler", **{"model": [backbone, 0], "trajectory": [path, 0], "positive": [pos, 0],
                                          "negative": [neg, 0], "steps": 2, **kw})
    g.sink(nid)
    return nid


def _simple(class_type: str, inp: str, link: Callable[[Graph], dict] | None = None, sink: bool = True,
            **values) -> Callable:
    """A node with ``values`` (formatted with the fixture's paths) and its links; the error must name ``inp``."""
    def build(g: Graph, env: dict):
        links = link(g) if link else {}
        nid = g.add(class_type, **links, **{k: v.format(**env) if isinstance(v, str) else v for k, v in values.items()})
        if sink:
            g.sink(nid)
        return nid, inp
    return build


def _traj(g: Graph, **kw) -> dict:
    return {"trajectory": [_orbit(g, **kw), 0]}


def _training(inp: str, views: dict | None = None, **kw) -> Callable:
    def build(g: Graph, env: dict):
        return _train(g, views, **{k: v.format(**env) if isinstance(v, str) else v for k, v in kw.items()}), inp
    return build


def _sampling(inp: str, traj: dict | None = None, extra: Callable[[Graph], dict] | None = None, **kw) -> Callable:
    def build(g: Graph, env: dict):
        return _sampler(g, traj, **(extra(g) if extra else {}), **kw), inp
    return build


def _dfr(g: Graph, **kw) -> dict:
    return {"dfr_plan": [g.add("MVC_DepthAwareFeatureRendering", **{"trajectory": [_orbit(g), 0], **kw}), 0]}


def _clc(g: Graph) -> dict:
    return {"clc_plan": [g.add("MVC_LatentCompletion"), 0]}


def _export(inp: str, frames: int = 4, **kw) -> Callable:
    def build(g: Graph, env: dict):
        photos = _views(g, views=frames)
        nid = g.add("MVC_ExportViews", **{"images": [photos, 0], "trajectory": [_orbit(g), 0], **kw})
        return nid, inp
    return build


def _evaluate(inp: str, **kw) -> Callable:
    def build(g: Graph, env: dict):
        photos = _views(g)
        nid = g.add("MVC_EvaluateViews", **{"images": [photos, 0], "trajectory": [photos, 2], "pose_accuracy": False,
                                            **{k: v.format(**env) if isinstance(v, str) else v for k, v in kw.items()}})
        return nid, inp
    return build


def _dfr_node(inp: str, model: bool = False, **kw) -> Callable:
    def build(g: Graph, env: dict):
        links = {"model": [g.add("MVC_TinyBackbone"), 0]} if model else {}
        nid = g.add("MVC_DepthAwareFeatureRendering", **{"trajectory": [_orbit(g), 0], **links, **kw})
        g.sink(nid)
        return nid, inp
    return build


ESCAPES = ["{outside}/secret.txt", "../outside/secret.txt", "../../../../../../../etc/passwd", "/etc/passwd",
           "x\0.txt", "link_out.txt", "dir_out/secret.txt", "no_such_file.txt", "C:\\Windows\\win.ini"]
MODEL_ESCAPES = ["{outside}/outside.safetensors", "../../outside/outside.safetensors", "/etc/passwd",
                 "x.safetensors\0", "no_such.safetensors"]
PREFIXES = ["../escape/x", "/tmp/mvcustom_escape/x", "escape/x", "a\0b/x", ""]

CASES = (
    # Load Trajectory: every way out of the input folder, one message
    [Case(f"load-trajectory-file-{i}", _simple("MVC_LoadTrajectory", "file", file=name)) for i, name in
     enumerate(ESCAPES)]
    + [Case("load-trajectory-output-annotation-escape",
            _simple("MVC_LoadTrajectory", "file", file="../outside/secret.txt [output]")),
       Case("load-trajectory-corrupt-file", _simple("MVC_LoadTrajectory", "file", file="bad.txt")),
       Case("load-trajectory-colmap-for-a-txt", _simple("MVC_LoadTrajectory", "format", file="good.txt",
                                                        format="colmap")),
       Case("load-trajectory-one-file-format-for-a-folder", _simple("MVC_LoadTrajectory", "format", file="model",
                                                                    format="realestate10k")),
       Case("load-trajectory-unknown-format", _simple("MVC_LoadTrajectory", "format", file="good.txt",
                                                      format="ply")),
       Case("load-trajectory-width-without-height", _simple("MVC_LoadTrajectory", "width", file="good.txt",
                                                            width=64, height=0)),
       Case("load-trajectory-negative-width", _simple("MVC_LoadTrajectory", "width", file="good.txt", width=-8))]
    # Load Customization and Load Backbone: model folders only
    + [Case(f"load-customization-{i}", _simple("MVC_LoadCustomization", "customization", customization=name))
       for i, name in enumerate(MODEL_ESCAPES)]
    + [Case("load-customization-corrupt", _simple("MVC_LoadCustomization", "customization",
                                                  customization="corrupt.safetensors")),
       Case("load-customization-not-a-customization", _simple("MVC_LoadCustomization", "customization",
                                                              customization="embedding_like.safetensors"))]
    + [Case(f"load-backbone-checkpoint-{i}", _simple("MVC_LoadBackbone", "checkpoint", checkpoint=name,
                                                     motion_module="mm.safetensors"))
       for i, name in enumerate(MODEL_ESCAPES)]
    + [Case("load-backbone-motion-module-escape", _simple("MVC_LoadBackbone", "motion_module",
                                                          checkpoint="sd.safetensors",
                                                          motion_module="../../outside/outside.safetensors")),
       Case("load-backbone-unknown-dtype", _simple("MVC_LoadBackbone", "dtype", checkpoint="sd.safetensors",
                                                   motion_module="mm.safetensors", dtype="fp64"))]
    # Load Depth Model: the depth folders only, safetensors only, a broken file named
    + [Case(f"load-depth-model-{i}", _simple("MVC_LoadDepthModel", "model", model=name))
       for i, name in enumerate(MODEL_ESCAPES)]
    + [Case("load-depth-model-truncated", _simple("MVC_LoadDepthModel", "model", model="truncated.safetensors")),
       Case("load-depth-model-not-a-depth-model", _simple("MVC_LoadDepthModel", "model",
                                                          model="not_depth.safetensors")),
       Case("load-depth-model-unknown-dtype", _simple("MVC_LoadDepthModel", "dtype", model="not_depth.safetensors",
                                                      dtype="fp64")),
       Case("load-depth-model-unknown-variant", _simple("MVC_LoadDepthModel", "variant", model="not_depth.safetensors",
                                                        variant="metric"))]
    # Train Customization: names, foreign files, resume, photos, settings
    + [Case(f"train-name-{i}", _training("name", name=name)) for i, name in
       enumerate(["with\0nul", "../up", "a/b", ".hidden", " ", "{outside}/abs", "v2:stream", "CON"])]
    + [Case("train-would-replace-a-users-embedding", _training("name", name="precious")),
       Case("train-corrupt-resume-checkpoint", _training("resume", name="corrupt_resume", resume=True)),
       Case("train-photos-not-multiple-of-8", _training("images", views={"width": 60, "height": 60})),
       Case("train-one-photo", _training("images", views={"views": 1})),
       Case("train-empty-masks", _training("masks", views={"subject": "none"})),
       Case("train-blank-class-word", _training("class_word", class_word="  ")),
       Case("train-zero-steps", _training("steps", steps=0)),
       Case("train-negative-lr", _training("lr", lr=-1.0))]
    # Save Trajectory and Export Views: inside the output folder
    + [Case(f"save-trajectory-prefix-{i}", _simple("MVC_SaveTrajectory", "filename_prefix", link=_traj, sink=False,
                                                   filename_prefix=p)) for i, p in enumerate(PREFIXES)]
    + [Case("save-trajectory-unknown-format", _simple("MVC_SaveTrajectory", "format", link=_traj, sink=False,
                                                      format="obj")),
       Case("export-prefix-escape", _export("folder_prefix", folder_prefix="../../escape")),
       Case("export-prefix-linked-out", _export("folder_prefix", folder_prefix="escape/views")),
       Case("export-frame-count", _export("images", frames=3)),
       Case("export-ply-format", _export("ply_format", ply_format="obj"))]
    # Trajectories
    + [Case("orbit-zero-frames", _simple("MVC_OrbitTrajectory", "frames", frames=0)),
       Case("orbit-fov-zero", _simple("MVC_OrbitTrajectory", "fov_y_deg", fov_y_deg=0.0)),
       Case("orbit-width-zero", _simple("MVC_OrbitTrajectory", "width", width=0)),
       Case("move-unknown-preset", _simple("MVC_MoveTrajectory", "preset", preset="teleport")),
       Case("combine-compose-frame-mismatch", _simple(
           "MVC_CombineTrajectories", "second", link=lambda g: {"first": [_orbit(g, frames=4), 0],
                                                                "second": [_orbit(g, frames=3), 0]}, mode="compose")),
       Case("combine-unknown-mode", _simple(
           "MVC_CombineTrajectories", "mode", link=lambda g: {"first": [_orbit(g), 0], "second": [_orbit(g), 0]},
           mode="interleave")),
       Case("resample-zero-frames", _simple("MVC_ResampleTrajectory", "frames", link=_traj, frames=0)),
       Case("resample-unknown-spline", _simple("MVC_ResampleTrajectory", "position_spline", link=_traj,
                                               position_spline="bezier")),
       Case("preview-too-small", _simple("MVC_TrajectoryPreview", "width", link=_traj, sink=False, width=16)),
       Case("to-cameractrl-unknown-size", _simple("MVC_TrajectoryToCameraCtrlPoses", "source_size", link=_traj,
                                                  source_size="640x480"))]
    # Synthetic views and reference cameras
    + [Case("synthetic-unknown-subject", _simple("MVC_SyntheticSubjectViews", "subject", subject="dragon")),
       Case("synthetic-zero-supersample", _simple("MVC_SyntheticSubjectViews", "supersample", supersample=0)),
       Case("reference-cameras-unknown-mode", _simple(
           "MVC_ReferenceCameras", "mode", link=lambda g: {"images": [_views(g), 0]}, mode="lidar")),
       Case("reference-cameras-one-photo", _simple(
           "MVC_ReferenceCameras", "images", link=lambda g: {"images": [_views(g, views=1), 0]}))]
    # DFR, CLC, Sampler
    + [Case("dfr-layers-not-modules", _dfr_node("layers", model=True, layers="abc,zz",
                                                 depth_source="customization field")),
       Case("dfr-anchor-out-of-range", _dfr_node("anchor_frame", anchor_frame=99)),
       Case("dfr-depth-image-missing", _dfr_node("depth_image", depth_source="depth image (depth, far = bright)")),
       Case("dfr-unknown-depth-source", _dfr_node("depth_source", depth_source="lidar")),
       Case("clc-tau-too-large", _simple("MVC_LatentCompletion", "tau", tau=5000)),
       Case("sampler-zero-steps", _sampling("steps", steps=0)),
       Case("sampler-cfg-below-one", _sampling("cfg", cfg=0.5)),
       Case("sampler-window-one", _sampling("window", window=1)),
       Case("sampler-size-not-multiple-of-8", _sampling("trajectory", traj={"width": 60})),
       Case("sampler-clc-without-dfr", _sampling("clc_plan", extra=_clc)),
       Case("sampler-dfr-layers-not-modules", _sampling("dfr_plan", extra=lambda g: _dfr(
           g, layers="abc,zz", depth_source="customization field")))]
    # Evaluation
    + [Case(f"evaluate-clip-folder-{i}", _evaluate("clip_folder", clip_folder=name)) for i, name in
       enumerate(["{outside}", "../outside", "/etc", "dir_out"])]
    + [Case("evaluate-dino-folder-escape", _evaluate("dino_folder", dino_folder="../../outside"))]
)


# ------------------------------------------------------------------------------------------------ fixture
def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links not followed) with its content hash."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            out[str(path.relative_to(folder))] = ("link:" + os.readlink(path) if path.is_symlink()
                                                  else hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def table(comfy):
    """Files the cases point at: good/bad pose files, links out of the input and output folders, a foreign
    embedding, corrupt model files, and an 'outside' folder holding a valid customization and a secret."""
    from safetensors.torch import save_file
    import torch

    from mvcustom_core.cameras.formats import save_camera_file
    from mvcustom_core.trajectories import make_trajectory

    outside = comfy.models_dir.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("secret\n")
    save_file({"x": torch.zeros(1)}, str(outside / "outside.safetensors"))
    inp, out, models = comfy.input_dir, comfy.output_dir, comfy.models_dir
    save_camera_file(make_trajectory("orbit", 4), inp / "good.txt", "realestate10k")
    (inp / "bad.txt").write_text("https://example.com\n0 0.5 0.9 0.5 0.5 0 0 1 0 0\n")
    save_camera_file(make_trajectory("orbit", 3), inp / "model", "colmap")
    for link, target in (("link_out.txt", outside / "secret.txt"), ("dir_out", outside)):
        if not (inp / link).is_symlink():
            (inp / link).symlink_to(target)
    if not (out / "escape").is_symlink():
        (out / "escape").symlink_to(outside, target_is_directory=True)
    for sub in ("mvcustom", "embeddings", "checkpoints", "animatediff_models", "depth"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    (models / "depth" / "truncated.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    save_file({"model.diffusion_model.x": torch.zeros(1)}, str(models / "depth" / "not_depth.safetensors"))
    (models / "mvcustom" / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    save_file({"emb_params": torch.zeros(1, 768)}, str(models / "mvcustom" / "embedding_like.safetensors"))
    save_file({"emb_params": torch.ones(1, 32)}, str(models / "embeddings" / "precious.safetensors"))
    (models / "mvcustom" / "corrupt_resume.safetensors.training").write_bytes(b"PK\x03\x04 not a checkpoint")
    (models / "checkpoints" / "sd.safetensors").write_bytes(b"")  # names that resolve (never loaded here)
    (models / "animatediff_models" / "mm.safetensors").write_bytes(b"")
    return {"outside": outside, "env": {"outside": str(outside)}, "watched": [inp, models, outside]}


@pytest.fixture(scope="module")
def info(comfy) -> dict:
    return comfy.get_json("/object_info")


def _names_input(errors: list[dict], inp: str) -> bool:
    for e in errors:
        text = json.dumps(e)
        if e.get("extra_info", {}).get("input_name") == inp or f"input '{inp}'" in text:
            return True
    return False


def test_the_table_has_at_least_60_cases_across_every_node_with_inputs():
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_refused_naming_node_and_input(comfy, table, info, case):
    before = {str(f): _digest(f) for f in table["watched"]}
    g = Graph(info)
    bad, inp = case.build(g, table["env"])
    display = info[g.prompt[bad]["class_type"]]["display_name"]
    status, body = comfy.post_prompt(g.prompt)
    if status == 400:
        errors = body.get("node_errors", {})
        assert list(errors) == [bad], f"{case}: errors on {list(errors)}, expected node {bad}: {json.dumps(body)}"
        assert _names_input(errors[bad]["errors"], inp), f"{case}: {json.dumps(errors[bad])}"
    else:
        assert status == 200, body
        entry = comfy.wait_history(body["prompt_id"], timeout_s=300)
        assert entry["status"]["status_str"] == "error", f"{case}: the bad input was accepted (wrong success)"
        failures = [d for kind, d in entry["status"]["messages"] if kind == "execution_error"]
        assert len(failures) == 1, entry["status"]
        assert failures[0]["node_id"] == bad, f"{case}: failed at node {failures[0]['node_id']}: {failures[0]}"
        message = failures[0]["exception_message"]
        assert message.startswith(f"{display}: input '{inp}'"), f"{case}: {message}"
        assert str(comfy.models_dir.parent) not in message, f"{case}: a server path in {message}"
    comfy.get("/system_stats")
    assert comfy.process.poll() is None, "the server stopped"
    after = {str(f): _digest(f) for f in table["watched"]}
    assert after == before, f"{case}: files changed outside the output folder"
