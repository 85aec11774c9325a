"""The pack as ComfyUI sees it: registration, schema hygiene, and where ComfyUI may be imported."""

from __future__ import annotations

import asyncio
import inspect
import pkgutil
import posixpath
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NODES_DIR = REPO_ROOT / "nodes"
HOST_ROOTS = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution"}


def _all_node_classes(pack, host) -> set[type]:
    """Every ComfyNode subclass defined in any module under nodes/."""
    import importlib

    found = set()
    for info in pkgutil.iter_modules([str(NODES_DIR)]):
        module = importlib.import_module(f"{pack.__name__}.nodes.{info.name}")
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, host["comfy_api.latest"].io.ComfyNode) \
                    and obj.__module__ == module.__name__:
                found.add(obj)
    return found


def test_entrypoint_registers_every_node_class_in_nodes(pack, host, node_classes):
    defined = _all_node_classes(pack, host)
    assert defined, "no node classes found under nodes/"
    assert set(node_classes.values()) == defined


def test_entrypoint_returns_a_comfy_extension(pack, host):
    ext = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(ext, host["comfy_api.latest"].ComfyExtension)


def test_pack_uses_v3_registration_only(pack):
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")
    assert not hasattr(pack, "NODE_DISPLAY_NAME_MAPPINGS")


def test_every_schema_is_prefixed_described_and_tooltipped(node_classes):
    for node_id, cls in node_classes.items():
        schema = cls.GET_SCHEMA()
        assert schema.node_id.startswith("MVC_"), node_id
        assert schema.display_name and schema.display_name.startswith("MVCustom"), node_id
        assert schema.category.startswith("MVCustom/"), node_id
        assert len(schema.description) > 20, node_id
        for inp in schema.inputs or []:
            assert inp.tooltip and len(inp.tooltip) > 10, f"{node_id}.{inp.id} has no tooltip"
        for out in schema.outputs or []:
            assert out.tooltip, f"{node_id} output {out.id} has no tooltip"


def test_execute_parameters_match_schema_inputs(node_classes):
    """ComfyUI calls execute(**inputs): a renamed widget must not silently drop its value."""
    for node_id, cls in node_classes.items():
        schema = cls.GET_SCHEMA()
        params = inspect.signature(cls.execute).parameters
        input_ids = {i.id for i in schema.inputs or []}
        named = {n for n, p in params.items() if p.kind is not p.VAR_KEYWORD}
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):  # e.g. preset widgets gathered by name
            assert named <= input_ids, f"{node_id}: execute names {sorted(named - input_ids)} not in the schema"
        else:
            assert input_ids == named, f"{node_id}: schema inputs {sorted(input_ids)} vs execute {sorted(named)}"


def test_default_widget_values_lie_within_their_bounds(node_classes):
    for node_id, cls in node_classes.items():
        for inp in cls.GET_SCHEMA().inputs or []:
            lo, hi, default = getattr(inp, "min", None), getattr(inp, "max", None), inp.default
            if default is None:
                continue
            if lo is not None:
                assert default >= lo, f"{node_id}.{inp.id}"
            if hi is not None:
                assert default <= hi, f"{node_id}.{inp.id}"
            options = getattr(inp, "options", None)
            if options:
                assert default in options, f"{node_id}.{inp.id}: {default!r} not in {options}"


def test_only_host_module_imports_comfyui(imported_roots):
    offenders = {p.name: sorted(imported_roots(p) & HOST_ROOTS) for p in NODES_DIR.glob("*.py")
                 if p.name != "_host.py" and imported_roots(p) & HOST_ROOTS}
    assert offenders == {}
    assert {"comfy", "comfy_api", "folder_paths"} <= imported_roots(NODES_DIR / "_host.py")


def test_no_module_imports_our_nodes_package_as_top_level_nodes(imported_roots):
    """Inside ComfyUI the top-level name ``nodes`` is the host's nodes.py."""
    for p in [REPO_ROOT / "__init__.py", *NODES_DIR.glob("*.py")]:
        assert "nodes" not in imported_roots(p), p.name


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_pack_root_imports_outside_comfyui_without_touching_sys_path(tmp_path):
    code = (
        "import asyncio, importlib.util, sys\n"
        f"root = {str(REPO_ROOT)!r}\n"
        "before = list(sys.path)\n"
        "spec = importlib.util.spec_from_file_location('somepack', root + '/__init__.py',"
        " submodule_search_locations=[root])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['somepack'] = m; spec.loader.exec_module(m)\n"
        "assert sys.path == before, 'sys.path changed'\n"
        "import mvcustom_core.cameras\n"
        "assert mvcustom_core.__file__.startswith(root), mvcustom_core.__file__\n"
        "assert 'nodes' not in sys.modules and 'somepack.nodes' not in sys.modules\n"
        "try:\n    asyncio.run(m.comfy_entrypoint())\nexcept RuntimeError as e:\n    print('ERR', e)\n"
    )
    r = _run_python(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ERR ComfyUI-MVCustom must be loaded by ComfyUI" in r.stdout


def test_doctest_collection_of_the_repo_root_does_not_fail(tmp_path):
    """``pytest --doctest-modules`` pointed at the root ``__init__.py`` must collect cleanly."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
                        "--doctest-modules", "--import-mode=importlib", str(REPO_ROOT / "__init__.py")],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 5), r.stdout + r.stderr  # 5 = collected nothing, which is fine
    assert "error" not in r.stdout.lower(), r.stdout


@pytest.mark.parametrize("io_type", ["MVC_CAMERA_TRAJECTORY", "CAMERACTRL_POSES", "MVC_BACKBONE",
                                     "MVC_CUSTOMIZATION", "MVC_DFR_PLAN", "MVC_CLC_PLAN"])
def test_custom_socket_types_are_declared(pack, io_type):
    import importlib

    types_mod = importlib.import_module(f"{pack.__name__}.nodes.types")
    declared = {getattr(types_mod, n).io_type for n in types_mod.__all__}
    assert io_type in declared


def test_web_directory_holds_the_frontend_scripts(pack):
    web = (REPO_ROOT / pack.WEB_DIRECTORY).resolve()
    scripts = sorted(p.relative_to(web).as_posix() for p in web.rglob("*") if p.is_file())
    assert scripts and all(s.endswith(".js") for s in scripts), scripts  # ComfyUI serves only .js
    upload = (web / "js" / "load_trajectory_upload.js").read_text()
    assert '"MVC_LoadTrajectory"' in upload and '"/upload/image"' in upload


def test_web_script_imports_resolve_where_the_frontend_serves_them(pack):
    """ComfyUI serves ``web/<path>`` at ``/extensions/<pack folder>/<path>`` and the frontend's module shims at
    ``/scripts/<name>.js``; a relative import is resolved by the browser against the script's URL, so each
    must land on a shim or on one of the pack's own scripts (``../../scripts/app.js`` from ``js/`` 404s)."""
    web = (REPO_ROOT / pack.WEB_DIRECTORY).resolve()
    ours = {f"/extensions/AnyPackFolder/{p.relative_to(web).as_posix()}" for p in web.rglob("*.js")}
    for url in sorted(ours):
        source = (web / url.split("/", 3)[3]).read_text()
        specs = re.findall(r"""\bimport\s*(?:[^"';]*?\bfrom\s*)?["']([^"']+)["']""", source)
        specs += re.findall(r"""\bimport\(\s*["']([^"']+)["']\s*\)""", source)
        assert specs, f"{url}: no imports found (the pattern is stale?)"
        for spec in specs:
            assert spec.startswith(("./", "../")), f"{url}: bare import {spec!r} cannot resolve in a browser"
            target = posixpath.normpath(posixpath.join(posixpath.dirname(url), spec))
            assert re.fullmatch(r"/scripts/\w+\.js", target) or target in ours, f"{url}: {spec!r} → {target}"


def test_required_inputs_come_before_optional_ones(node_classes):
    """The frontend lays widgets out required-first; keeping the schema in that order makes schema order the
    positional order of ``widgets_values`` in saved workflows (what test_workflows relies on)."""
    for node_id, cls in node_classes.items():
        flags = [bool(i.optional) for i in cls.GET_SCHEMA().inputs or []]
        assert flags == sorted(flags), f"{node_id}: an optional input precedes a required one"
