"""Who launched us, and the process group that follows.

Two phases, so that a user's mistakes are reported before any rank waits on another:

* `detect_launch(env)` reads the environment only (no communication) and says which
  launcher started this process and where it sits: torchrun > srun (slurm) > mpiexec
  (MPICH hydra, Open MPI, PMIx) > a single process.
* `init_distributed(info)` then meets the other ranks and starts torch.distributed
  (NCCL/RCCL on GPUs, gloo on CPUs); `shutdown()` ends it.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, replace
from datetime import timedelta
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


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str
    backend: str
    device: torch.device


# ---------------------------------------------------------------- phase 1: the environment

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
    return LaunchInfo(rank, world, local, local_world, "torchrun", addr, port)


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
    port = _port(env)
    if port is None:
        job_var = "SLURM_JOB_ID" if "SLURM_JOB_ID" in env else "SLURM_JOBID"
        if job_var not in env:
            raise ValueError("SLURM_PROCID is set but neither SLURM_JOB_ID nor MASTER_PORT is.")
        # Every rank computes the same port from the job id, so no one has to broadcast it;
        # concurrent job steps of one job would collide and must set MASTER_PORT themselves.
        port = 20000 + _int(env, job_var) % 20000
    return LaunchInfo(rank, world, local, local_world, "slurm", addr, port)


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
    return LaunchInfo(rank, world, local, local_world, "mpi", env.get("MASTER_ADDR") or None, _port(env))


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


# ---------------------------------------------------------------- phase 2: the process group

def _reachable_address() -> str:
    """An address of this host that other nodes can connect to."""
    host = socket.gethostname()
    try:
        addr = socket.gethostbyname(host)
    except OSError:
        return host
    # Many distributions map the hostname to 127.0.1.1 in /etc/hosts; other nodes cannot reach that.
    return host if addr.startswith("127.") else addr


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _mpi_rendezvous(info: LaunchInfo) -> LaunchInfo:
    """Fill in master address/port (rank 0 broadcasts) and local rank/size via mpi4py."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError("launched by mpiexec, which needs mpi4py: pip install mpi4py") from None
    comm = MPI.COMM_WORLD
    if (comm.Get_rank(), comm.Get_size()) != (info.rank, info.world_size):
        raise RuntimeError(f"mpi4py says rank {comm.Get_rank()} of {comm.Get_size()} but mpiexec said "
                           f"{info.rank} of {info.world_size}; is mpi4py built against another MPI than this mpiexec?")
    mine = (info.master_addr or _reachable_address(), info.master_port or _free_port()) if info.rank == 0 else None
    addr, port = comm.bcast(mine, root=0)
    local, local_world = info.local_rank, info.local_world_size
    if local is None or local_world is None:
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks that share this node's memory
        local, local_world = node.Get_rank(), node.Get_size()
        node.Free()
    return replace(info, local_rank=local, local_world_size=local_world, master_addr=addr, master_port=port)


def _cpu_threads(local_world_size: int) -> int:
    total = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total  # Linux only
    # A launcher that bound us (srun --cpu-bind) already gave this rank its share of cores.
    return allowed if allowed < total else max(1, total // local_world_size)


def collective_timeout_s(env: Mapping[str, str] = os.environ) -> float:
    """Seconds a collective waits for a missing peer before the job fails: $AXON_COLLECTIVE_TIMEOUT_S, else 600."""
    text = env.get("AXON_COLLECTIVE_TIMEOUT_S", "600")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ValueError(f"AXON_COLLECTIVE_TIMEOUT_S must be a positive number of seconds, got {text!r}.")
    return seconds


def init_distributed(info: LaunchInfo, backend: str | None = None, timeout_s: float | None = None) -> Runtime:
    """Start torch.distributed for `info`; one GPU per local rank with NCCL/RCCL, else gloo on CPU.

    `timeout_s`: how long a collective waits for a peer before failing (default: collective_timeout_s())."""
    import torch  # here, not at the top: detecting the launcher and failing on bad input stays torch-free
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialized; call axon.bootstrap.shutdown() first.")
    timeout = timedelta(seconds=collective_timeout_s() if timeout_s is None else timeout_s)
    if info.launcher == "mpi":
        info = _mpi_rendezvous(info)
    assert info.local_rank is not None and info.local_world_size is not None
    # ROCm builds of torch expose HIP devices as torch.cuda and RCCL under the name "nccl".
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend 'nccl' was asked for but torch sees no GPU.")
        count = torch.cuda.device_count()
        # With --gpu-bind=closest (or per-task CUDA_VISIBLE_DEVICES) each rank sees only its own GPU.
        index = 0 if count == 1 else info.local_rank
        if index >= count:
            raise ValueError(f"local rank {info.local_rank} needs a GPU but only {count} are visible on this node.")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        # Older torch marks a collective's tensors with recordStream, holding their memory until the host
        # sees the collective end (allocator thrash); from 2.8 it stashes them always and warns if this is set.
        if torch.__version__ < "2.8":
            os.environ.setdefault("TORCH_NCCL_AVOID_RECORD_STREAMS", "1")
    else:
        device = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:  # an explicit user setting wins
            torch.set_num_threads(_cpu_threads(info.local_world_size))

    device_id = device if backend == "nccl" else None
    if info.world_size == 1:
        # An in-memory store: code that asks dist.get_rank() works, and nothing touches the network.
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout, device_id=device_id)
    else:
        if info.master_addr is None or info.master_port is None:
            raise ValueError(f"launcher {info.launcher!r} gave no master address/port; set MASTER_ADDR and MASTER_PORT.")
        host = f"[{info.master_addr}]" if ":" in info.master_addr else info.master_addr  # IPv6 literal
        dist.init_process_group(backend, init_method=f"tcp://{host}:{info.master_port}",
                                rank=info.rank, world_size=info.world_size,
                                timeout=timeout, device_id=device_id)
    return Runtime(info.rank, info.world_size, info.local_rank, info.local_world_size,
                   info.launcher, backend, device)


def shutdown(all_ranks_done: bool = False) -> None:
    """Destroy the default process group if there is one; safe to call twice.

    `all_ranks_done`: every rank finished normally, so wait for all of them first (a rank
    closing its gloo connections while a peer still uses them can abort the peer's thread).
    After an error no barrier: the other ranks may never come, and the launcher ends them."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if all_ranks_done and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
