"""Make the UI-format twins (example_workflows/) of the API-format prompts (workflows/).

Against a running ComfyUI that has this pack loaded:
1. the widget order of every node comes from the server's ``/object_info``, so each value lands in its widget;
2. each node's size comes from the server's own frontend in headless Chromium (``scripts/comfy_frontend.py``):
   the graph is loaded there and the size the frontend gives every node is read back;
3. nodes are laid out in columns by their depth in the graph with those sizes, output nodes with room for the
   image preview the frontend adds after a run, so no two nodes overlap as drawn.

Usage (every workflows/*.json, or the ones named; each is written to example_workflows/<same name>):
    python scripts/workflow_api_to_ui.py --server http://127.0.0.1:8188
    python scripts/workflow_api_to_ui.py --server http://127.0.0.1:8188 workflows/trajectory_preview.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from mvcustom_core.files import atomic_write_text  # noqa: E402

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
ORIGIN = (40, 60)  # top-left node body; its title bar is drawn above it
COLUMN_GAP = 100  # room for the links between columns
ROW_GAP = 40
# Output nodes grow by ~224 px when the frontend shows an image in them after a run (measured, frontend 1.27).
IMAGE_PREVIEW_HEIGHT = 260


def _is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def _input_specs(info: dict) -> list[tuple[str, list]]:
    """``(name, spec)`` of every input in the server's order (required, then optional)."""
    order = info.get("input_order", {})
    specs = []
    for section in ("required", "optional"):
        section_specs = info["input"].get(section, {})
        names = order.get(section, list(section_specs))
        specs += [(name, section_specs[name]) for name in names]
    return specs


def _depths(sources: dict) -> dict:
    """Column of each node (``sources``: node → the nodes linked into it): its longest chain of links."""
    depth = {}

    def visit(nid) -> int:
        if nid not in depth:
            depth[nid] = 1 + max((visit(s) for s in sources[nid]), default=-1)
        return depth[nid]

    for nid in sources:
        visit(nid)
    return depth


def api_to_ui(api: dict, object_info: dict) -> dict:
    """The litegraph (UI) workflow of an API prompt, every node at the origin with size 0 (see :func:`lay_out`)."""
    depth = _depths({nid: [v[0] for v in entry["inputs"].values() if isinstance(v, list)]
                     for nid, entry in api.items()})
    links, nodes = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    for nid in sorted(api, key=lambda n: (depth[n], int(n))):
        entry, info = api[nid], object_info[api[nid]["class_type"]]
        inputs, widgets = [], []
        for name, spec in _input_specs(info):
            value = entry["inputs"].get(name)
            if _is_widget(spec):
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                listed = spec[0] if isinstance(spec[0], list) else []  # a V1 combo: empty for a model-less folder
                default = options.get("default", listed[0] if listed else None)
                widgets.append(default if value is None or isinstance(value, list) else value)
                if options.get("control_after_generate"):
                    widgets.append("fixed")
                if isinstance(value, list):  # a widget driven by a link
                    inputs.append({"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO",
                                   "widget": {"name": name}, "link": None, "_source": value})
            else:
                inputs.append({"name": name, "type": spec[0], "link": None,
                               "_source": value if isinstance(value, list) else None})
        for slot in inputs:
            source = slot.pop("_source")
            if source is not None:
                link_id = len(links) + 1
                src_type = object_info[api[source[0]]["class_type"]]["output"][source[1]]
                links.append([link_id, int(source[0]), source[1], int(nid), inputs.index(slot), src_type])
                slot["link"] = link_id
                out_links.setdefault((source[0], source[1]), []).append(link_id)
        nodes.append({
            "id": int(nid), "type": entry["class_type"], "pos": list(ORIGIN), "size": [0, 0], "flags": {},
            "order": 0, "mode": 0, "inputs": inputs,
            "outputs": [{"name": name, "type": typ, "links": [], "slot_index": i}
                        for i, (name, typ) in enumerate(zip(info["output_name"], info["output"]))],
            "title": entry.get("_meta", {}).get("title", info.get("display_name", entry["class_type"])),
            "properties": {"Node name for S&R": entry["class_type"]}, "widgets_values": widgets,
        })
    for order, node in enumerate(nodes):
        node["order"] = order
        for out in node["outputs"]:
            out["links"] = out_links.get((str(node["id"]), out["slot_index"]), [])
    return {"last_node_id": max(int(n) for n in api), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def lay_out(ui: dict, sizes: dict[int, tuple[float, float]], title_height: float, output_nodes: set[int]) -> None:
    """Place the nodes of ``ui`` in place: one column per graph depth, left to right.

    ``sizes``: node id → ``(w, h)`` of its body as the frontend draws it. A column is as wide as its widest
    node and every node in it takes that width; nodes stack top-down, ordered by the mean height of the
    nodes that feed them (fewer crossing links), with their title bars and ``ROW_GAP`` between them. Output
    nodes get ``IMAGE_PREVIEW_HEIGHT`` more for the preview the frontend adds after a run.
    """
    by_id = {n["id"]: n for n in ui["nodes"]}
    sources: dict[int, list[int]] = {nid: [] for nid in by_id}
    for _link, src, _slot, dst, _dst_slot, _type in ui["links"]:
        sources[dst].append(src)
    depth = _depths(sources)
    columns: dict[int, list[int]] = defaultdict(list)
    for nid in sorted(by_id):
        columns[depth[nid]].append(nid)
    centre: dict[int, float] = {}
    x = ORIGIN[0]
    for col in sorted(columns):
        ids = sorted(columns[col], key=lambda n: (sum(centre[s] for s in sources[n]) / len(sources[n])
                                                  if sources[n] else 0.0, n))
        width = math.ceil(max(sizes[n][0] for n in ids))
        y = ORIGIN[1]
        for nid in ids:
            height = math.ceil(sizes[nid][1] + (IMAGE_PREVIEW_HEIGHT if nid in output_nodes else 0.0))
            by_id[nid]["pos"], by_id[nid]["size"] = [x, y], [width, height]
            centre[nid] = y + height / 2
            y += height + math.ceil(title_height) + ROW_GAP
        x += width + COLUMN_GAP


def measure(ui: dict, frontend) -> tuple[dict[int, tuple[float, float]], float]:
    """``({node id: (w, h)}, title height)``: the body sizes the frontend gives the nodes of ``ui``, widened
    where the title would be cut short (the frontend sizes nodes by their slots and widgets only)."""
    drawn = frontend.load_workflow(ui)
    title_height = max(n.bounds[3] - n.size[1] for n in drawn)
    title_widths = frontend.evaluate("""(() => {
        const ctx = app.canvas.ctx;
        ctx.save();
        ctx.font = app.canvas.title_text_font;
        const widths = Object.fromEntries(app.graph.nodes.map(n => [n.id, ctx.measureText(n.title).width]));
        ctx.restore();
        return widths;
    })()""")
    # the title text starts after the node's status dot (one title height); the frontend cuts it short unless
    # about two title heights remain to its right (measured, frontend 1.27)
    sizes = {n.id: (max(float(n.size[0]), title_widths[str(n.id)] + 3 * title_height), float(n.size[1]))
             for n in drawn}
    return sizes, title_height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="URL of a running ComfyUI with this pack loaded")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "example_workflows",
                        help="where the UI workflows go (default: example_workflows/)")
    parser.add_argument("api", type=Path, nargs="*", help="API prompts (default: every workflows/*.json)")
    args = parser.parse_args(argv)
    from comfy_frontend import Frontend, find_chromium  # scripts/, beside this file

    chromium = find_chromium()
    if chromium is None:
        parser.error("no Chromium found: install Debian's `chromium` or set MVC_CHROMIUM")
    server = args.server.rstrip("/")
    with urllib.request.urlopen(f"{server}/object_info", timeout=60) as response:
        object_info = json.load(response)
    outputs = {name for name, info in object_info.items() if info.get("output_node")}
    with Frontend(server, chromium) as frontend:
        for path in args.api or sorted((REPO_ROOT / "workflows").glob("*.json")):
            ui = api_to_ui(json.loads(path.read_text()), object_info)
            sizes, title_height = measure(ui, frontend)
            lay_out(ui, sizes, title_height, {n["id"] for n in ui["nodes"] if n["type"] in outputs})
            target = args.out_dir / path.name
            atomic_write_text(target, json.dumps(ui, indent=2) + "\n")
            print(f"wrote {target} ({len(ui['nodes'])} nodes, {len(ui['links'])} links)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
