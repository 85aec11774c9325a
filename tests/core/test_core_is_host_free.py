"""mvcustom_core must import, and stay importable, with no ComfyUI present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "mvcustom_core"
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server"}


def test_no_core_module_imports_comfyui(imported_roots):
    offenders = {str(p.relative_to(CORE)): sorted(imported_roots(p) & HOST_MODULES)
                 for p in CORE.rglob("*.py") if imported_roots(p) & HOST_MODULES}
    assert offenders == {}


def test_core_imports_in_a_fresh_interpreter_without_host_modules():
    code = (
        "import sys, importlib, pkgutil, mvcustom_core\n"
        "for m in pkgutil.walk_packages(mvcustom_core.__path__, 'mvcustom_core.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        f"bad = sorted(set(sys.modules) & set({sorted(HOST_MODULES)!r}))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CORE.parent)
