"""Tier 3: what a browser sees over the websocket while the pack's long nodes run: progress for long loops and
the sampler's latent previews (the server runs with ``--preview-method auto``, see conftest.py)."""

from __future__ import annotations

import json
import struct
import urllib.request
import uuid

import pytest

websocket = pytest.importorskip("websocket", reason="websocket-client is needed to read ComfyUI's websocket")

PREVIEW_IMAGE, JPEG = 1, 1  # server.BinaryEventTypes.PREVIEW_IMAGE, its image type for JPEG


def _run_and_listen(comfy, prompt: dict, timeout_s: float = 600) -> tuple[list[dict], list[bytes], dict]:
    """Queue ``prompt`` for a websocket client of our own; its JSON messages, binary frames and history entry."""
    client = uuid.uuid4().hex
    ws = websocket.create_connection(f"{comfy.url.replace('http', 'ws')}/ws?clientId={client}", timeout=timeout_s)
    try:
        body = json.dumps({"prompt": prompt, "client_id": client}).encode()
        req = urllib.request.Request(f"{comfy.url}/prompt", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            prompt_id = json.loads(r.read())["prompt_id"]
        messages, frames = [], []
        while True:
            data = ws.recv()
            if isinstance(data, bytes):
                frames.append(data)
                continue
            msg = json.loads(data)
            messages.append(msg)
            if msg["type"] in ("executing", "execution_error", "execution_interrupted") \
                    and msg["data"].get("prompt_id") == prompt_id \
                    and (msg["type"] != "executing" or msg["data"].get("node") is None):
                break
    finally:
        ws.close()
    return messages, frames, comfy.wait_history(prompt_id)


def _progress(messages: list[dict], node: str) -> list[tuple[int, int]]:
    return [(m["data"]["value"], m["data"]["max"]) for m in messages
            if m["type"] == "progress" and m["data"].get("node") == node]


def test_sampler_sends_progress_and_latent_previews(comfy):
    traj = {"frames": 4, "width": 64, "height": 64, "fov_y_deg": 50.0}
    prompt = {
        "1": {"class_type": "MVC_TinyBackbone", "inputs": {"seed": 0, "window": 0}},
        "2": {"class_type": "MVC_OrbitTrajectory", "inputs": {**traj, "radius": 1.2}},
        "3": {"class_type": "MVC_EncodePrompt", "inputs": {"backbone": ["1", 0], "text": "a toy"}},
        "4": {"class_type": "MVC_EncodePrompt", "inputs": {"backbone": ["1", 0], "text": ""}},
        "5": {"class_type": "MVC_MVCustomSampler",
              "inputs": {"model": ["1", 0], "trajectory": ["2", 0], "positive": ["3", 0], "negative": ["4", 0],
                         "seed": 1, "steps": 3, "cfg": 5.0, "pose_ratio": 1.0, "window": 16, "overlap": 4}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    }
    messages, frames, entry = _run_and_listen(comfy, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert _progress(messages, "5") == [(1, 3), (2, 3), (3, 3)]
    previews = [f for f in frames if struct.unpack(">II", f[:8]) == (PREVIEW_IMAGE, JPEG)]
    assert len(previews) >= 3 and all(f[8:10] == b"\xff\xd8" for f in previews)  # JPEG pictures


def test_trajectory_preview_of_2048_cameras_reports_progress(comfy):
    prompt = {
        "1": {"class_type": "MVC_OrbitTrajectory", "inputs": {"frames": 2048, "width": 64, "height": 64,
                                                              "fov_y_deg": 50.0}},
        "2": {"class_type": "MVC_TrajectoryPreview", "inputs": {"trajectory": ["1", 0], "width": 256, "height": 256,
                                                                "title": ""}},
    }
    messages, _, entry = _run_and_listen(comfy, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert _progress(messages, "2") == [(1, 2), (2, 2)]
