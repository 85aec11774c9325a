"""The MODEL / CLIP / VAE bridge's memory against Load Checkpoint alone, in the real host.

Needs ComfyUI (``COMFYUI_PATH``, ``COMFYUI_PY``) and several GB of RAM: run it under the heavy-job lock
(``flock /tmp/mvc-heavy.lock python -m benchmarks.run_all --only bench_bridge``). It writes a full-size SD1.5
checkpoint with random weights (fp16, 2.1 GB), a kohya LoRA and an AnimateDiff v3-layout motion module
(``tests/host/full_size.py``) to a temporary folder and runs ``tests/host/bridge_probe.py`` in ComfyUI's
interpreter: Load Checkpoint (``load_checkpoint_guess_config``) and ComfyUI's model management place the model,
then the pack's Apply Motion Module and its per-run views run one forward.

Rows: the process's resident memory (``VmRSS``) and peak (``VmHWM``) after each stage, and on CUDA torch's allocated
memory; the goal is that the bridge adds the motion module and nothing of the checkpoint's size (a second load, as
Load Backbone beside Load Checkpoint would do, doubles it). ``quick`` runs the same (ComfyUI detects SD1.5 by full
shapes; there is no small version).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = [("imports", "ComfyUI and the pack imported"),
          ("checkpoint_loaded", "Load Checkpoint alone, placed by model management"),
          ("plain_motion_module", "+ Apply Motion Module (motion module loaded)"),
          ("plain_views", "+ the run's views over the loaded UNet"),
          ("plain_forward", "+ one forward (2 frames, 16x16 latents)")]
MOTION_VALUES = 417_137_600  # AnimateDiff v3's MotionAdapter (configs/animatediff/v3.json)

__all__ = ["run"]


def run(quick: bool = False) -> list[dict]:
    root, python = os.environ.get("COMFYUI_PATH"), os.environ.get("COMFYUI_PY")
    if not (root and python):
        return [{"name": "bridge memory", "result": "not run: set COMFYUI_PATH and COMFYUI_PY"}]
    sys.path.insert(0, str(ROOT / "tests" / "host"))
    from full_size import write_identity_motion_module, write_kohya_lora, write_random_sd15_checkpoint

    with tempfile.TemporaryDirectory(prefix="mvc_bench_bridge_") as tmp:
        folder = Path(tmp)
        (folder / "embeddings").mkdir()
        args = {"repo": str(ROOT), "checkpoint": str(write_random_sd15_checkpoint(folder / "sd15.safetensors")),
                "lora": str(write_kohya_lora(folder / "lora.safetensors")),
                "motion": write_identity_motion_module(folder / "mm.safetensors").name, "motion_dir": str(folder),
                "embeddings": str(folder / "embeddings"), "frames": 2, "latent": 16, "seed": 0, "fp32": False}
        (folder / "args.json").write_text(json.dumps(args))
        subprocess.run([python, str(ROOT / "tests" / "host" / "bridge_probe.py"), str(folder / "args.json"),
                        str(folder / "out.json")], cwd=root, check=True, env=dict(os.environ, COMFYUI_PATH=root))
        memory = json.loads((folder / "out.json").read_text())["memory_mib"]

    base = memory["imports"]["VmRSS"]
    checkpoint = memory["checkpoint_loaded"]["VmRSS"] - base
    rows = []
    for key, label in STAGES:
        m = memory[key]
        row = {"name": label, "resident MiB": m["VmRSS"], "peak resident MiB": m["VmHWM"]}
        if "cuda_allocated" in m:
            row.update({"CUDA allocated MiB": m["cuda_allocated"], "CUDA peak MiB": m["cuda_max_allocated"]})
        rows.append(row)
    views = memory["plain_views"]["VmRSS"] - memory["plain_motion_module"]["VmRSS"]
    motion = memory["plain_motion_module"]["VmRSS"] - memory["checkpoint_loaded"]["VmRSS"]
    bridged = memory["plain_forward"]["VmRSS"] - base
    rows.append({"name": "ratio: (bridge run − motion module) / Load Checkpoint alone, resident above imports",
                 "resident MiB": f"{(bridged - motion) / checkpoint:.3f}x (goal: ~1x, not 2x)"})
    rows.append({"name": "views over the loaded UNet (what the bridge itself adds)", "resident MiB": views})
    rows.append({"name": f"motion module ({MOTION_VALUES / 1e6:.0f} M values in the UNet's dtype)",
                 "resident MiB": motion})
    if "cuda_allocated" not in memory["plain_forward"]:
        rows.append({"name": "CUDA allocated", "result": "not measured: no CUDA device on this machine"})
    return rows
