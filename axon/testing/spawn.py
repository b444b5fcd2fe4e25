"""Run a function on N gloo processes on this machine and collect what each returns."""

from __future__ import annotations

import os
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from axon.runtime.bootstrap import free_port

# A rank left waiting in a collective (a peer died or issued another one) fails after this,
# in every group: axon.parallel.grid gives its groups the world group's timeout.
COLLECTIVE_TIMEOUT = timedelta(seconds=120)

__all__ = ["COLLECTIVE_TIMEOUT", "free_port", "run_distributed"]


def _entry(rank, world, port, result_dir, fn, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)
    failed = False
    try:
        result = fn(rank, world, *args)
    except Exception:
        result, failed = {"error": traceback.format_exc()}, True
    torch.save(result, Path(result_dir) / f"rank{rank}.pt")
    if not failed:
        # Every rank finishes before any tears down: gloo can abort a process whose peer has
        # already closed its connections. A failed rank leaves at once, so its peers fail fast.
        dist.barrier()
    dist.destroy_process_group()


def run_distributed(world: int, fn, *args) -> list:
    """fn(rank, world, *args) on `world` processes under gloo; returns each rank's result."""
    with tempfile.TemporaryDirectory() as result_dir:
        os.environ.pop("RANK", None)
        ranks = mp.spawn(_entry, args=(world, free_port(), result_dir, fn, args), nprocs=world, join=False)
        try:
            while not ranks.join():
                pass
        finally:  # the test's time limit (pytest-timeout) may have interrupted join: end the ranks still running
            for process in ranks.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        results = [torch.load(Path(result_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for rank, result in enumerate(results):
        if isinstance(result, dict) and "error" in result:
            raise AssertionError(f"rank {rank} failed:\n{result['error']}")
    return results
