"""Tier 3, browser: the real ComfyUI frontend, served by the real server, in headless Chromium.

Drives the page over the Chrome DevTools Protocol (``scripts/comfy_frontend.py``, ``websocket-client``). Skips
with its reason unless ``COMFYUI_PATH``/``COMFYUI_PY`` are set (conftest.py) and a system Chromium is found
(``chromium`` on PATH, or ``$MVC_CHROMIUM``). Screenshots of every example workflow, as drawn, are written to
``$MVC_BROWSER_OUT`` if set, else to a ``browser`` folder in pytest's temporary directory.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_FOLDER = "ComfyUI-MVCustom"  # the name conftest.py links the repo under
MARKER = f"/extensions/{PACK_FOLDER}/"  # in the URL, stack or initiator of anything the pack's scripts cause
UI_WORKFLOWS = sorted(p.stem for p in (REPO_ROOT / "example_workflows").glob("*.json"))
# Workflows quick enough on CPU to queue from the page, so their output nodes show the images they make.
RUN_IN_BROWSER = ["trajectory_preview", "synthetic_views"]
# Frontend settings for an unattended page: no first-run template dialog, nothing drawn over the graph.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False}


@pytest.fixture(scope="module")
def page(comfy, import_by_path):
    comfy_frontend = import_by_path(REPO_ROOT / "scripts" / "comfy_frontend.py")
    chromium = comfy_frontend.find_chromium()
    if chromium is None:
        pytest.skip("no Chromium: the browser tier needs Debian's `chromium` on PATH or $MVC_CHROMIUM")
    pytest.importorskip("websocket", reason="the browser tier needs websocket-client (the test extra)")
    for key, value in SETTINGS.items():
        req = urllib.request.Request(f"{comfy.url}/api/settings/{key}", data=json.dumps(value).encode(),
                                     method="POST")
        urllib.request.urlopen(req, timeout=30).close()
    with comfy_frontend.Frontend(comfy.url, chromium) as frontend:
        yield frontend


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("MVC_BROWSER_OUT")
    return Path(out) if out else tmp_path_factory.mktemp("browser")


def _overlapping(nodes) -> list[str]:
    return [f"{a.id} {a.type} {a.bounds} / {b.id} {b.type} {b.bounds}"
            for a, b in itertools.combinations(nodes, 2) if a.overlaps(b)]


def test_the_packs_extensions_load_without_errors(page):
    declared = {m for p in (REPO_ROOT / "web").rglob("*.js")
                for m in re.findall(r'registerExtension\(\{\s*name:\s*"([^"]+)"', p.read_text())}
    assert declared, "no app.registerExtension({name: ...}) found under web/"
    loaded = set(page.evaluate("app.extensions.map(e => e.name)"))
    assert declared <= loaded, f"not loaded: {sorted(declared - loaded)}; console: {page.problems(MARKER)}"
    assert page.problems(MARKER) == []


@pytest.mark.parametrize("name", UI_WORKFLOWS)
def test_example_workflow_loads_with_every_node_and_nothing_overlapping(page, shots, name):
    workflow = json.loads((REPO_ROOT / "example_workflows" / f"{name}.json").read_text())
    since = page.mark()
    nodes = page.load_workflow(workflow)
    page.screenshot(shots / f"{name}.png", page.show_graph())
    assert sorted(n.id for n in nodes) == sorted(n["id"] for n in workflow["nodes"])
    assert [n.type for n in nodes if not n.registered] == [], "node types the frontend does not know"
    assert _overlapping(nodes) == []
    # a node the frontend had to make taller has gained inputs since its twin was made
    stored = {n["id"]: n["size"][1] for n in workflow["nodes"]}
    assert [(n.id, n.type, stored[n.id], n.size[1]) for n in nodes if n.size[1] != stored[n.id]] == [], \
        "stale layout: regenerate with scripts/workflow_api_to_ui.py --server <this server> (docs/nodes.md)"
    assert page.problems(MARKER, since) == []


@pytest.mark.parametrize("name", RUN_IN_BROWSER)
def test_workflow_queued_from_the_page_shows_its_images_without_overlaps(page, comfy, shots, name):
    """Output nodes grow to show their images after a run; the layout must have room for that."""
    workflow = json.loads((REPO_ROOT / "example_workflows" / f"{name}.json").read_text())
    since = page.mark()
    page.load_workflow(workflow)
    image_nodes = {str(n["id"]) for n in workflow["nodes"] if n["type"] in ("SaveImage", "PreviewImage")}
    history_before = set(comfy.get_json("/history"))
    page.evaluate("app.queuePrompt(0, 1)")
    page.wait_for("(() => { const h = " + json.dumps(sorted(history_before)) + ";"
                  " return fetch('/history').then(r => r.json()).then(d => Object.keys(d).some(k => !h.includes(k)"
                  " && d[k].status?.completed !== undefined)); })()", f"{name} to finish", timeout_s=300)
    prompt_id = next(k for k in comfy.get_json("/history") if k not in history_before)
    entry = comfy.wait_history(prompt_id)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    shown = page.wait_for(f"""(() => {{ const ids = {json.dumps(sorted(image_nodes))};
        const nodes = app.graph.nodes.filter(n => ids.includes(String(n.id)));
        return nodes.every(n => n.imgs?.length && n.imgs.every(i => i.complete)) && nodes.length; }})()""",
                          f"the image previews of {name}", timeout_s=60)
    assert shown == len(image_nodes)
    nodes = page.drawn_nodes()
    page.screenshot(shots / f"{name}_after_run.png", page.show_graph())
    assert _overlapping(nodes) == []
    assert page.problems(MARKER, since) == []


def test_a_workflow_saved_before_the_trajectory_split_still_loads_and_runs(page, comfy):
    """tests/host/data/legacy_trajectory_preview.json is example_workflows/trajectory_preview.json as saved when one
    Camera Trajectory node held every preset: the node (now deprecated) still loads, its positional widget values
    land in the same widgets, and the graph the page queues runs."""
    workflow = json.loads((REPO_ROOT / "tests" / "host" / "data" / "legacy_trajectory_preview.json").read_text())
    since = page.mark()
    nodes = page.load_workflow(workflow)
    assert [n.type for n in nodes if not n.registered] == []
    legacy = next(n for n in workflow["nodes"] if n["type"] == "MVC_CameraTrajectory")
    widgets = page.evaluate(f"""(() => {{ const n = app.graph.getNodeById({legacy["id"]});
        return Object.fromEntries(n.widgets.map(w => [w.name, w.value])); }})()""")
    assert {k: widgets[k] for k in ("preset", "frames", "fov_y_deg", "radius", "elevation_deg", "span_deg", "loop",
                                    "convention")} == \
        {"preset": "orbit", "frames": 16, "fov_y_deg": 50.0, "radius": 1.0, "elevation_deg": 20.0, "span_deg": 360.0,
         "loop": True, "convention": "animatediff_evolved"}
    prompt = page.evaluate("app.graphToPrompt().then(p => p.output)")
    status, body = comfy.post_prompt(prompt)
    assert status == 200, body
    assert comfy.wait_history(body["prompt_id"])["status"]["status_str"] == "success"
    assert page.problems(MARKER, since) == []


def test_load_trajectory_upload_button_uploads_and_selects_the_file(page, comfy, tmp_path):
    """Click the node's "upload camera file" button, pick a pose file in the browser's chooser: the file lands
    in ComfyUI's input folder, the node's ``file`` combo selects it, and the button is not serialized."""
    since = page.mark()
    page.load_workflow({"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [],
                        "config": {}, "extra": {}, "version": 0.4})
    widgets = page.evaluate("""(() => {
        const n = LiteGraph.createNode('MVC_LoadTrajectory');
        n.pos = [100, 100];
        app.graph.add(n);
        app.canvas.ds.scale = 1;
        app.canvas.ds.offset = [0, 0];
        return n.widgets.map(w => [w.name, w.type]);
    })()""")
    assert widgets[-1] == ["upload camera file", "button"], widgets
    page.drawn_nodes()  # a full draw lays the widgets out (their y)
    x, y = page.evaluate("""(() => { const n = app.graph.nodes[0];
        const w = n.widgets.find(w => w.type === 'button');
        return [n.pos[0] + n.size[0] / 2, n.pos[1] + w.y + LiteGraph.NODE_WIDGET_HEIGHT / 2]; })()""")
    poses = tmp_path / "browser_upload_orbit.txt"
    poses.write_text("https://example.invalid/clip\n"
                     "0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 -2\n"
                     "1 0.5 0.9 0.5 0.5 0 0 1 0 0 0.1 0 1 0 0 0 0 1 -2\n")
    page.click_and_choose_file(*page.graph_to_page(x, y), poses)
    page.wait_for(f"app.graph.nodes[0].widgets.find(w => w.name === 'file').value === {json.dumps(poses.name)}",
                  "the file combo to select the uploaded file", timeout_s=30)
    assert (comfy.input_dir / poses.name).read_bytes() == poses.read_bytes()
    assert page.evaluate("app.graph.nodes[0].serialize().widgets_values") == [poses.name, "auto", 0, 0]
    prompt = page.evaluate("app.graphToPrompt().then(p => p.output)")
    assert prompt[next(iter(prompt))]["inputs"]["file"] == poses.name
    assert page.problems(MARKER, since) == []
