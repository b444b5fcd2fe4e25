"""benchmarks/gpu_speed.py's own code on the CPU: axon and the compiled plain model train the
same batches from the same weights, and every column the GPU run reports is there and adds up."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

from axon.spec.flops import flops_per_token
from axon.spec.shapes import PRESETS

SIDE_COLUMNS = ("median_step_s", "step_times_s", "warmup_step_times_s", "first_step_minus_median_s", "tokens_per_s",
                "tflops_readme", "tflops_causal", "mfu_readme", "mfu_causal", "peak_memory_gib", "launches_per_step",
                "launch_kind", "host_syncs_per_step", "host_sync_calls", "graphs_compiled", "losses")


def test_gpu_speed_runs_on_cpu(tmp_path):
    out = tmp_path / "speed.json"
    command = [sys.executable, "-m", "benchmarks.gpu_speed", "--device", "cpu", "--presets", "tiny", "--steps", "4",
               "--warmup", "2", "--batch", "8", "--micro-batch", "4", "--dtype", "float32", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dtype"] == "float32" and "float32 GEMM timed here" in report["peak_source"]
    (run,) = report["runs"]
    shape = PRESETS["tiny"]
    assert (run["preset"], run["micro_batch"], run["micro_batches"]) == ("tiny", 4, 2)
    axon, plain = run["axon"], run["plain"]
    for side in (axon, plain):
        assert set(SIDE_COLUMNS) <= set(side)
        assert len(side["step_times_s"]) == 4 and len(side["warmup_step_times_s"]) == 2
        assert len(side["losses"]) == 2 + 4 and all(math.isfinite(x) for x in side["losses"])
        median = statistics.median(side["step_times_s"])
        assert side["median_step_s"] == median
        tokens = 8 * shape.seq_len
        assert math.isclose(side["tokens_per_s"], tokens / median, rel_tol=1e-12)
        readme = flops_per_token(shape) * tokens  # 6N + 12 L h s
        causal = readme - 6 * shape.layers * shape.hidden * shape.seq_len * tokens
        assert math.isclose(side["tflops_readme"], readme / median / 1e12, rel_tol=1e-12)
        assert math.isclose(side["tflops_causal"], causal / median / 1e12, rel_tol=1e-12)
        assert math.isclose(side["mfu_readme"], side["tflops_readme"] / report["peak_tflops"], rel_tol=1e-12)
        assert 0 < side["mfu_causal"] < side["mfu_readme"] < 1
        assert side["peak_memory_gib"] is None  # a CPU's resident set is not comparable
        assert side["launches_per_step"] > 0 and side["launch_kind"].startswith("top-level aten ops")
        # One host read per step on each side: axon's loss-and-norm .tolist(), the plain loss's float().
        assert side["host_syncs_per_step"] == 1, side["host_sync_calls"]
    assert axon["host_sync_calls"] == ["tolist"] and plain["host_sync_calls"] == ["item"]
    assert plain["compiled"] and plain["graphs_compiled"] >= 1 and plain["optimizer"] == "AdamW fused"
    assert plain["first_step_minus_median_s"] > 0  # the first call compiled
    assert run["perfmodel_memory_gib"] > 0
    # Same weights, same batches, two micro-batches each, same math in fp32.
    assert abs(axon["losses"][0] - plain["losses"][0]) < 1e-4
    assert run["step1_loss"]["abs_diff"] == abs(axon["losses"][0] - plain["losses"][0])
    # Both sides go on training the same batches: they stay close after six steps.
    assert abs(axon["losses"][-1] - plain["losses"][-1]) < 1e-3
    ratio = statistics.median(axon["step_times_s"]) / statistics.median(plain["step_times_s"])
    assert math.isclose(run["ratio_axon_over_plain"], ratio, rel_tol=1e-12)
    printed = done.stdout
    assert "axon/plain" in printed and "MFU causal" in printed and "tiny" in printed
