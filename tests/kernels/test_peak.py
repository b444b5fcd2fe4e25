"""The MFU peak: timed in a bounded time on any device and dtype, and never a figure above 100%."""

from __future__ import annotations

import math
import sys
import time

import pytest
import torch

from axon.kernels.peak import failed_peak, measure_gemm_tflops, mfu
from axon.testing.processes import clean_env, start, wait
from axon.testing.runs import read_metrics, write_tiny_config


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_peak_is_positive_and_quick(dtype):
    started = time.perf_counter()
    peak = measure_gemm_tflops(torch.device("cpu"), dtype)
    assert time.perf_counter() - started < 5  # was minutes for bf16 on a CPU without bf16 units
    assert math.isfinite(peak) and peak > 0


def test_mfu_is_a_fraction_or_unknown():
    assert mfu(0.5, 2.0) == 0.25
    assert mfu(2.0, 2.0) == 1.0
    # a peak below what a step achieved was a failed measurement: unknown (0.0), not 150%
    assert mfu(3.0, 2.0) == 0.0
    for peak in (0.0, -1.0, math.nan, math.inf):
        assert failed_peak(peak) and mfu(0.5, peak) == 0.0
    assert not failed_peak(2.0)


def test_bf16_run_starts_quickly_and_reports_no_mfu_above_one(tmp_path):
    # ONEDNN_MAX_CPU_ISA=AVX2 takes away bf16 units: the slow bf16 GEMM the start-up peak once spent minutes on
    config = write_tiny_config(tmp_path, {})
    env = {**clean_env(), "ONEDNN_MAX_CPU_ISA": "AVX2"}
    started = time.perf_counter()
    wait([start([sys.executable, "-m", "axon", "train", str(config), "--set", "train.dtype=bfloat16"], env)])
    assert time.perf_counter() - started < 60
    rows = read_metrics(tmp_path / "out")
    assert len(rows) == 3 and all(0 <= r["mfu"] <= 1 for r in rows)


def test_a_peak_a_step_beats_is_reported_unknown(tmp_path):
    config = write_tiny_config(tmp_path, {})
    log = wait([start([sys.executable, "-m", "axon", "train", str(config), "--set", "train.peak_tflops=1e-9"],
                      clean_env())])
    assert [r["mfu"] for r in read_metrics(tmp_path / "out")] == [0.0, 0.0, 0.0]
    assert "axon: MFU unknown from step 1: the MFU peak in the start-up banner is not above the" in log
    assert "mean MFU unknown" in log and "| MFU" not in log
