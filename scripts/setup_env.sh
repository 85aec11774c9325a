#!/usr/bin/env bash
# Create (or reuse) the pack's development venv and install the pack with its test extra.
# torch is pinned only here, for this test set-up: 2.13.0 is the CPU build available offline.
# Usage: source-less; prints nothing but errors. Venv path: $MVC_VENV (default .venv in the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MVC_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, diffusers, kornia, pytest, pycolmap, triton" 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==2.13.0"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test]"
fi
