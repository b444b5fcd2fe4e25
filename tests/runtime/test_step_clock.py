"""The step clock (axon.runtime.step_clock): on a GPU it waits for the device only when a step
follows a pause, so a steady step's one host wait is its read; its times add up to the run's."""

from __future__ import annotations

import math
import time

import torch

from axon.config import build_config
from axon.parallel.grid import Grid
from axon.runtime.step_clock import StepClock
from axon.runtime.trainer import Trainer
from axon.spec.layout import Layout


class Waits:
    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1


def _step(clock: StepClock, work_s: float = 0.002) -> float:
    clock.start()
    time.sleep(work_s)
    clock.read_done()
    time.sleep(work_s / 2)  # the optimizer, enqueued after the read
    return clock.stop()


def test_a_gpu_clock_waits_only_after_a_pause_and_its_steps_add_up():
    waits = Waits()
    clock = StepClock(runs_ahead=True, synchronize=waits)
    began = time.perf_counter()
    times = [_step(clock) for _ in range(4)]
    assert waits.count == 1  # the first step only
    assert math.isclose(sum(times), clock.read_at - began, rel_tol=0, abs_tol=2e-3)  # its start is after `began`
    clock.pause()  # a checkpoint
    time.sleep(0.02)
    resumed = _step(clock)
    assert waits.count == 2 and resumed < 0.02  # the checkpoint's time is in no step


def test_a_cpu_clock_never_waits_and_counts_to_after_the_optimizer():
    waits = Waits()
    clock = StepClock(runs_ahead=False, synchronize=waits)
    assert all(t >= 0.003 for t in (_step(clock) for _ in range(3))) and waits.count == 0


def test_a_training_step_on_the_gpu_clock_waits_for_the_device_once(tmp_path):
    config = build_config({"model": {"preset": "tiny", "seq_len": 16}, "out_dir": str(tmp_path),
                           "train": {"steps": 6, "global_batch": 8, "micro_batch": 2, "peak_tflops": 1.0,
                                     "checkpoint_every": 3}})
    trainer = Trainer(config, Grid(Layout(), 0), torch.device("cpu"))
    waits = Waits()
    trainer.clock = StepClock(runs_ahead=True, synchronize=waits)  # the clock a CUDA device gets
    history = trainer.fit()
    # Steps 1 and 4 follow the start and the step-3 checkpoint; the others wait only at their read.
    assert waits.count == 2 and len(history) == 6
    assert all(m["step_time_s"] > 0 for m in history)
