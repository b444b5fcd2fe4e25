"""Small training runs that several test suites build the same way, and how they compare
a run against the 1-process reference."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

# A tiny model and batch: three steps train in a second or two on one CPU process.
TINY_RUN = {"model": {"preset": "tiny", "seq_len": 16},
            "train": {"steps": 3, "global_batch": 8, "lr": 1e-3, "seed": 3}, "data": {"source": "synthetic"}}


# The dry-run tests' model: small enough to rehearse a rank in a second, every split size up to 8 divides it.
DRY_RUN_MODEL = {"layers": 2, "hidden": 96, "heads": 8, "kv_heads": 4, "ffn": 80, "vocab": 136, "seq_len": 16}


def dry_run_config(layout, dtype="float32", recompute="none", micro_batches=1, reduce="float32", model=DRY_RUN_MODEL,
                   global_batch=8):
    """A RunConfig at `layout` with `micro_batches` micro-batches per data x depth shard."""
    from axon.config import build_config

    micro = global_batch // (layout.data * layout.depth) // micro_batches
    return build_config({"model": model, "layout": layout.sizes(),
                         "train": {"global_batch": global_batch, "micro_batch": micro, "dtype": dtype,
                                   "recompute": recompute, "grad_reduce_dtype": reduce},
                         "overlap": {"bucket_mb": 0.01}})


def write_tiny_config(folder: Path, layout: dict, **extra) -> Path:
    """FOLDER/run.yaml: TINY_RUN at `layout`, writing to FOLDER/out."""
    config = {**TINY_RUN, "layout": layout, "out_dir": str(folder / "out"), **extra}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fault_run_config(folder: Path, peer_timeout_s: int, collective_timeout_s: int) -> Path:
    """FOLDER/run.yaml: a tiny model at depth 2 x col 2 that trains until stopped, checkpointing
    every 3 steps, for runs that lose a rank or hang on purpose."""
    config = {"model": {"preset": "tiny", "seq_len": 16}, "layout": {"depth": 2, "col": 2},
              "train": {"steps": 100_000, "global_batch": 8, "lr": 1e-3, "seed": 3, "schedule": "constant",
                        "peak_tflops": 1.0, "checkpoint_every": 3, "peer_timeout_s": peer_timeout_s,
                        "collective_timeout_s": collective_timeout_s, "straggler_every": 2},
              "data": {"source": "synthetic"}, "out_dir": str(folder)}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_process_losses(path: Path) -> list[float]:
    """The losses the config at `path` trains to in this process, at layout 1 (the reference)."""
    import torch

    from axon.config import load_config
    from axon.parallel.grid import Grid
    from axon.runtime.trainer import Trainer
    from axon.spec.layout import Layout

    config = load_config(path)
    config.layout = Layout()
    return [m["loss"] for m in Trainer(config, Grid(config.layout, 0), torch.device("cpu")).fit()]


def read_metrics(out_dir: Path) -> list[dict]:
    """Every row of OUT_DIR/metrics.jsonl."""
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def relative_errors(losses, params, ref_losses, ref_params) -> tuple[float, float, float]:
    """(worst per-step loss error, whole-model parameter error, worst single-tensor parameter error).

    Parameter errors are ||p - ref|| / ||ref||. The whole model is the contract (1e-5); a single
    tensor only gets a looser bound: AdamW moves an element whose gradient sums to about its eps
    by a visible fraction of lr on fp32 summation-order noise alone, and deeper models have more
    such elements (with or without pipe, e.g. one element of 9216 off by 1.4e-5 in an 8-block run).
    """
    loss_error = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
    diff = sum((params[name] - ref).square().sum() for name, ref in ref_params.items())
    norm = sum(ref.square().sum() for ref in ref_params.values())
    tensor_error = max(((params[name] - ref).norm() / ref.norm()).item() for name, ref in ref_params.items())
    return loss_error, (diff / norm).sqrt().item(), tensor_error
