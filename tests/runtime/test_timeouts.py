"""Collective timeouts: how long a rank waits for a missing peer, and that every group honours it."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from axon.runtime.bootstrap import collective_timeout_s, detect_launch, init_distributed, shutdown
from axon.config import ConfigError, build_config
from axon.parallel.grid import Grid
from axon.parallel.groups import world_timeout
from axon.spec.layout import Layout
from axon.testing.spawn import COLLECTIVE_TIMEOUT, run_distributed


def test_environment_default():
    assert collective_timeout_s({}) == 600
    assert collective_timeout_s({"AXON_COLLECTIVE_TIMEOUT_S": "90.5"}) == 90.5
    for bad in ("0", "-3", "ten", "inf", "nan"):
        with pytest.raises(ValueError, match=f"AXON_COLLECTIVE_TIMEOUT_S must be a positive number of seconds, got '{bad}'"):
            collective_timeout_s({"AXON_COLLECTIVE_TIMEOUT_S": bad})


def test_config_key():
    assert build_config({}).train.collective_timeout_s == 0  # 0: the environment's default
    assert build_config({"train": {"collective_timeout_s": 45}}).train.collective_timeout_s == 45.0
    for bad in (-1, float("inf")):
        with pytest.raises(ConfigError, match="train.collective_timeout_s must be a number of seconds > 0"):
            build_config({"train": {"collective_timeout_s": bad}})


def test_world_group_takes_the_environment_timeout(monkeypatch):
    monkeypatch.setenv("AXON_COLLECTIVE_TIMEOUT_S", "42")
    init_distributed(detect_launch({}), backend="gloo")
    try:
        assert world_timeout() == timedelta(seconds=42)
    finally:
        shutdown()
    init_distributed(detect_launch({}), backend="gloo", timeout_s=7)  # an explicit value (the config key) wins
    try:
        assert world_timeout() == timedelta(seconds=7)
    finally:
        shutdown()


def group_timeouts(rank, world):
    grid = Grid(Layout(data=2, depth=2), rank)
    timeouts = {axis: grid.axis(axis).group._get_backend(torch.device("cpu")).options._timeout
                for axis in ("data", "depth", "data+depth")}
    grid.destroy()
    return timeouts


def test_grid_groups_keep_the_world_timeout():
    """torch gives a new group its backend's default (30 min on gloo), not the world's timeout."""
    for timeouts in run_distributed(4, group_timeouts):
        assert timeouts == dict.fromkeys(("data", "depth", "data+depth"), COLLECTIVE_TIMEOUT)


def test_nccl_flight_recorder_defaults_point_the_dump_at_the_flight_folder(tmp_path):
    from axon.runtime.bootstrap import nccl_flight_recorder_defaults, process_group_timeout_s

    env = {}
    nccl_flight_recorder_defaults(tmp_path / "flight", env)
    assert env == {"TORCH_NCCL_TRACE_BUFFER_SIZE": "2000", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
                   "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
                   "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": str(tmp_path / "flight" / "nccl_trace_rank_")}
    assert (tmp_path / "flight").is_dir()
    mine = {"TORCH_FR_BUFFER_SIZE": "50", "TORCH_NCCL_DUMP_ON_TIMEOUT": "0", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/x/t_"}
    nccl_flight_recorder_defaults(tmp_path / "other", mine)  # what the user set wins
    assert mine == {"TORCH_FR_BUFFER_SIZE": "50", "TORCH_NCCL_DUMP_ON_TIMEOUT": "0",
                    "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/x/t_", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
    # the process group's own timeout backs axon's watchdog up: later by 30 s, or 10% of long ones
    assert [process_group_timeout_s(t) for t in (8, 600, 1200)] == [38, 660, 1320]


def test_peer_timeout_and_straggler_keys():
    train = build_config({}).train
    assert (train.peer_timeout_s, train.straggler_every) == (30.0, 50)
    for bad in ({"peer_timeout_s": 0.5}, {"straggler_every": -1}):
        with pytest.raises(ConfigError, match="train.peer_timeout_s must be a number of seconds >= 1 and "
                                              "train.straggler_every >= 0, got"):
            build_config({"train": bad})
