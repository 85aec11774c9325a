#!/usr/bin/env bash
# The GPU checks, in one device call (no CPU machine can run them): the rasterizer's Triton and torch paths against
# the plain-torch reference on CUDA (face ids equal, speed-ups), the dense-attention paths (tiled, flex_attention),
# and the full-size job on CUDA in float16 (seconds per 50-step sample and peak memory, beside plain AnimateDiff).
#
# Prepare once, on the machine that calls the device tool (its image has torch, triton, transformers and
# safetensors but neither diffusers nor kornia; the wheels stay out of git):
#   echo /.whl/ >> .git/info/exclude
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl diffusers==0.42.1 kornia==0.9.0 kornia_rs==0.2.0 importlib_metadata
# then run `bash scripts/gpu_check.sh` there with `.whl` carried and a 600 s limit. What comes back under $OUT:
# gpu_check.log and performance.md, whose GPU sections (written by benchmarks.run_all) go into docs/performance.md.
# `bash scripts/gpu_check.sh tiny_world` instead trains the built-in backbone from nothing on the GPU with the
# shipped defaults (issue: <= 10 min) and returns train_tiny_world.log and times.json (wall and CPU time per stage).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mvc-site .whl/*.whl \
    || { echo "gpu_check: could not install the carried wheels in .whl (see the header)" >&2; exit 1; }
export PYTHONPATH=/tmp/mvc-site${PYTHONPATH:+:$PYTHONPATH}
if [ "${1:-}" = tiny_world ]; then
    RUN=/tmp/mvc-tiny-world
    { time timeout 560 python3 scripts/train_tiny_world.py --output "$RUN" --device cuda --threads "$(nproc)"; } 2>&1 \
        | tee "$OUT/train_tiny_world.log"
    cp "$RUN/times.json" "$OUT/times.json"
    exit 0
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, triton, diffusers, kornia
print('torch', torch.__version__, 'triton', triton.__version__, 'diffusers', diffusers.__version__,
      'kornia', kornia.__version__, torch.cuda.get_device_name(0))"
    timeout 540 python3 -m benchmarks.run_all --only bench_raster bench_attention bench_fullsize_cuda
    echo "gpu_check: run_all exit status $?"
} 2>&1 | tee "$OUT/gpu_check.log"
cp docs/performance.md "$OUT/performance.md"
