"""Make the UI-format twin (example_workflows/) of an API-format prompt (workflows/).

The widget order of every node comes from a running ComfyUI's ``/object_info`` (a URL) or a saved copy
of it (a file), so the UI file loads with each value in its widget. Nodes are laid out in columns by
their depth in the graph.

Usage:
    python scripts/workflow_api_to_ui.py --object-info http://127.0.0.1:8188/object_info \\
        workflows/mvcustom_tiny_pipeline.json example_workflows/mvcustom_tiny_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from mvcustom_core.files import atomic_write_text  # noqa: E402

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


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


def _depths(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(nid: str) -> int:
        if nid not in depth:
            sources = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((visit(s) for s in sources), default=-1)
        return depth[nid]

    for nid in api:
        visit(nid)
    return depth


def api_to_ui(api: dict, object_info: dict) -> dict:
    """The litegraph (UI) workflow of an API prompt."""
    depth = _depths(api)
    links, nodes = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    rows: dict[int, int] = {}
    for nid in sorted(api, key=lambda n: (depth[n], int(n))):
        entry, info = api[nid], object_info[api[nid]["class_type"]]
        inputs, widgets = [], []
        for name, spec in _input_specs(info):
            value = entry["inputs"].get(name)
            if _is_widget(spec):
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                default = options.get("default", spec[0][0] if isinstance(spec[0], list) else None)
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
        column = depth[nid]
        row = rows.get(column, 0)
        rows[column] = row + 1
        nodes.append({
            "id": int(nid), "type": entry["class_type"], "pos": [40 + 420 * column, 60 + 330 * row],
            "size": [380, 290], "flags": {}, "order": 0, "mode": 0, "inputs": inputs,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--object-info", required=True, help="URL of a running ComfyUI's /object_info, or a file")
    parser.add_argument("api", type=Path, help="API-format prompt (workflows/*.json)")
    parser.add_argument("ui", type=Path, help="where to write the UI-format workflow")
    args = parser.parse_args(argv)
    source = args.object_info
    if source.startswith("http"):
        with urllib.request.urlopen(source, timeout=60) as response:
            object_info = json.load(response)
    else:
        object_info = json.loads(Path(source).read_text())
    ui = api_to_ui(json.loads(args.api.read_text()), object_info)
    atomic_write_text(args.ui, json.dumps(ui, indent=2) + "\n")
    print(f"wrote {args.ui} ({len(ui['nodes'])} nodes, {len(ui['links'])} links)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
