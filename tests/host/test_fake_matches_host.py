"""Tier 3: the tier-2 fake of comfy_api.latest accepts no keyword the real one lacks.

tests/nodes/fake_comfy.py stands in for ComfyUI in tier 2; if it accepted an argument the real
constructors do not, a schema could pass tier 2 and break at load time. Compared by parameter names,
with the real API read from $COMFYUI_PATH by $COMFYUI_PY.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# Run with ComfyUI's interpreter in its checkout: the same describe_api, on the real modules.
_PROBE = """
import json, sys
sys.path.insert(0, ".")
sys.path.insert(0, %r)
from comfy_api.latest import io, ui
from api_probe import describe_api
print(json.dumps(describe_api(io, ui)))
"""


def _fake_api(import_by_path) -> dict:
    fake = import_by_path(REPO_ROOT / "tests/nodes/fake_comfy.py", "mvc_fake_comfy_probe")
    modules = fake.build_modules(fake.FolderState("", "", ""))
    probe = import_by_path(HERE / "api_probe.py", "mvc_api_probe")
    return probe.describe_api(modules["comfy_api.latest"].io, modules["comfy_api.latest"].ui)


@pytest.fixture(scope="module")
def real_api(host_paths) -> dict:
    root, py = host_paths
    r = subprocess.run([str(py), "-c", _PROBE % (str(HERE),)], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_fake_accepts_no_argument_the_real_api_lacks(real_api, import_by_path):
    fake = _fake_api(import_by_path)
    assert set(fake) == set(real_api)
    for key, fake_value in fake.items():
        real_value = real_api[key]
        if isinstance(fake_value, list):
            assert set(fake_value) <= set(real_value), f"{key}: fake accepts {sorted(set(fake_value) - set(real_value))}"
            n = min(len(fake_value), 2)  # id and the next positional argument are passed positionally
            assert fake_value[:n] == real_value[:n], f"{key}: positional order {fake_value[:n]} vs {real_value[:n]}"
        elif isinstance(fake_value, dict):
            assert fake_value.items() <= real_value.items(), key
        else:
            assert fake_value == real_value, key
