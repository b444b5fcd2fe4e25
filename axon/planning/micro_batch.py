"""`train.micro_batch: 0` on a GPU: the largest micro-batch perfmodel's memory model fits in the
device's memory less MARGIN (axon.spec.micro_batch's rule, with the pipeline's rule kept).

Every rank computes it from the same config and the same device memory, so all pick the same
micro-batch without talking about it (a job mixing GPUs of different memory sizes is not).
"""

from __future__ import annotations

import dataclasses

from axon.config import RunConfig, training_setup
from axon.spec.micro_batch import GIB, largest_fitting_micro_batch
from axon.spec.stage_split import balanced_counts
from perfmodel.memory import memory_per_device

# The share of the device's memory the micro-batch may not count on: the CUDA context and the
# libraries' workspaces (cuBLAS, NCCL), the caching allocator's fragmentation, and what the
# memory model leaves out. 10%, as perfmodel's machine profiles' usable_memory_fraction of 0.9.
MARGIN = 0.10


def stage_blocks(config: RunConfig) -> list[int]:
    """Blocks each pipeline stage holds, as the engine splits them (axon.model.stages):
    train.stage_layers if given (per chunk, stage s holding chunks s, s + p, ...), else balanced."""
    p, v = config.layout.pipe, config.layout.virtual_stages
    counts = list(config.train.stage_layers) or balanced_counts(config.model, p * v)
    return [sum(counts[s::p]) for s in range(p)]


def bytes_needed(config: RunConfig, micro: int) -> float:
    """perfmodel's memory per device at `micro` sequences per micro-batch: its fullest stage,
    each stage holding the micro-batches 1F1B keeps in flight there."""
    setup = dataclasses.replace(training_setup(config), micro_batch=micro)
    p = config.layout.pipe
    return max(sum(memory_per_device(config.model, config.layout, setup, micro, blocks, s == 0, s == p - 1,
                                     s).values())
               for s, blocks in enumerate(stage_blocks(config))) * GIB


def choose_micro_batch(config: RunConfig, device_memory_bytes: int, margin: float = MARGIN) -> tuple[RunConfig, str]:
    """The config with train.micro_batch set to the largest micro-batch that fits a device of
    `device_memory_bytes` less `margin`, and why (a phrase for the banner). The layout has been
    checked (check_layout): the batch divides over data x depth."""
    lay = config.layout
    budget = device_memory_bytes * (1 - margin)
    micro, why = largest_fitting_micro_batch(
        config.train.global_batch, lay.data * lay.depth, lay.pipe, lambda m: bytes_needed(config, m), budget,
        lay.virtual_stages,
        f"{budget / GIB:.1f} GiB ({1 - margin:.0%} of the device's {device_memory_bytes / GIB:.1f} GiB)")
    return dataclasses.replace(config, train=dataclasses.replace(config.train, micro_batch=micro)), why


def describe_micro_batch(config: RunConfig, why: str) -> str:
    """The banner line rank 0 prints after the banner."""
    return f"axon: micro-batch {config.train.micro_batch} (auto: {why})"


def micro_batch_for_device(config: RunConfig, device) -> tuple[RunConfig, str | None]:
    """train.micro_batch 0 on a GPU: the config with choose_micro_batch's micro-batch for this
    device's memory, and why; elsewhere (a CPU, or a micro-batch given) unchanged and None."""
    if config.train.micro_batch != 0 or device.type != "cuda":
        return config, None  # on CPUs auto stays split_micro_batches' rule
    import torch

    return choose_micro_batch(config, torch.cuda.get_device_properties(device).total_memory)
