"""Our LDM key tables against ComfyUI's own (``comfy.utils.unet_to_diffusers``, ``comfy.diffusers_convert``).

ComfyUI runs in its own interpreter (``COMFYUI_PY``) from its checkout (``COMFYUI_PATH``), so nothing from it enters
this process; skipped unless both are set (the host tier's variables, see tests/host/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mvcustom_core.backbone.ldm_keys import UNET_PREFIX, VAE_PREFIX, unet_key_table, vae_key_table
from mvcustom_core.backbone.loading import build_sd15_modules, shipped_config

# SD1.5 in ComfyUI's UNet config vocabulary (comfy/supported_models.py SD15 + model_detection); its
# unet_to_diffusers pops transformer_depth_output from the end, so the list runs from the last output block.
COMFY_SD15_UNET = {
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
}

SCRIPT = """
import json, sys, torch
import comfy.utils, comfy.diffusers_convert
args = json.load(open(sys.argv[1]))
unet = comfy.utils.unet_to_diffusers(args["unet_config"])
vae = {k: torch.empty(s, device="meta") for k, s in args["vae_shapes"].items()}
vae = {k: list(v.shape) for k, v in comfy.diffusers_convert.convert_vae_state_dict(vae).items()}
json.dump({"unet": unet, "vae": vae}, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def comfy_tables(tmp_path_factory):
    root, python = os.environ.get("COMFYUI_PATH"), os.environ.get("COMFYUI_PY")
    if not (root and python and (Path(root) / "comfy" / "utils.py").is_file()):
        pytest.skip("COMFYUI_PATH and COMFYUI_PY are not set: ComfyUI's key tables are the reference here")
    modules = build_sd15_modules(
        shipped_config("sd15/unet"), shipped_config("sd15/vae"), shipped_config("sd15/text_encoder"), device="meta"
    )
    folder = tmp_path_factory.mktemp("comfy")
    vae_shapes = {k: list(v.shape) for k, v in modules.vae.state_dict().items()}
    (folder / "in.json").write_text(json.dumps({"unet_config": COMFY_SD15_UNET, "vae_shapes": vae_shapes}))
    subprocess.run([python, "-c", SCRIPT, str(folder / "in.json"), str(folder / "out.json")], cwd=root, check=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    return modules, json.loads((folder / "out.json").read_text())


def test_unet_table_equals_comfyuis(comfy_tables):
    modules, comfy = comfy_tables
    ours = {m.diffusers: m.ldm.removeprefix(UNET_PREFIX)
            for m in unet_key_table(modules.unet.state_dict().keys(), modules.unet.config)}
    # ComfyUI's map also names class/addition embeddings that SD1.5 lacks.
    assert {k: comfy["unet"][k] for k in ours} == ours


def test_vae_table_equals_comfyuis(comfy_tables):
    modules, comfy = comfy_tables
    shapes = modules.vae.state_dict()
    ours = {}
    for m in vae_key_table(shapes.keys(), modules.vae.config):
        shape = list(shapes[m.diffusers].shape) + ([1, 1] if m.conv1x1 else [])
        ours[m.ldm.removeprefix(VAE_PREFIX)] = shape
    assert comfy["vae"] == ours
