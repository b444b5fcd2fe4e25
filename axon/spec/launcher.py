"""Which launcher started this process, and where it sits: read from the environment only.

torchrun > srun (slurm) > mpiexec (MPICH hydra, Open MPI, PMIx) > a single process. The
engine's bootstrap and `perfmodel calibrate` both start from `detect_launch`, so a launcher
is recognised the same way by both. Torch-free: no communication happens here.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Mapping


# Fixed tables, never mutated: (rank, size, local rank, local size) variables per MPI family.
_MPI_VARS = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    ("PMIX_RANK", None, None, None),
)


@dataclass(frozen=True)
class LaunchInfo:
    rank: int
    world_size: int
    local_rank: int | None  # None only for mpi launchers that do not export it (found at rendezvous)
    local_world_size: int | None
    launcher: str  # "single" | "torchrun" | "slurm" | "mpi"
    master_addr: str | None  # None for mpi until rendezvous (rank 0 broadcasts it)
    master_port: int | None
    port_origin: str = field(default="", compare=False)  # where master_port came from, for error messages


# Slurm ports when MASTER_PORT is unset: below 32768, where Linux's default ephemeral range
# (32768-60999) starts, so no outgoing connection holds one; from 15000, above most services.
SLURM_PORTS = (15000, 32768)


def slurm_port(job_id: int, step_id: int) -> int:
    """The port every rank of Slurm job `job_id`, step `step_id` derives alone: a CRC of both (the
    same in every process, unlike hash()), so neighbouring job ids and concurrent steps differ."""
    lo, hi = SLURM_PORTS
    return lo + zlib.crc32(f"{job_id}.{step_id}".encode()) % (hi - lo)


def _int(env: Mapping[str, str], name: str, minimum: int = 0) -> int:
    raw = env[name]
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer.") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={value} must be at least {minimum}.")
    return value


def _check_below(name: str, value: int, limit_name: str, limit: int) -> None:
    if value >= limit:
        raise ValueError(f"environment variable {name}={value} must be smaller than {limit_name}={limit}.")


def _port(env: Mapping[str, str]) -> int | None:
    if "MASTER_PORT" not in env:
        return None
    port = _int(env, "MASTER_PORT", minimum=1)
    _check_below("MASTER_PORT", port, "the largest TCP port + 1", 65536)
    return port


def expand_hostlist(s: str) -> list[str]:
    """Expand a Slurm hostlist: "nid[001-003,010],login7" -> nid001 nid002 nid003 nid010 login7.

    Several bracket groups in one name multiply out ("c[0-1]n[0-1]" -> 4 names); a range
    keeps the zero padding of its lower bound, as Slurm writes it.
    """
    if s.count("[") != s.count("]"):
        raise ValueError(f"hostlist {s!r} has unbalanced brackets.")
    names: list[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", s):  # split on commas outside brackets
        expanded = [""]
        for literal, group in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            if "]" in literal:
                raise ValueError(f"hostlist {s!r} has an unbalanced ']'.")
            choices = [literal]
            if group:
                choices = []
                for part in group.split(","):
                    lo, _, hi = part.partition("-")
                    if not lo.isdigit() or (hi and not hi.isdigit()) or int(hi or lo) < int(lo):
                        raise ValueError(f"hostlist {s!r} has a bad range {part!r}.")
                    for n in range(int(lo), int(hi or lo) + 1):
                        choices.append(literal + str(n).zfill(len(lo)))
            expanded = [head + c for head in expanded for c in choices]
        names += [n for n in expanded if n]
    return names


def parse_tasks_per_node(s: str) -> list[int]:
    """Expand Slurm's tasks-per-node string: "4(x2),3" -> [4, 4, 3] (one entry per node)."""
    counts: list[int] = []
    for part in s.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ValueError(f"tasks-per-node string {s!r} is not like '4(x2),3'.")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def _torchrun(env: Mapping[str, str]) -> LaunchInfo:
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE", minimum=1)
    _check_below("RANK", rank, "WORLD_SIZE", world)
    # A hand-rolled launcher may set only RANK/WORLD_SIZE: then assume one node.
    local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    local_world = _int(env, "LOCAL_WORLD_SIZE", minimum=1) if "LOCAL_WORLD_SIZE" in env else world
    _check_below("LOCAL_RANK", local, "LOCAL_WORLD_SIZE", local_world)
    addr, port = env.get("MASTER_ADDR") or None, _port(env)
    if world > 1 and (addr is None or port is None):
        raise ValueError(f"RANK/WORLD_SIZE={world} are set but MASTER_ADDR or MASTER_PORT is missing.")
    return LaunchInfo(rank, world, local, local_world, "torchrun", addr, port, "from MASTER_PORT")


def _slurm(env: Mapping[str, str]) -> LaunchInfo:
    rank = _int(env, "SLURM_PROCID")
    world_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    world = _int(env, world_var, minimum=1)
    _check_below("SLURM_PROCID", rank, world_var, world)
    local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
    tpn_var = next((v for v in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE") if v in env), None)
    if tpn_var is None:
        raise ValueError("SLURM_PROCID is set but neither SLURM_STEP_TASKS_PER_NODE nor SLURM_TASKS_PER_NODE is.")
    per_node = parse_tasks_per_node(env[tpn_var])
    node = _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0
    if node >= len(per_node) and len(set(per_node)) > 1:
        raise ValueError(f"SLURM_NODEID={node} is past the {len(per_node)} nodes of {tpn_var}={env[tpn_var]!r}.")
    local_world = per_node[min(node, len(per_node) - 1)]
    _check_below("SLURM_LOCALID", local, f"{tpn_var} for node {node}", local_world)

    addr = env.get("MASTER_ADDR") or None
    if addr is None:
        nodelist = next((env[v] for v in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST") if env.get(v)), "")
        hosts = expand_hostlist(nodelist)
        if not hosts:
            raise ValueError("SLURM_PROCID is set but SLURM_STEP_NODELIST/SLURM_JOB_NODELIST is empty; set MASTER_ADDR.")
        addr = hosts[0]  # the step's first node hosts rank 0 under srun's default block distribution
    port, origin = _port(env), "from MASTER_PORT"
    if port is None:
        job_var = "SLURM_JOB_ID" if "SLURM_JOB_ID" in env else "SLURM_JOBID"
        if job_var not in env:
            raise ValueError("SLURM_PROCID is set but neither SLURM_JOB_ID nor MASTER_PORT is.")
        step_var = "SLURM_STEP_ID" if "SLURM_STEP_ID" in env else "SLURM_STEPID"
        job, step = _int(env, job_var), _int(env, step_var) if step_var in env else 0
        port, origin = slurm_port(job, step), f"derived from Slurm job {job} step {step} as MASTER_PORT is unset"
    return LaunchInfo(rank, world, local, local_world, "slurm", addr, port, origin)


def _mpi(env: Mapping[str, str], family: tuple) -> LaunchInfo:
    rank_var = family[0]
    sizes = [family[1]] + [f[1] for f in _MPI_VARS]  # this family's own size variable first
    size_var = next((v for v in sizes if v and v in env), None)
    if size_var is None:
        raise ValueError(f"{rank_var} is set but no MPI world size (OMPI_COMM_WORLD_SIZE or PMI_SIZE) is.")
    rank, world = _int(env, rank_var), _int(env, size_var, minimum=1)
    _check_below(rank_var, rank, size_var, world)
    local = local_world = None
    if family[2] and family[2] in env and family[3] in env:
        local, local_world = _int(env, family[2]), _int(env, family[3], minimum=1)
        _check_below(family[2], local, family[3], local_world)
    port = _port(env)
    return LaunchInfo(rank, world, local, local_world, "mpi", env.get("MASTER_ADDR") or None, port,
                      "from MASTER_PORT" if port is not None else "")


def job_and_restarts(env: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """(job, restarts) as the launcher names them, the same on every rank without communication.

    job: Slurm's "JOB" or "JOB.STEP" (concurrent steps of one job are different runs), torchrun's
    run id (its default "none", shared by every job, counts as unset), PMIx's namespace, or "".
    restarts: the restart counts Slurm (a requeue) and torchrun (--max-restarts) export, or ""."""
    run_id = env.get("TORCHELASTIC_RUN_ID", "")
    slurm = env.get("SLURM_JOB_ID", "")
    if slurm and env.get("SLURM_STEP_ID"):
        slurm += f".{env['SLURM_STEP_ID']}"
    job = slurm or (run_id if run_id != "none" else "") or env.get("PMIX_NAMESPACE", "")
    restarts = ", ".join(f"{name} restart {env[var]}" for name, var in
                         (("Slurm", "SLURM_RESTART_COUNT"), ("torchrun", "TORCHELASTIC_RESTART_COUNT")) if env.get(var))
    return job, restarts


def detect_launch(env: Mapping[str, str] = os.environ) -> LaunchInfo:
    """Which launcher started this process, and this process's place; reads `env` only.

    Raises ValueError, one sentence naming the variable, if the environment is malformed.
    """
    if "RANK" in env and "WORLD_SIZE" in env:
        return _torchrun(env)
    mpi_family = next((f for f in _MPI_VARS if f[0] in env), None)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        slurm = _slurm(env)
        mpi = _mpi(env, mpi_family) if mpi_family else None
        # mpiexec inside an allocation: its ranks inherit the batch step's SLURM_* variables,
        # which then disagree with the MPI ones (srun with PMI sets both, consistently).
        if mpi is None or (mpi.rank, mpi.world_size) == (slurm.rank, slurm.world_size):
            return slurm
        return mpi
    if mpi_family:
        return _mpi(env, mpi_family)
    return LaunchInfo(0, 1, 0, 1, "single", None, None)
