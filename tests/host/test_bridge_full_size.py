"""Tier 3 at full size: the MODEL / CLIP / VAE bridge in the real host, with a full-size SD1.5 checkpoint of random
weights, a kohya-layout LoRA and an AnimateDiff v3-layout motion module (tests/host/full_size.py writes them once per
session, ~3 GB, under a temporary folder).

Several GB of RAM: the tests take the heavy-job lock (/tmp/mvc-heavy.lock, the same one ``flock`` takes for any
full-size job on a shared machine) for as long as they run. Skipped with the host tier's reason without
COMFYUI_PATH / COMFYUI_PY.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
HEAVY_LOCK = Path("/tmp/mvc-heavy.lock")
LOCK_WAIT_S = 3600
TOLERANCE = 1e-4  # relative, fp32 on CPU: the two implementations differ in summation order only

sys.path.insert(0, str(HERE))
from full_size import write_identity_motion_module, write_kohya_lora, write_random_sd15_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def heavy_lock(host_paths):
    """Hold the heavy-job lock while this module's full-size tests run: a blocking wait in line with the other
    holders (``flock`` commands), up to an hour, then skip saying why."""
    def give_up(signum, frame):
        raise TimeoutError

    with HEAVY_LOCK.open("a") as handle:
        previous = signal.signal(signal.SIGALRM, give_up)
        signal.alarm(LOCK_WAIT_S)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except TimeoutError:
            pytest.skip(f"{HEAVY_LOCK} stayed held by other full-size jobs for {LOCK_WAIT_S} s")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def full_size_files(heavy_lock, tmp_path_factory) -> dict[str, Path]:
    """The three full-size files, written once per test session (only this module uses them), under the lock:
    writing them takes ~3 GB of RAM."""
    folder = tmp_path_factory.mktemp("full_size")
    return {"checkpoint": write_random_sd15_checkpoint(folder / "sd15_random.safetensors"),
            "lora": write_kohya_lora(folder / "kohya_lora.safetensors"),
            "motion": write_identity_motion_module(folder / "mm_identity.safetensors")}


@pytest.fixture(scope="module")
def probe(heavy_lock, full_size_files, host_paths, tmp_path_factory) -> dict:
    """tests/host/bridge_probe.py in ComfyUI's interpreter: ComfyUI's own models vs the bridge, and memory."""
    root, python = host_paths
    work = tmp_path_factory.mktemp("probe")
    (work / "embeddings").mkdir()
    args = {"repo": str(REPO_ROOT), "checkpoint": str(full_size_files["checkpoint"]),
            "lora": str(full_size_files["lora"]), "motion_dir": str(full_size_files["motion"].parent),
            "motion": full_size_files["motion"].name, "embeddings": str(work / "embeddings"), "frames": 2,
            "latent": 16, "seed": 0}
    (work / "args.json").write_text(json.dumps(args))
    run = subprocess.run([str(python), str(HERE / "bridge_probe.py"), str(work / "args.json"), str(work / "out.json")],
                         cwd=root, capture_output=True, text=True, timeout=3600,
                         env=dict(os.environ, COMFYUI_PATH=str(root), OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads((work / "out.json").read_text())
    if os.environ.get("MVC_BRIDGE_PROBE_OUT"):
        Path(os.environ["MVC_BRIDGE_PROBE_OUT"]).write_text(json.dumps(result, indent=1))
    return result


def test_comfyui_detects_the_random_checkpoint_as_sd15(probe):
    assert probe["family"] == "SD15"


@pytest.mark.parametrize("route", ["plain", "lora"])
def test_the_bridged_unet_is_comfyuis_patched_unet_without_a_copy(probe, route):
    """Same latent, timestep and text: ε of the pack's video UNet (motion module adding nothing) vs ComfyUI's
    ``diffusion_model`` per frame, with and without the LoRA; the views hold ComfyUI's own tensors."""
    assert probe[route]["eps_relative"] <= TOLERANCE, probe[route]
    assert probe[route]["views_share_comfy_tensors"]


def test_a_later_run_of_the_plain_model_reads_the_unpatched_weights(probe):
    """After a run with the LoRA, a run of the same checkpoint without it (another graph in the server): ComfyUI
    restores the weights when it loads the plain clone, and the run's views read them, not the LoRA's."""
    assert probe["plain_after_lora"]["eps_relative"] <= TOLERANCE, probe["plain_after_lora"]


def test_loras_reach_the_views_under_novram(probe):
    """ComfyUI's --novram loads nothing even when asked for a full load and applies LoRAs per layer call, which the
    views never make: the bridge has ComfyUI patch the weights in place instead (they stay on the CPU)."""
    assert probe["novram_lora"]["eps_relative"] <= TOLERANCE, probe["novram_lora"]


def test_the_lora_changes_both_by_far_more_than_the_tolerance(probe):
    assert probe["lora"]["lora_changes_eps"] > 100 * TOLERANCE
    assert probe["lora"]["lora_changes_cond"] > 100 * TOLERANCE


@pytest.mark.parametrize("route", ["plain", "lora"])
def test_the_subject_token_on_the_bridged_clip_is_clip_text_encodes_embedding(probe, route):
    """``embedding:subject`` in CLIP Text Encode equals the pack's token with the same vector, with and without the
    LoRA's CLIP part: what Train Customization trains is what the standard syntax uses."""
    assert probe[route]["cond_relative"] <= TOLERANCE, probe[route]


def test_the_bridged_vae_encodes_and_decodes_as_comfyuis(probe):
    assert probe["vae_encode_relative"] <= TOLERANCE
    assert probe["vae_decode_max_abs"] <= TOLERANCE


def test_views_add_no_weight_memory(probe):
    """Resident memory: the per-run views cost module objects, not weights (< 2 % of the loaded checkpoint); the
    motion module costs its own fp32 size (417 M values)."""
    memory = probe["memory_mib"]
    checkpoint = memory["checkpoint_loaded"]["VmRSS"] - memory["imports"]["VmRSS"]
    views = memory["plain_views"]["VmRSS"] - memory["plain_motion_module"]["VmRSS"]
    assert views < 0.02 * checkpoint, memory
    motion = memory["plain_motion_module"]["VmRSS"] - memory["checkpoint_loaded"]["VmRSS"]
    assert motion < 1.25 * 417.1376e6 * 4 / 2**20, memory


def _place(comfy, files: dict[str, Path]) -> dict[str, str]:
    """Hard-link the files into the server's model folders (a symlink out of a model folder is refused as an
    escape; ComfyUI lists a folder again when it changes)."""
    names = {}
    for key, folder in (("checkpoint", "checkpoints"), ("lora", "loras"), ("motion", "animatediff_models")):
        target = comfy.models_dir / folder / files[key].name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(files[key], target)
        names[key] = files[key].name
    return names


def _small(prompt: dict, names: dict[str, str]) -> dict:
    """workflows/mvcustom_real_weights.json with the test's files, a LoRA Loader and CPU-sized settings."""
    p = copy.deepcopy(prompt)
    p["1"]["inputs"]["ckpt_name"] = names["checkpoint"]
    p["20"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": names["lora"],
                                                        "strength_model": 1.0, "strength_clip": 1.0}}
    p["2"]["inputs"].update(model=["20", 0], motion_module=names["motion"])
    p["3"]["inputs"].update(views=4, width=64, height=64, supersample=1)
    p["4"]["inputs"].update(steps=1, frames=2, references=1, samples=4, clip=["20", 1], resume=False)
    p["5"]["inputs"].update(frames=2, width=64, height=64)
    for node in ("6", "7"):
        p[node]["inputs"]["clip"] = ["20", 1]
    p["10"]["inputs"].update(steps=2)
    return p


def test_real_weights_workflow_runs_with_a_lora_and_reads_the_checkpoint_once(heavy_lock, comfy, full_size_files):
    names = _place(comfy, full_size_files)
    prompt = _small(json.loads((REPO_ROOT / "workflows" / "mvcustom_real_weights.json").read_text()), names)
    loads_before = comfy.log_text().count("model_type EPS")
    status, body = comfy.post_prompt(prompt)
    assert status == 200, body
    entry = comfy.wait_history(body["prompt_id"], timeout_s=3600)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-3000:]
    assert len(entry["outputs"]["12"]["images"]) == 2
    assert comfy.log_text().count("model_type EPS") - loads_before == 1  # Load Checkpoint's one read
    name = prompt["4"]["inputs"]["name"]
    assert f"embedding:{name} does not exist" not in comfy.log_text()  # CLIP Text Encode found the trained token
    assert (comfy.models_dir / "mvcustom" / f"{name}.safetensors").is_file()
    assert (comfy.models_dir / "embeddings" / f"{name}.safetensors").is_file()
