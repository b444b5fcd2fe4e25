"""Run a function on N gloo processes on this machine and collect what each returns."""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, result_dir, fn, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
    except Exception:
        result = {"error": traceback.format_exc()}
    torch.save(result, Path(result_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def run_distributed(world: int, fn, *args) -> list:
    """fn(rank, world, *args) on `world` processes under gloo; returns each rank's result."""
    with tempfile.TemporaryDirectory() as result_dir:
        os.environ.pop("RANK", None)
        mp.spawn(_entry, args=(world, free_port(), result_dir, fn, args), nprocs=world, join=True)
        results = [torch.load(Path(result_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for rank, result in enumerate(results):
        if isinstance(result, dict) and "error" in result:
            raise AssertionError(f"rank {rank} failed:\n{result['error']}")
    return results
