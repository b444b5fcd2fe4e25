#!/usr/bin/env bash
# The README's test command: set up (first time only), then run the whole suite.
# Extra arguments go to pytest, e.g.  bash tests/run.sh -k equivalence
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../launch/setup_env.sh"
cd "$AXON_ROOT"
exec "$AXON_VENV/bin/python" -m pytest tests "$@"
