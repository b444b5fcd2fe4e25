#!/bin/bash
# axon under any mpiexec (MPICH hydra, Open MPI, Intel MPI, Cray PALS), on one or many hosts.
# Usage:   NP=8 launch/mpiexec.sh run.yaml [--set key=value ...]
#          NP=16 MPIEXEC_FLAGS="-f hosts.txt" launch/mpiexec.sh run.yaml     (MPICH hostfile)
# Needs mpi4py in the Python environment, built against the same MPI as this mpiexec: rank 0
# broadcasts the rendezvous address/port through it. See launch/README.md.
set -euo pipefail
CONFIG="${1:-axon/configs/local.yaml}"
shift || true
# Hangs and lost ranks (launch/README.md): axon's heartbeat stops every rank within
# train.peer_timeout_s (30) of a lost one and its watchdog ends a collective that waits longer
# than train.collective_timeout_s (600), writing OUT_DIR/flight for `python -m axon diagnose OUT_DIR`.
# Behind it, NCCL's own watchdog (process-group timeout: that + max(30 s, 10%)) ends a rank left
# blocked (ASYNC_ERROR_HANDLING=1) and dumps PyTorch's flight recorder (the last 2000 collectives)
# to OUT_DIR/flight/nccl_trace_rank_R. axon sets these same defaults itself; exported here to be seen
# (used only on GPUs).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export TORCH_NCCL_TRACE_BUFFER_SIZE=${TORCH_NCCL_TRACE_BUFFER_SIZE:-2000}
export TORCH_NCCL_DUMP_ON_TIMEOUT=${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}
# OMP_NUM_THREADS is left unset on purpose: axon then gives each rank (cores / ranks per node) threads.
exec "${MPIEXEC:-mpiexec}" -n "${NP:-4}" ${MPIEXEC_FLAGS:-} "${PYTHON:-python}" -m axon train "$CONFIG" "$@"
