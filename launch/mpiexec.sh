#!/bin/bash
# axon under any mpiexec (MPICH hydra, Open MPI, Intel MPI, Cray PALS), on one or many hosts.
# Usage:   NP=8 launch/mpiexec.sh run.yaml [--set key=value ...]
#          NP=16 MPIEXEC_FLAGS="-f hosts.txt" launch/mpiexec.sh run.yaml     (MPICH hostfile)
# Needs mpi4py in the Python environment, built against the same MPI as this mpiexec: rank 0
# broadcasts the rendezvous address/port through it. See launch/README.md.
set -euo pipefail
CONFIG="${1:-axon/configs/local.yaml}"
shift || true
# OMP_NUM_THREADS is left unset on purpose: axon then gives each rank (cores / ranks per node) threads.
exec "${MPIEXEC:-mpiexec}" -n "${NP:-4}" ${MPIEXEC_FLAGS:-} "${PYTHON:-python}" -m axon train "$CONFIG" "$@"
