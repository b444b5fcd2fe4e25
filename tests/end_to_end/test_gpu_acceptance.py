"""benchmarks/gpu_acceptance.py's own code, run on the CPU with small presets; and the GPU
data sheets it measures MFU against."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from axon.spec.flops import flops_per_token
from perfmodel.gpus import gpu_sheet
from axon.spec.shapes import PRESETS


def test_data_sheet_matches_the_names_drivers_report():
    # Names as torch.cuda.get_device_name reports them on each machine.
    expected = {"NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100-SXM4-40GB": 312.0, "NVIDIA H100 80GB HBM3": 989.4,
                "NVIDIA H100 PCIe": 756.0, "NVIDIA H200": 989.4, "NVIDIA GH200 480GB": 989.4,
                "AMD Instinct MI250X": 191.5, "AMD Instinct MI250X / MI250": 191.5}
    assert {name: gpu_sheet(name).peak_tflops["bfloat16"] for name in expected} == expected
    assert gpu_sheet("NVIDIA GH200 480GB").name == "GH200" and gpu_sheet("NVIDIA H200").name == "H200"
    assert gpu_sheet("Tesla V100-SXM2-32GB") is None


def test_acceptance_script_runs_on_cpu(tmp_path):
    out = tmp_path / "acceptance.json"
    command = [sys.executable, "-m", "benchmarks.gpu_acceptance", "--device", "cpu", "--steps", "3",
               "--batch", "4", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "bf16 GEMM timed here" in report["peak_source"] and report["dtype"] == "bfloat16"
    runs = report["runs"]
    assert [(r["preset"], r["gemm_tuning"]) for r in runs] == [("tiny", False), ("tiny", True),
                                                               ("1M", False), ("1M", True)]
    for run in runs:
        shape = PRESETS[run["preset"]]
        # Throughput from first principles: 4 sequences of seq_len tokens per step.
        assert math.isclose(run["tokens_per_s"], 4 * shape.seq_len / run["step_time_s"], rel_tol=1e-9)
        hand_tflops = flops_per_token(shape) * 4 * shape.seq_len / run["step_time_s"] / 1e12
        assert math.isclose(run["tflops"], hand_tflops, rel_tol=1e-9)
        assert 0 < run["mfu"] < 1
        assert len(run["losses"]) == 3 and all(math.isfinite(x) for x in run["losses"])
        assert run["perfmodel_memory_gib"] > 0
        assert (run["tuned"] is not None) == run["gemm_tuning"]
    # Tuning changes numbers only by summation order: bf16 losses agree closely.
    for off, on in zip(runs[::2], runs[1::2]):
        assert abs(off["losses"][0] - on["losses"][0]) < 1e-2 * abs(off["losses"][0])
    clock = report["collective_clock"]
    assert clock["clock"] == "host" and clock["ordered"]
    assert clock["span_error"] < 0.5, clock  # host clock: the burst runs between issue and wait
    assert "trace clock (host)" in done.stdout and "tiny" in done.stdout
