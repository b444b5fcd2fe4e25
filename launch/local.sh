#!/usr/bin/env bash
# The README's main job: set up (first time only), then train a small Llama on 4 CPU ranks.
# Extra arguments go to `axon train`, e.g.  bash launch/local.sh --set train.steps=20
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$AXON_ROOT"
# Four ranks share this machine's cores (at least one thread each).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / 4 > 0 ? $(nproc) / 4 : 1 ))}
# The default corpus is generated (5 MB of invented-world English, byte tokens), not downloaded.
[ -f runs/data/corpus.tok ] || "$AXON_VENV/bin/python" -m axon data prepare --default-corpus --out runs/data/corpus.tok
# A rank that dies: torchrun stops the others at once and each names it (axon's heartbeat, within
# train.peer_timeout_s); a hang ends after train.collective_timeout_s, see `python -m axon diagnose`.
# Each run of this demo starts over: an earlier one in runs/local moves to runs/local/earlier-TIME/
# (axon says so; nothing is deleted), unless a train.resume or --overwrite is given here.
START=(--overwrite)
case " $* " in *"train.resume="*|*" --overwrite "*) START=() ;; esac
exec "$AXON_VENV/bin/torchrun" --nproc-per-node 4 -m axon train axon/configs/local.yaml ${START[@]+"${START[@]}"} "$@"
