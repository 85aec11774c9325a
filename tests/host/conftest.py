"""Tier 3: a real ComfyUI, headless on CPU, with this repo as its only custom-node pack.

Needs ``COMFYUI_PATH`` (a ComfyUI source checkout) and ``COMFYUI_PY`` (a python with its
requirements and the pack's dependencies); ``../shared/scripts/setup-comfyui.sh`` prints both.
Without them every test here skips with that reason. One server serves the whole module; it is
stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_FOLDER = "ComfyUI-MVCustom"
STARTUP_TIMEOUT_S = 120


@dataclass
class ComfyServer:
    url: str
    log: Path
    input_dir: Path
    output_dir: Path
    process: subprocess.Popen
    models_dir: Path | None = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, route: str, **query) -> bytes:
        q = ("?" + urllib.parse.urlencode(query)) if query else ""
        with urllib.request.urlopen(f"{self.url}{route}{q}", timeout=30) as r:
            return r.read()

    def get_json(self, route: str, **query):
        return json.loads(self.get(route, **query))

    def post_prompt(self, prompt: dict) -> tuple[int, dict]:
        """POST /prompt; returns (HTTP status, body) whether or not the graph validated."""
        body = json.dumps({"prompt": prompt, "client_id": uuid.uuid4().hex}).encode()
        req = urllib.request.Request(f"{self.url}/prompt", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_history(self, prompt_id: str, timeout_s: float = 120) -> dict:
        """Poll /history until the prompt has finished (success or error)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hist = self.get_json(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None \
                    and entry["status"].get("status_str") in ("success", "error"):
                return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited while running {prompt_id}:\n{self.log_text()[-4000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout_s} s:\n{self.log_text()[-4000:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_pack_requirements(comfy_py: Path) -> None:
    """Fail early, with the fix, when ComfyUI's python lacks what the pack imports."""
    probe = ("import importlib.util as u; "
             "print(' '.join(m for m in ('torch', 'kornia', 'matplotlib', 'safetensors') if u.find_spec(m) is None))")
    r = subprocess.run([str(comfy_py), "-c", probe], capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or r.stdout.strip():
        pytest.fail(f"COMFYUI_PY={comfy_py} cannot import {r.stdout.strip() or r.stderr[-500:]}: "
                    "install the pack's requirements.txt into it")


def _host_paths() -> tuple[Path, Path]:
    root, py = os.environ.get("COMFYUI_PATH"), os.environ.get("COMFYUI_PY")
    if not root:
        pytest.skip("COMFYUI_PATH is not set: tier 3 needs a ComfyUI checkout "
                    "(run ../shared/scripts/setup-comfyui.sh and export what it prints)")
    if not py:
        pytest.skip("COMFYUI_PY is not set: tier 3 needs the python of ComfyUI's venv")
    root_p, py_p = Path(root), Path(py)
    if not (root_p / "main.py").is_file():
        pytest.fail(f"COMFYUI_PATH={root} has no main.py")
    if not py_p.is_file():
        pytest.fail(f"COMFYUI_PY={py} does not exist")
    return root_p, py_p


@pytest.fixture(scope="session")
def host_paths() -> tuple[Path, Path]:
    """``(COMFYUI_PATH, COMFYUI_PY)``, or skip with the reason."""
    return _host_paths()


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> ComfyServer:
    comfy_root, comfy_py = _host_paths()
    _check_pack_requirements(comfy_py)
    work = tmp_path_factory.mktemp("comfy_host")
    custom = work / "custom_nodes"
    custom.mkdir()
    (custom / PACK_FOLDER).symlink_to(REPO_ROOT, target_is_directory=True)
    dirs = {k: work / k for k in ("input", "output", "temp", "user")}
    for d in dirs.values():
        d.mkdir()
    yaml = work / "extra_model_paths.yaml"
    yaml.write_text(f"mvcustom_dev:\n  custom_nodes: {custom}\n")
    port = _free_port()
    log = work / "comfyui.log"
    # --base-directory keeps models/ (customizations, embeddings written by nodes) out of the ComfyUI checkout.
    cmd = [str(comfy_py), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--base-directory", str(work),
           "--extra-model-paths-config", str(yaml), "--disable-api-nodes",
           "--database-url", "sqlite:///:memory:",
           "--input-directory", str(dirs["input"]), "--output-directory", str(dirs["output"]),
           "--temp-directory", str(dirs["temp"]), "--user-directory", str(dirs["user"]),
           "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_FOLDER,
           "--preview-method", "auto"]  # latent previews as a user who turned them on gets them
    env = dict(os.environ, OMP_NUM_THREADS="1", COMFY_NO_TELEMETRY="1", PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=comfy_root, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = ComfyServer(f"http://127.0.0.1:{port}", log, dirs["input"], dirs["output"], proc, work / "models")
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode} during startup:\n{server.log_text()[-4000:]}")
            try:
                server.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer in {STARTUP_TIMEOUT_S} s:\n{server.log_text()[-4000:]}")
                time.sleep(0.5)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        if os.environ.get("MVC_KEEP_HOST_LOG"):
            shutil.copy(log, os.environ["MVC_KEEP_HOST_LOG"])
