"""What a run reports: metrics.jsonl (every rank-0 step), TensorBoard scalars, a progress line."""

from __future__ import annotations

import json
import time
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
METRIC_KEYS = ("step", "loss", "grad_norm", "lr", "step_time_s", "tokens_per_s", "tflops_per_rank", "mfu")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl, by step: a torn line (a job killed mid-write) is skipped, and
    a step written twice (a run resumed by an older axon) keeps its last row."""
    rows: dict[int, dict] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
            rows[int(row["step"])] = row
        except (ValueError, KeyError, TypeError):
            continue
    return [rows[step] for step in sorted(rows)]


class MetricsLog:
    """Rank 0 writes; other ranks hold a MetricsLog that does nothing."""

    def __init__(self, out_dir: str, total_steps: int, log_every: int, enabled: bool, append: bool = False):
        self.enabled, self.total_steps, self.log_every = enabled, total_steps, log_every
        self.started = time.perf_counter()
        self.first_step = None  # a resumed run starts mid-way; the ETA counts only this run's steps
        self.mfu_unknown_said = False
        self.jsonl = self.tensorboard = None
        if enabled:
            path = Path(out_dir)
            path.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(path / METRICS_FILE, "a" if append else "w")  # a resumed run continues the file
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tensorboard = SummaryWriter(str(path / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
                self.tensorboard = None

    def record(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(metrics) + "\n")
        self.jsonl.flush()
        if self.tensorboard is not None:
            for key, value in metrics.items():
                if key != "step":
                    self.tensorboard.add_scalar(f"train/{key}", value, metrics["step"])
        step = metrics["step"]
        if self.first_step is None:
            self.first_step = step - 1
        if metrics["mfu"] == 0 and metrics["tflops_per_rank"] > 0 and not self.mfu_unknown_said:
            self.mfu_unknown_said = True  # mfu 0.0 is the MFU rule's "unknown" (axon.kernels.peak.mfu)
            print(f"axon: MFU unknown from step {step}: the MFU peak in the start-up banner is not above the "
                  f"{metrics['tflops_per_rank']:.3g} TFLOP/s per rank this step achieved, so it is a failed "
                  "measurement; set train.peak_tflops to this device's peak", flush=True)
        if step % self.log_every == 0 or step == self.total_steps or "val_loss" in metrics:
            elapsed = time.perf_counter() - self.started
            eta = elapsed / max(1, step - self.first_step) * (self.total_steps - step)
            kept = metrics.get("kept_fraction", 1.0)
            print(f"step {step}/{self.total_steps} | loss {metrics['loss']:.4f}"
                  + (f" (on {100 * kept:.1f}% of tokens)" if kept < 1.0 else "")
                  + (f" | val loss {metrics['val_loss']:.4f}" if "val_loss" in metrics else "")
                  + f" | grad norm {metrics['grad_norm']:.3f}"
                  f" | {metrics['tokens_per_s']:,.0f} tok/s | {metrics['tflops_per_rank']:.3g} TFLOP/s/rank"
                  + (f" | MFU {100 * metrics['mfu']:.1f}%" if metrics["mfu"] > 0 else "")
                  + f" | ETA {format_duration(eta)}", flush=True)
        if "slowest_rank" in metrics:  # every train.straggler_every steps
            print(f"step {step}: slowest rank {metrics['slowest_rank']} computed "
                  f"{metrics['slowest_rank_busy_s']:.3f} s outside collective waits (longest step "
                  f"{metrics['slowest_step_time_s']:.3f} s on rank {metrics['slowest_step_rank']})", flush=True)

    def checkpoint(self, path, seconds: float) -> None:
        if self.enabled:
            from axon.checkpoint.files import recorded_bytes

            size = recorded_bytes(path) / 2**20
            print(f"axon: checkpoint {path} ({size:.1f} MiB) written in {seconds:.2f} s", flush=True)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
