"""Tier 3: the tier-2 fake of comfy_api.latest accepts no keyword the real one lacks.

tests/nodes/fake_comfy.py stands in for ComfyUI in tier 2; if it accepted an argument the real
constructors do not, a schema could pass tier 2 and break at load time. Compared by parameter names,
with the real API read from $COMFYUI_PATH by $COMFYUI_PY.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TYPES = ["Int", "Float", "String", "Boolean", "Combo", "Image", "Mask", "Latent", "Model", "Vae", "Clip",
         "Conditioning", "AnyType"]

_PROBE = """
import inspect, json, sys
sys.path.insert(0, ".")
from comfy_api.latest import io, ui, ComfyExtension
TYPES = %r

def params(f):
    return [n for n, p in inspect.signature(f).parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

out = {}
for name in TYPES:
    t = getattr(io, name)
    out[f"io.{name}.Input"] = params(t.Input.__init__)
    out[f"io.{name}.Output"] = params(t.Output.__init__)
    out[f"io.{name}.io_type"] = t.io_type
custom = io.Custom("X")
out["io.Custom.Input"], out["io.Custom.Output"] = params(custom.Input.__init__), params(custom.Output.__init__)
out["io.Schema"] = params(io.Schema)
out["io.NodeOutput"] = params(io.NodeOutput.__init__)
out["ui.PreviewImage"] = params(ui.PreviewImage.__init__)
out["ui.PreviewText"] = params(ui.PreviewText.__init__)
out["io.UploadType"] = {e.name: e.value for e in io.UploadType}
out["io.Hidden"] = {e.name: e.value for e in io.Hidden}
print(json.dumps(out))
"""


def _params(f) -> list[str]:
    return [n for n, p in inspect.signature(f).parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _fake_api() -> dict:
    spec = importlib.util.spec_from_file_location("mvc_fake_comfy_probe", REPO_ROOT / "tests/nodes/fake_comfy.py")
    fake = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = fake
    try:
        spec.loader.exec_module(fake)
        modules = fake.build_modules(fake.FolderState("", "", ""))
    finally:
        del sys.modules[spec.name]
    io, ui = modules["comfy_api.latest"].io, modules["comfy_api.latest"].ui
    out = {}
    for name in TYPES:
        t = getattr(io, name)
        out[f"io.{name}.Input"] = _params(t.Input.__init__)
        out[f"io.{name}.Output"] = _params(t.Output.__init__)
        out[f"io.{name}.io_type"] = t.io_type
    custom = io.Custom("X")
    out["io.Custom.Input"], out["io.Custom.Output"] = _params(custom.Input.__init__), _params(custom.Output.__init__)
    out["io.Schema"] = _params(io.Schema)
    out["io.NodeOutput"] = _params(io.NodeOutput.__init__)
    out["ui.PreviewImage"] = _params(ui.PreviewImage.__init__)
    out["ui.PreviewText"] = _params(ui.PreviewText.__init__)
    out["io.UploadType"] = {e.name: e.value for e in io.UploadType}
    out["io.Hidden"] = {e.name: e.value for e in io.Hidden}
    return out


@pytest.fixture(scope="module")
def real_api(host_paths) -> dict:
    root, py = host_paths
    r = subprocess.run([str(py), "-c", _PROBE % (TYPES,)], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_fake_accepts_no_argument_the_real_api_lacks(real_api):
    fake = _fake_api()
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
