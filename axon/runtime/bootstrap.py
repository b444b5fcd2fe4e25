"""Who launched us, and the process group that follows.

Two phases, so that a user's mistakes are reported before any rank waits on another:

* `detect_launch(env)` (from `axon.spec.launcher`, shared with `perfmodel calibrate`) reads
  the environment only (no communication) and says which launcher started this process
  and where it sits: torchrun > srun (slurm) > mpiexec (MPICH hydra, Open MPI, PMIx) >
  a single process.
* `init_distributed(info)` then meets the other ranks and starts torch.distributed
  (NCCL/RCCL on GPUs, gloo on CPUs); `shutdown()` ends it.
"""

from __future__ import annotations

import os
import random
import socket
import sys
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Mapping, NoReturn

from axon.parallel.flight_record import NCCL_TRACE_PREFIX
from axon.spec.launcher import LaunchInfo, detect_launch, expand_hostlist, parse_tasks_per_node  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str
    backend: str
    device: torch.device
    store_address: tuple[str, int] | None = None  # the TCPStore the ranks met through (None: one process)
    hosts_store: bool = False  # the store's server runs in this process (rank 0, unless torchrun's agent hosts it)


# ---------------------------------------------------------------- the process group

def _reachable_address() -> str:
    """An address of this host that other nodes can connect to."""
    host = socket.gethostname()
    try:
        addr = socket.gethostbyname(host)
    except OSError:
        return host
    # Many distributions map the hostname to 127.0.1.1 in /etc/hosts; other nodes cannot reach that.
    return host if addr.startswith("127.") else addr


def free_port(within: tuple[int, int] | None = None) -> int:
    """A TCP port no one listens on now, any the system hands out or one in [lo, hi) (a port a
    formula must reach, as Slurm's job-id port does). The one free-port helper: tests and
    benchmarks use it too."""
    if within is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return s.getsockname()[1]
    lo, hi = within
    for port in random.Random().sample(range(lo, hi), min(200, hi - lo)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port found in [{lo}, {hi})")


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
    mine = None
    if info.rank == 0:
        mine = (info.master_addr or _reachable_address(), info.master_port or free_port(),
                info.port_origin if info.master_port else "a free port rank 0 picked")
    addr, port, origin = comm.bcast(mine, root=0)
    local, local_world = info.local_rank, info.local_world_size
    if local is None or local_world is None:
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks that share this node's memory
        local, local_world = node.Get_rank(), node.Get_size()
        node.Free()
    return replace(info, local_rank=local, local_world_size=local_world, master_addr=addr, master_port=port,
                   port_origin=origin)


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


def process_group_timeout_s(watchdog_s: float) -> float:
    """The process group's own timeout when axon's watchdog (axon.runtime.health) fires at `watchdog_s`:
    later, so the watchdog writes the flight records first (NCCL's own watchdog would abort the
    process at its timeout); it still ends collectives outside a step, e.g. a checkpoint's."""
    return watchdog_s + max(30.0, 0.1 * watchdog_s)


def nccl_flight_recorder_defaults(flight_dir: str | Path, env=os.environ) -> None:
    """PyTorch's NCCL flight recorder, unless the user set it: keep the last 2000 collectives,
    dump them when NCCL's watchdog times a collective out, into `flight_dir` (beside axon's
    own records, where `python -m axon diagnose` looks); and let that watchdog end the rank
    (TORCH_NCCL_ASYNC_ERROR_HANDLING=1) instead of leaving it blocked."""
    if "TORCH_FR_BUFFER_SIZE" not in env:
        env.setdefault("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000")
    env.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if "TORCH_NCCL_DEBUG_INFO_TEMP_FILE" not in env:
        Path(flight_dir).mkdir(parents=True, exist_ok=True)  # NCCL's dump does not create folders
        env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] = str(Path(flight_dir) / NCCL_TRACE_PREFIX)


def init_distributed(info: LaunchInfo, backend: str | None = None, timeout_s: float | None = None,
                     flight_dir: str | Path | None = None, command: str = "train") -> Runtime:
    """Start torch.distributed for `info`; one GPU per local rank with NCCL/RCCL, else gloo on CPU.
    (`command`: the `python -m axon` command whose errors this names.)

    `timeout_s`: how long a collective waits for a peer before failing (default: collective_timeout_s()).
    `flight_dir`: where NCCL's flight recorder dumps on a timeout (see nccl_flight_recorder_defaults)."""
    import torch  # here, not at the top: detecting the launcher and failing on bad input stays torch-free
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialized; call axon.runtime.bootstrap.shutdown() first.")
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
        if flight_dir is not None:  # read when the NCCL process group is created, just below
            nccl_flight_recorder_defaults(flight_dir)
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
        try:
            dist.init_process_group(backend, init_method=f"tcp://{host}:{info.master_port}",
                                    rank=info.rank, world_size=info.world_size,
                                    timeout=timeout, device_id=device_id)
        except dist.DistNetworkError as err:
            _fail_if_port_taken(err, info, command)
            raise
    address = None if info.world_size == 1 else (info.master_addr, int(info.master_port))
    # Under torchrun the agent hosts the store ("TORCHELASTIC_USE_AGENT_STORE"); else init_method tcp:// puts it on rank 0.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    return Runtime(info.rank, info.world_size, info.local_rank, info.local_world_size,
                   info.launcher, backend, device, address, info.rank == 0 and not agent_store)


def _fail_if_port_taken(err: Exception, info: LaunchInfo, command: str) -> None:
    """The rank that hosts the store (rank 0) could not bind its port: one sentence naming the
    port and MASTER_PORT, exit 2, instead of torch's traceback (torch 2.13: DistNetworkError,
    "... code: -98, name: EADDRINUSE, message: address already in use")."""
    text = str(err)
    if "EADDRINUSE" in text or "address already in use" in text.lower():
        origin = f" ({info.port_origin})" if info.port_origin else ""
        from axon.config.errors import error_line

        print(error_line(command, f"port {info.master_port} on host {socket.gethostname()}{origin} "
                                  "is already in use; set MASTER_PORT to a free port.", info.rank),
              file=sys.stderr, flush=True)
        raise SystemExit(2) from None


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


def leave(code: int) -> NoReturn:
    """End this process with `code` now that shutdown() is done, skipping the interpreter's
    finalization. After an error the exception's frames keep the trainer and its gloo groups
    (and on rank 0 the store's server) alive past destroy_process_group; finalization then
    destroys them in no set order while the peer closes its connections, and rank 0 was seen
    to abort there ("terminate called without an active exception": a C++ thread destroyed
    unjoined, with no Python frame left), exiting -6 instead of `code`."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
