"""workflows/ (API format, run by tier 3) and example_workflows/ (UI format) describe the same valid graphs."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
API_DIR, UI_DIR = REPO_ROOT / "workflows", REPO_ROOT / "example_workflows"
WORKFLOWS = sorted(p.stem for p in API_DIR.glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Core nodes the workflows use: (socket inputs, widget inputs in UI order), and their outputs (ComfyUI nodes.py).
CORE_NODES = {"SaveImage": (["images"], ["filename_prefix"]), "PreviewImage": (["images"], []),
              "MaskToImage": (["mask"], []), "CheckpointLoaderSimple": ([], ["ckpt_name"]),
              "CLIPTextEncode": (["clip"], ["text"]), "VAEDecode": (["samples", "vae"], []),
              "ImageFromBatch": (["image"], ["batch_index", "length"])}
CORE_OUTPUTS = {"MaskToImage": ["IMAGE"], "CheckpointLoaderSimple": ["MODEL", "CLIP", "VAE"],
                "CLIPTextEncode": ["CONDITIONING"], "VAEDecode": ["IMAGE"], "ImageFromBatch": ["IMAGE"]}


def _load(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def _inputs(node_classes, class_type):
    """``(socket input ids, widget input ids in schema order, {id: input})`` of a node type."""
    if class_type in CORE_NODES:
        sockets, widgets = CORE_NODES[class_type]
        return sockets, widgets, {}
    schema = node_classes[class_type].GET_SCHEMA()
    by_id = {i.id: i for i in schema.inputs}
    widgets = [i.id for i in schema.inputs if i.io_type in WIDGET_TYPES]
    return [i for i in by_id if i not in widgets], widgets, by_id


def test_the_required_workflows_exist():
    assert {"trajectory_preview", "synthetic_views"} <= set(WORKFLOWS)
    assert sorted(p.stem for p in UI_DIR.glob("*.json")) == WORKFLOWS


@pytest.mark.parametrize("name", WORKFLOWS)
def test_api_workflow_is_valid_against_the_schemas(node_classes, name):
    api = _load(API_DIR, name)
    for nid, entry in api.items():
        class_type = entry["class_type"]
        assert class_type in node_classes or class_type in CORE_NODES, f"{name}: unknown node {class_type}"
        sockets, widgets, by_id = _inputs(node_classes, class_type)
        assert set(entry["inputs"]) <= set(sockets) | set(widgets), f"{name} node {nid}: unknown input"
        for input_id, value in entry["inputs"].items():
            if isinstance(value, list):  # a link [source id, output slot]
                src = api[value[0]]
                src_outputs = CORE_OUTPUTS.get(src["class_type"]) or [
                    o.io_type for o in node_classes[src["class_type"]].GET_SCHEMA().outputs]
                assert value[1] < len(src_outputs), f"{name} node {nid}.{input_id}: no output slot {value[1]}"
                if by_id:
                    assert by_id[input_id].io_type == src_outputs[value[1]], f"{name} node {nid}.{input_id}"
                continue
            inp = by_id.get(input_id)
            if inp is None:
                continue
            if getattr(inp, "options", None):
                assert value in inp.options, f"{name} node {nid}.{input_id}={value!r}"
            if getattr(inp, "min", None) is not None:
                assert inp.min <= value <= inp.max, f"{name} node {nid}.{input_id}={value!r}"
        required = [i for i, spec in by_id.items() if not spec.optional]
        missing = [i for i in required if i not in entry["inputs"]]
        assert not missing, f"{name} node {nid} ({class_type}) lacks required inputs {missing}"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflows_use_no_deprecated_node(node_classes, name):
    """Shipped examples teach the current nodes (the frontend badges deprecated ones and hides them from search)."""
    used = {e["class_type"] for e in _load(API_DIR, name).values()} - set(CORE_NODES)
    assert sorted(c for c in used if node_classes[c].GET_SCHEMA().is_deprecated) == []


def _api_edges(api: dict) -> set[tuple]:
    return {(int(v[0]), v[1], int(nid), input_id) for nid, e in api.items()
            for input_id, v in e["inputs"].items() if isinstance(v, list)}


def _ui_edges(ui: dict) -> set[tuple]:
    by_id = {n["id"]: n for n in ui["nodes"]}
    edges = set()
    for link_id, src, src_slot, dst, dst_slot, _type in ui["links"]:
        dst_input = by_id[dst]["inputs"][dst_slot]
        assert dst_input["link"] == link_id
        assert link_id in by_id[src]["outputs"][src_slot]["links"]
        edges.add((src, src_slot, dst, dst_input["name"]))
    return edges


@pytest.mark.parametrize("name", WORKFLOWS)
def test_ui_workflow_is_the_same_graph_as_the_api_workflow(node_classes, name):
    api, ui = _load(API_DIR, name), _load(UI_DIR, name)
    assert {int(k): v["class_type"] for k, v in api.items()} == {n["id"]: n["type"] for n in ui["nodes"]}
    assert _ui_edges(ui) == _api_edges(api)
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])
    for n in ui["nodes"]:
        sockets, widgets, by_id = _inputs(node_classes, n["type"])
        # every socket input of the schema, in order (a twin made before an input was added lacks it: regenerate)
        assert [i["name"] for i in n["inputs"] if "widget" not in i] == sockets, f"{name} node {n['id']}"
        inputs = api[str(n["id"])]["inputs"]
        constants = {k: v for k, v in inputs.items() if not isinstance(v, list)}
        # UI workflows store widget values by position, in schema order; a widget with
        # control_after_generate is followed by its mode, and a widget driven by a link keeps a placeholder.
        values, stored = list(n["widgets_values"]), {}
        for w in widgets:
            stored[w] = values.pop(0)
            if getattr(by_id.get(w), "control_after_generate", None):
                assert values.pop(0) in ("fixed", "increment", "decrement", "randomize"), f"{name} node {n['id']}"
        assert not values, f"{name} node {n['id']}: {len(values)} widget values too many"
        assert {k: v for k, v in stored.items() if not isinstance(inputs.get(k), list)} == constants, \
            f"{name} node {n['id']}"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_layout_keeps_nodes_apart_and_right_of_their_sources(import_by_path, name):
    """Whatever sizes the frontend reports, the generator's layout gives every node at least that size (plus the
    image-preview room for output nodes), keeps title bars and bodies apart, and puts each node right of its
    sources with room for the links."""
    gen, ui = import_by_path(REPO_ROOT / "scripts" / "workflow_api_to_ui.py"), _load(UI_DIR, name)
    rng, title = random.Random(name), 30.0
    sizes = {n["id"]: (rng.uniform(140, 480), rng.uniform(26, 700)) for n in ui["nodes"]}
    outputs = {n["id"] for n in ui["nodes"] if rng.random() < 0.5}
    gen.lay_out(ui, sizes, title, outputs)
    box = {n["id"]: (n["pos"][0], n["pos"][1] - title, n["size"][0], n["size"][1] + title) for n in ui["nodes"]}
    for n in ui["nodes"]:
        w, h = sizes[n["id"]]
        assert n["size"][0] >= w - 0.5 and n["size"][1] >= h + (gen.IMAGE_PREVIEW_HEIGHT if n["id"] in outputs else 0) - 0.5
    for (a, (xa, ya, wa, ha)), (b, (xb, yb, wb, hb)) in itertools.combinations(box.items(), 2):
        assert xa + wa <= xb or xb + wb <= xa or ya + ha <= yb or yb + hb <= ya, f"{name}: nodes {a} and {b} overlap"
    for _link, src, _slot, dst, _dst_slot, _type in ui["links"]:
        assert box[dst][0] >= box[src][0] + box[src][2] + gen.COLUMN_GAP - 0.5, f"{name}: {src} → {dst}"


def test_generator_keeps_a_model_name_whose_folder_is_empty_on_the_server(import_by_path):
    """A loader's combo lists the server's files; on a server without the model (the real-weights workflow
    regenerated on a test server) the list is empty and the prompt's own file name is what the twin keeps."""
    gen = import_by_path(REPO_ROOT / "scripts" / "workflow_api_to_ui.py")
    info = {"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [[]]}}, "input_order": {"required":
            ["ckpt_name"]}, "output": ["MODEL", "CLIP", "VAE"], "output_name": ["MODEL", "CLIP", "VAE"]}}
    api = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}}}
    (node,) = gen.api_to_ui(api, info)["nodes"]
    assert node["widgets_values"] == ["v1-5-pruned-emaonly.safetensors"]
    api["1"]["inputs"] = {}
    assert gen.api_to_ui(api, info)["nodes"][0]["widgets_values"] == [None]


def test_docs_list_every_workflow():
    """docs/nodes.md has one row per shipped workflow (both formats share the name)."""
    text = (REPO_ROOT / "docs" / "nodes.md").read_text()
    table = text[text.index("## Workflows"):].split("\n## ")[0]
    listed = {row.split("|")[1].strip().strip("`") for row in table.splitlines() if row.startswith("| `")}
    assert listed == set(WORKFLOWS)
