#!/usr/bin/env bash
# Set up the venv if needed, then run the whole suite (core, nodes, and the real-host tier, which
# skips with its reason unless COMFYUI_PATH and COMFYUI_PY are set).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${MVC_VENV:-.venv}
export TRITON_INTERPRET=1
exec "$VENV/bin/python" -m pytest -q "$@"
