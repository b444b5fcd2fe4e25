#!/usr/bin/env bash
# Sourced by launch/local.sh and tests/run.sh: make sure a virtual environment with torch,
# axon and the test tools exists. Idempotent: after the first run it only re-installs
# when pyproject.toml changes. AXON_VENV picks another location; PYTHON another interpreter.
set -euo pipefail
AXON_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AXON_VENV=${AXON_VENV:-$AXON_ROOT/.venv}
if [ ! -x "$AXON_VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$AXON_VENV"
fi
stamp="$AXON_VENV/.axon-installed"
want=$(sha256sum "$AXON_ROOT/pyproject.toml" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  # Keep a torch that is already there (a cluster's CUDA/ROCm build); otherwise the pinned
  # CPU build. An unpinned install would pull gigabytes of CUDA packages.
  "$AXON_VENV/bin/python" -c "import torch" 2>/dev/null || "$AXON_VENV/bin/pip" install -q torch==2.13.0
  "$AXON_VENV/bin/pip" install -q -e "$AXON_ROOT[test]"
  echo "$want" > "$stamp"
fi
