"""`train.micro_batch: 0` sized by memory: axon.spec.micro_batch's rule against hand-computed
cases, and axon.planning.micro_batch against perfmodel's memory_per_device called here."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from axon.config import build_config, check_layout, micro_batch_plan
from axon.planning.micro_batch import MARGIN, choose_micro_batch, describe_micro_batch
from axon.planning.micro_batch import micro_batch_for_device
from axon.spec.layout import Layout
from axon.spec.micro_batch import GIB, allowed_micro_batches, largest_fitting_micro_batch
from axon.spec.shapes import PRESETS
from axon.spec.training import TrainingSetup, split_micro_batches
from perfmodel.memory import memory_per_device


def linear(fixed_gib: float, per_sequence_gib: float):
    """bytes needed at micro-batch m: a fixed part and a part per sequence (and the sizes asked)."""
    asked = []

    def needed(micro: int) -> float:
        asked.append(micro)
        return (fixed_gib + per_sequence_gib * micro) * GIB
    needed.asked = asked
    return needed


def test_the_largest_fitting_divisor_without_a_pipeline():
    # 32 sequences over 2 shards: 16 each, divisors 1 2 4 8 16; 10 + 3m GiB within 25 GiB: m <= 5, so 4
    needed = linear(10, 3)
    micro, why = largest_fitting_micro_batch(32, 2, 1, needed, 25 * GIB)
    assert micro == 4
    assert needed.asked == [16, 8, 4]  # largest first, stopping at the first that fits
    assert "16 sequences" in why and "22.0 GiB" in why and "25.0 GiB" in why and "8 would need 34.0 GiB" in why
    # all of the shard fits: the whole shard at once, as without a memory model
    assert largest_fitting_micro_batch(32, 2, 1, linear(10, 3), 100 * GIB)[0] == 16


def test_the_pipeline_rule_caps_the_micro_batch():
    # 32 sequences per shard, 4 stages: at least 16 micro-batches, so m <= 2, however much memory there is
    micro, why = largest_fitting_micro_batch(64, 2, 4, linear(1, 1), 1000 * GIB)
    assert micro == 2 == split_micro_batches(64, 0, 2, 4)[0]
    assert "4 x layout.pipe = 16 micro-batches" in why
    # ... and memory below it: 1 + 1 x 2 GiB does not fit in 2.5 GiB, 1 + 1 x 1 does
    micro, why = largest_fitting_micro_batch(64, 2, 4, linear(1, 1), 2.5 * GIB)
    assert micro == 1 and "2 would need 3.0 GiB" in why
    # 8 sequences cannot give 16 micro-batches: 1, as today
    micro, why = largest_fitting_micro_batch(8, 1, 4, linear(1, 1), 1000 * GIB)
    assert micro == 1 and "no micro-batch gives 4 x layout.pipe = 16" in why


def test_interleaved_pipelines_keep_micro_batches_a_multiple_of_the_stages():
    # 36 per shard, 2 stages: m <= 4 gives 8 or more; interleaved, 36 / 4 = 9 is not a multiple of 2
    assert allowed_micro_batches(36, 2) == [1, 2, 3, 4]
    assert allowed_micro_batches(36, 2, virtual_stages=2) == [1, 2, 3]
    assert largest_fitting_micro_batch(72, 2, 2, linear(0, 1), 1000 * GIB, virtual_stages=2)[0] == 3


def test_nothing_fits_gives_one_and_says_so():
    needed = linear(50, 10)
    micro, why = largest_fitting_micro_batch(16, 1, 1, needed, 40 * GIB, budget_text="40 GiB of memory")
    assert micro == 1
    assert needed.asked == [16, 8, 4, 2, 1]
    assert why == ("even 1 sequence per micro-batch needs 60.0 GiB per device by perfmodel's memory model, "
                   "more than 40 GiB of memory: it does not fit")


@pytest.mark.parametrize("global_batch, shards, pipe", [(16, 1, 1), (64, 2, 1), (64, 2, 4), (8, 1, 4), (96, 4, 2),
                                                        (24, 3, 3)])
def test_without_device_memory_auto_is_todays_rule(global_batch, shards, pipe):
    micro, why = largest_fitting_micro_batch(global_batch, shards, pipe)
    assert micro == split_micro_batches(global_batch, 0, shards, pipe)[0]
    assert why.startswith("no device memory to size by")


def test_on_a_cpu_the_engine_keeps_the_config():
    config = build_config({"model": {"preset": "tiny"}, "layout": {}, "train": {"global_batch": 8}})
    assert micro_batch_for_device(config, torch.device("cpu")) == (config, None)
    set_by_hand = build_config({"model": {"preset": "tiny"}, "layout": {}, "train": {"global_batch": 8,
                                                                                     "micro_batch": 2}})
    assert micro_batch_for_device(set_by_hand, SimpleNamespace(type="cuda")) == (set_by_hand, None)


def one_b(layout: dict, global_batch: int = 16):
    config = build_config({"model": {"preset": "1B"}, "layout": layout,
                           "train": {"global_batch": global_batch, "dtype": "bfloat16"}})
    check_layout(config, config.layout.world_size)
    return config


def hand_needed(micro: int, global_batch: int = 16, layout: Layout = Layout()) -> float:
    """perfmodel's bytes per device for the 1B preset in bf16, every stage, by stage index."""
    shape = PRESETS["1B"]
    setup = TrainingSetup(global_batch=global_batch, seq_len=shape.seq_len, micro_batch=micro, dtype="bfloat16")
    blocks = {1: [16], 2: [8, 8]}[layout.pipe]  # balanced by parameters (embedding and head weigh alike)
    p = layout.pipe
    return max(sum(memory_per_device(shape, layout, setup, micro, b, s == 0, s == p - 1, s).values())
               for s, b in enumerate(blocks)) * GIB


def hand_choice(device_gib: float, global_batch: int = 16, layout: Layout = Layout(), most: int = 16) -> int:
    budget = device_gib * GIB * (1 - MARGIN)
    per_shard = global_batch // (layout.data * layout.depth)
    return max((m for m in range(1, most + 1) if per_shard % m == 0 and hand_needed(m, global_batch, layout) <= budget),
               default=1)


def test_the_1b_preset_on_one_80_gib_gpu_runs_above_one_sequence():
    config = one_b({})
    chosen, why = choose_micro_batch(config, 80 * 2**30)
    expected = hand_choice(80)
    assert chosen.train.micro_batch == expected > 1
    assert hand_needed(expected) <= 0.9 * 80 * GIB < hand_needed(2 * expected)
    assert chosen == dataclasses.replace(config, train=dataclasses.replace(config.train, micro_batch=expected))
    check_layout(chosen, 1)
    assert micro_batch_plan(chosen) == (expected, 16 // expected)
    assert f"{hand_needed(expected) / GIB:.1f} GiB per device" in why
    assert "72.0 GiB (90% of the device's 80.0 GiB)" in why
    assert describe_micro_batch(chosen, why) == f"axon: micro-batch {expected} (auto: {why})"


def test_less_memory_gives_a_smaller_micro_batch_and_none_gives_one():
    config = one_b({})
    big = choose_micro_batch(config, 80 * 2**30)[0].train.micro_batch
    small = choose_micro_batch(config, 60 * 2**30)[0].train.micro_batch
    assert small == hand_choice(60) < big
    tiny, why = choose_micro_batch(config, 8 * 2**30)
    assert tiny.train.micro_batch == 1 and hand_needed(1) > 0.9 * 8 * GIB and "it does not fit" in why


def test_a_pipeline_counts_every_stage_and_keeps_its_rule():
    layout = Layout(pipe=2)
    config = one_b({"pipe": 2}, global_batch=64)
    chosen, why = choose_micro_batch(config, 80 * 2**30)
    expected = hand_choice(80, 64, layout, most=64 // (4 * 2))  # at least 4 x pipe = 8 micro-batches
    assert chosen.train.micro_batch == expected > 1
    assert 64 // expected >= 8
    check_layout(chosen, 2)


def test_the_engine_sizes_a_gpu_run_by_its_memory(monkeypatch):
    config = one_b({})
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(total_memory=80 * 2**30))
    chosen, why = micro_batch_for_device(config, SimpleNamespace(type="cuda"))
    assert (chosen, why) == choose_micro_batch(config, 80 * 2**30)
