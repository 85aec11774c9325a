#!/usr/bin/env bash
# Set up the venv if needed, then run the demo on the built-in defaults; pictures go to demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${MVC_VENV:-.venv}
exec "$VENV/bin/python" -m mvcustom_core.demo --out "${1:-demo_out}"
