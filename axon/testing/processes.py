"""Start whole jobs (`python -m axon ...`, torchrun, mpiexec) as separate process sessions
with a clean launcher environment, and wait for them with a deadline, killing every
session on time-out so a hang fails by name instead of stalling the suite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from axon.runtime.bootstrap import free_port

REPO = Path(__file__).resolve().parents[2]  # the checkout: tests run from it
LAUNCH_TIMEOUT_S = 120

_LAUNCHER_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                  "MASTER_ADDR", "MASTER_PORT", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "OMP_NUM_THREADS"}
_LAUNCHER_PREFIXES = ("SLURM_", "PMI_", "PMIX_", "OMPI_", "HYDRA_", "TORCHELASTIC_")

__all__ = ["LAUNCH_TIMEOUT_S", "REPO", "clean_env", "free_port", "start", "start_ranks", "wait", "wait_all"]


def clean_env() -> dict[str, str]:
    """This process's environment without any launcher's variables, so one launcher's cannot
    leak into another's run; the checkout first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCHER_VARS and not k.startswith(_LAUNCHER_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start(cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.Popen:
    """One process leading its own session (so a time-out can kill all it started)."""
    return subprocess.Popen(cmd, env=env, cwd=cwd, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def start_ranks(config: Path, launcher: str, fault: str = "", *overrides: str, world: int = 4) -> list[subprocess.Popen]:
    """`python -m axon train CONFIG` on `world` ranks: each its own process with the variables
    srun sets (launcher "env"), or torchrun's workers (one Popen). `fault` sets AXON_FAULT."""
    port = free_port()
    cmd = ["-m", "axon", "train", str(config), *overrides]
    env = clean_env()
    env.update(OMP_NUM_THREADS="1", **({"AXON_FAULT": fault} if fault else {}))
    if launcher == "torchrun":
        return [start([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
                       "--master-addr", "127.0.0.1", "--master-port", str(port), *cmd], env)]
    return [start([sys.executable, *cmd], {**env, "RANK": str(rank), "WORLD_SIZE": str(world),
                                            "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
                                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
            for rank in range(world)]


def wait(procs: list[subprocess.Popen], timeout_s: float = LAUNCH_TIMEOUT_S) -> str:
    """Wait for every process, assert each exited 0, and return their outputs; on time-out
    kill every session and fail with what they printed."""
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout_s)
            logs.append(f"--- pid {p.pid} rc {p.returncode}\n{out}")
    except subprocess.TimeoutExpired:
        _kill(procs)
        raise AssertionError(f"launch did not finish in {timeout_s} s:\n" + "\n".join(logs))
    log = "\n".join(logs)
    assert all(p.returncode == 0 for p in procs), log
    return log


def wait_all(procs, timeout: float = 150) -> tuple[list[int], list[str], list[float]]:
    """Exit codes, outputs and exit times (time.time()) of every process, whatever they exit with."""
    ended = [None] * len(procs)
    deadline = time.time() + timeout
    while None in ended:
        for i, p in enumerate(procs):
            if ended[i] is None and p.poll() is not None:
                ended[i] = time.time()
        if time.time() > deadline:
            _kill(procs)
            raise AssertionError(f"still running after {timeout} s: {[p.stdout.read() for p in procs]}")
        time.sleep(0.05)
    return [p.returncode for p in procs], [p.stdout.read() for p in procs], ended


def _kill(procs) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
