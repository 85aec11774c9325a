"""Tier 3: two graphs with different customizations, interleaved in one server, give what each gives alone.

One ComfyUI server keeps one backbone for every graph that uses it (the Tiny Backbone node's cached output here, a
Load Checkpoint MODEL in real use). Customization A, then B, then A with another seed run on that one backbone; a
fresh server state (``/free``, which empties ComfyUI's cache, so the backbone is built anew) then runs B and the
second A alone. Any state one run left on the shared backbone (pose blocks, subject token, attention) would show.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
import torch

from mvcustom_core.backbone.tiny import tiny_backbone
from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.customization import save_customization
from mvcustom_core.customization.file_format import customization_from_unet

safetensors_torch = pytest.importorskip("safetensors.torch")


def _customization(customize_tiny, seed: int):
    """A customization of the tiny backbone (seed 0) whose fusion uses the rendered features, so the output shows
    which one is applied."""
    az = torch.tensor([-0.45, -0.15, 0.15, 0.45])
    eye = torch.stack([2.0 * torch.sin(az), torch.full_like(az, -0.3), -2.0 * torch.cos(az)], dim=-1)
    cams = CameraSet.from_fov(look_at(eye, torch.zeros(3)), 50.0, (64, 64))
    model, ctx, _ = customize_tiny(tiny_backbone(0).unet, cams, fuse_identity=True, seed=seed)
    return customization_from_unet(model, ctx, token="<mvc-subject>", class_word="toy",
                                   token_embedding=torch.randn(1, 32, generator=torch.Generator().manual_seed(seed)))


def _graph(customization: str, seed: int, tag: str) -> dict:
    return {
        "1": {"class_type": "MVC_TinyBackbone", "inputs": {"seed": 0, "window": 0}},
        "2": {"class_type": "MVC_LoadCustomization", "inputs": {"customization": customization}},
        "3": {"class_type": "MVC_EncodePrompt", "inputs": {"backbone": ["1", 0], "text": ["2", 1],
                                                          "customization": ["2", 0]}},
        "4": {"class_type": "MVC_EncodePrompt", "inputs": {"backbone": ["1", 0], "text": ""}},
        "5": {"class_type": "MVC_OrbitTrajectory", "inputs": {"frames": 3, "width": 64, "height": 64,
                                                             "span_deg": 60.0, "loop": False, "radius": 1.0}},
        "6": {"class_type": "MVC_MVCustomSampler", "inputs": {"model": ["1", 0], "trajectory": ["5", 0],
                                                             "positive": ["3", 0], "negative": ["4", 0],
                                                             "customization": ["2", 0], "seed": seed, "steps": 2}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"interleaved/{tag}"}},
    }


def _run(comfy, customization: str, seed: int, tag: str) -> torch.Tensor:
    graph = _graph(customization, seed, tag)
    for node in graph.values():  # every other widget at the server's default
        info = comfy.get_json(f"/object_info/{node['class_type']}")[node["class_type"]]["input"]
        for section in ("required", "optional"):
            for name, spec in info.get(section, {}).items():
                if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                    node["inputs"].setdefault(name, spec[1]["default"])
    status, body = comfy.post_prompt(graph)
    assert status == 200, body
    entry = comfy.wait_history(body["prompt_id"], timeout_s=600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-3000:]
    ref = entry["outputs"]["7"]["latents"][0]
    return safetensors_torch.load_file(str(comfy.output_dir / ref["subfolder"] / ref["filename"]))["latent_tensor"]


def _free(comfy) -> None:
    """Empty ComfyUI's cache and unload its models; the worker applies it between prompts."""
    req = urllib.request.Request(f"{comfy.url}/free", data=json.dumps({"unload_models": True, "free_memory": True})
                                 .encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()
    time.sleep(2.0)  # the worker wakes on the flag and resets before the next prompt is queued


def test_interleaved_customizations_give_what_each_gives_alone(comfy, customize_tiny):
    folder = comfy.models_dir / "mvcustom"
    folder.mkdir(parents=True, exist_ok=True)
    save_customization(folder / "subject_a.safetensors", _customization(customize_tiny, 1))
    save_customization(folder / "subject_b.safetensors", _customization(customize_tiny, 2))

    a_first = _run(comfy, "subject_a.safetensors", 1, "a1")
    b_after_a = _run(comfy, "subject_b.safetensors", 1, "b1")
    a_after_b = _run(comfy, "subject_a.safetensors", 2, "a2")
    _free(comfy)
    b_alone = _run(comfy, "subject_b.safetensors", 1, "b1_alone")
    _free(comfy)
    a_alone = _run(comfy, "subject_a.safetensors", 2, "a2_alone")

    assert torch.equal(b_after_a, b_alone)
    assert torch.equal(a_after_b, a_alone)
    assert not torch.allclose(a_first, b_after_a, atol=1e-3)  # the customizations do differ
    assert a_first.shape == (3, 4, 8, 8)
