"""perfmodel's prediction for the rank a dry run built: memory by component and the step's
collectives, for the same layout, stage and training setup."""

from __future__ import annotations

from collections import Counter

from perfmodel.memory import GIB, memory_per_device
from perfmodel.workload import micro_batch_work, pipeline_sends, step_collectives

MEMORY_KEYS = ("parameters", "gradients", "optimizer", "gathered_weights", "activations", "gradient_blocks")


def perfmodel_memory(config, blocks: int, first: bool, last: bool, stage: int) -> dict[str, int]:
    """Bytes per component for a rank of this stage (perfmodel works in GiB)."""
    from axon.config import micro_batch_plan, training_setup

    micro, _ = micro_batch_plan(config)
    gib = memory_per_device(config.model, config.layout, training_setup(config), micro, blocks, first, last, stage)
    named = {"parameters": gib["weights"], **{k: v for k, v in gib.items() if k != "weights"}}
    memory = {key: round(named.get(key, 0.0) * GIB) for key in MEMORY_KEYS}
    memory["total"] = sum(memory.values())
    return memory


def perfmodel_collectives(config, blocks: int, first: bool, last: bool) -> Counter:
    """(op, axis, bytes) -> count for one step of a rank of this stage, as axon's trace names them."""
    from axon.config import micro_batch_plan

    layout, t = config.layout, config.train
    micro, count = micro_batch_plan(config)
    work = micro_batch_work(config.model, layout, micro, config.model.seq_len, t.dtype, t.recompute == "block",
                            blocks, first, last, t.grad_reduce_dtype)
    # With virtual stages every chunk of the stage sends (perfmodel prices them chunk by chunk).
    sends = pipeline_sends(config.model, layout, micro * config.model.seq_len, t.dtype, first, last,
                           layout.virtual_stages) if layout.pipe > 1 else []
    counts = Counter()
    for comm in [c for c in work.comms if c.kind != "p2p"] + sends:
        if all(getattr(layout, axis) == 1 for axis in comm.axes):
            continue  # axon skips collectives over an axis of size 1
        counts[(comm.op, "+".join(comm.axes), int(comm.nbytes))] += comm.count * count
    for comm in step_collectives(config.model, layout, config.overlap.bucket_mb, blocks, first, last,
                                 t.grad_reduce_dtype):
        counts[(comm.op, "+".join(comm.axes), int(comm.nbytes))] += comm.count
    return counts


def percent(measured: float, predicted: float) -> float | None:
    """(perfmodel - dry run) / dry run in percent; None when the dry run has none."""
    return None if measured == 0 else 100.0 * (predicted - measured) / measured


def collective_rows(traced: Counter, predicted: Counter) -> list[dict]:
    keys = sorted(set(traced) | set(predicted), key=lambda k: (k[1], k[0], -k[2]))
    return [{"op": op, "axis": axis, "bytes": nbytes, "count": traced.get((op, axis, nbytes), 0),
             "perfmodel_count": predicted.get((op, axis, nbytes), 0)} for op, axis, nbytes in keys]


def by_axis(rows: list[dict], field: str) -> Counter:
    """Bytes per (op, axis) summed over a step."""
    totals = Counter()
    for row in rows:
        totals[(row["op"], row["axis"])] += row["bytes"] * row[field]
    return totals
