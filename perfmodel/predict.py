"""Predict one training step: time by component, throughput, memory, and whether it fits.

Per micro-batch and pipeline stage: GEMMs at the machine's size-dependent efficiency,
elementwise traffic at memory bandwidth, kernel-launch overhead, and every collective of
`workload` by `collectives`. Overlap then hides what it can:
* OAR: each backward dX all-reduce behind its layer's dW GEMM;
* OAG: depth gathers behind the compute of the same phase (the first one stays exposed);
* ORS and DP: reduce-scatters and data-parallel buckets behind backward compute (the last
  one of each stays exposed);
each limited to `overlap_efficiency` of the compute. Pipeline stages: the 1F1B schedule the
engine runs is replayed with each stage's forward and backward times (`perfmodel.pipeline`);
even stages give the textbook bubble of (p - 1) / m of the busy time.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from perfmodel.collectives import collective_time, group_placement
from perfmodel.flops import flops_per_token
from perfmodel.layout import Layout
from perfmodel.machine import Machine
from perfmodel.memory import memory_per_device
from perfmodel.models import ModelShape
from perfmodel.pipeline import step_seconds
from perfmodel.stages import balanced_counts
from perfmodel.training import TrainingSetup
from perfmodel.workload import micro_batch_work, stage_parameters, step_collectives

COMPONENTS = ("gemm", "attention", "elementwise", "optimizer", "tensor_comm", "depth_gather",
              "depth_reduce_scatter", "data_comm", "pipeline_p2p", "pipeline_bubble", "step_sync")
ADAMW_BYTES_PER_PARAM = 40  # read p, g, m, v; write p, m, v; zero and clip g (fp32)


@dataclass
class Prediction:
    layout: Layout
    step_time_s: float
    tflops_per_gpu: float
    mfu: float
    memory_gb_per_gpu: float  # GiB
    fits: bool
    why_not: str  # empty when it fits
    breakdown: dict[str, float]  # seconds per component; they sum to step_time_s
    memory: dict[str, float] = field(default_factory=dict)  # GiB per component
    micro_batch: int = 0
    micro_batches: int = 0

    @property
    def biggest_cost(self) -> str:
        return max(self.breakdown, key=self.breakdown.get)

    def to_dict(self) -> dict:
        lay = self.layout
        return {
            "layout": {**lay.sizes(), "order": ",".join(lay.order)},
            "step_time_s": self.step_time_s,
            "tflops_per_gpu": self.tflops_per_gpu,
            "mfu": self.mfu,
            "memory_gb_per_gpu": self.memory_gb_per_gpu,
            "fits": self.fits,
            "why_not": self.why_not,
            "biggest_cost": self.biggest_cost,
            "micro_batch": self.micro_batch,
            "micro_batches": self.micro_batches,
            "breakdown": dict(self.breakdown),
            "memory_gb": dict(self.memory),
        }


class GemmClock:
    """Seconds for a GEMM of a given FLOP count on one device (efficiency curve in log flops)."""

    def __init__(self, machine: Machine, dtype: str):
        self.peak = machine.peak_flops(dtype)
        self.logs = [math.log(f) for f, _ in machine.gemm_efficiency]
        self.effs = [e for _, e in machine.gemm_efficiency]

    def efficiency(self, flops: float) -> float:
        x = math.log(max(flops, 1.0))
        i = bisect.bisect_left(self.logs, x)
        if i == 0:
            return self.effs[0]
        if i == len(self.logs):
            return self.effs[-1]
        t = (x - self.logs[i - 1]) / (self.logs[i] - self.logs[i - 1])
        return self.effs[i - 1] + t * (self.effs[i] - self.effs[i - 1])

    def seconds(self, flops: float) -> float:
        return flops / (self.peak * self.efficiency(flops)) if flops > 0 else 0.0


class CommClock:
    """Seconds for one of a Comm's collectives; blocking ones (between pieces of compute) pay
    the machine's blocking latency. Placements are worked out once per group of axes."""

    def __init__(self, layout: Layout, machine: Machine):
        self.layout, self.machine, self.placements = layout, machine, {}

    def __call__(self, comm) -> float:
        if comm.axes not in self.placements:
            self.placements[comm.axes] = group_placement(self.layout, comm.axes, self.machine)
        blocking = comm.kind in ("blocking", "dx", "sync")
        return collective_time(comm.op, comm.nbytes, self.placements[comm.axes], self.machine, blocking)


def _category(comm) -> str:
    if comm.kind == "p2p":
        return "pipeline_p2p"
    if comm.axes == ("depth",):
        return "depth_gather" if comm.op == "all_gather" else "depth_reduce_scatter"
    return "tensor_comm"


def _stage_micro_batch(shape, layout, setup, machine, clock, micro, stage_layers, first, last, with_dp, dp_times):
    """Seconds by component for one micro-batch on one stage, after overlap, and the
    forward's share of its compute."""
    work = micro_batch_work(shape, layout, micro, setup.seq_len, setup.dtype, setup.recompute == "block",
                            stage_layers, first, last)
    eff = machine.overlap_efficiency
    on = set(setup.overlap)
    out = dict.fromkeys(COMPONENTS, 0.0)
    compute = {"forward": 0.0, "backward": 0.0}
    dw_times = []
    for g in work.gemms:
        t = clock.seconds(g.flops) * g.count
        out["attention" if g.kind == "attention" else "gemm"] += t
        compute[g.phase] += t
        if g.kind == "dw":
            dw_times.append(t)
    for phase in ("forward", "backward"):
        t = work.elementwise_bytes[phase] / (machine.memory_bandwidth_gbs * 1e9) \
            + work.ops[phase] * machine.op_overhead_us * 1e-6
        out["elementwise"] += t
        compute[phase] += t

    seconds = CommClock(layout, machine)

    # Overlappable work per phase: (category, seconds of all, seconds of one) pools, hidden
    # behind that phase's compute.
    pools = {"forward": [], "backward": []}
    hidden_by_dx = 0.0
    dx_index = 0
    for comm in work.comms:
        one = seconds(comm)
        t = one * comm.count
        category = _category(comm)
        if comm.kind == "gather" and "all_gather" in on:
            pools[comm.phase].append((category, t, one))
        elif comm.kind == "rs" and "reduce_scatter" in on:
            pools["backward"].append((category, t, one))
        elif comm.kind == "dx" and "all_reduce" in on:
            hidden = min(t, eff * dw_times[dx_index])  # both summed over the same layers
            hidden_by_dx += hidden
            out[category] += t - hidden
        else:
            out[category] += t
        dx_index += comm.kind == "dx"
    if with_dp:
        if "data_parallel" in on:
            pools["backward"] += [("data_comm", t, t) for t in dp_times]
        else:
            out["data_comm"] += sum(dp_times)
    for phase, pool in pools.items():
        if not pool:
            continue
        total = sum(t for _, t, _ in pool)
        if total <= 0:
            continue
        window = max(0.0, eff * compute[phase] - (hidden_by_dx if phase == "backward" else 0.0))
        # Forward: the first gather has nothing to hide behind; backward: the last collective.
        edge = pool[-1][2] if phase == "backward" else pool[0][2]
        exposed = min(total, max(edge, total - window))
        for category, t, _ in pool:  # exposed time shared out in proportion
            out[category] += exposed * t / total
    return out, compute["forward"] / max(compute["forward"] + compute["backward"], 1e-30)


def predict(shape: ModelShape, layout: Layout, machine: Machine, setup: TrainingSetup) -> Prediction:
    """Predict one optimizer step. The layout must already pass `search.layout_problem`."""
    shards = layout.data * layout.depth
    micro, count = setup.micro_batches(shards, layout.pipe)
    clock = GemmClock(machine, setup.dtype)
    p = layout.pipe
    seconds = CommClock(layout, machine)
    # Each stage as the engine builds it: its block count (the parameter-balanced split),
    # whether it holds the embedding (first) and the head and loss (last).
    stages = [(blocks, s == 0, s == p - 1) for s, blocks in enumerate(balanced_counts(shape, p))]
    priced = {}
    for stage in dict.fromkeys(stages):
        blocks, first, last = stage
        step_comms = step_collectives(shape, layout, setup.bucket_mb, blocks, first, last)
        dp_times = [seconds(c) for c in step_comms if c.kind == "dp"]
        per_mb, share = _stage_micro_batch(shape, layout, setup, machine, clock, micro, blocks, first, last,
                                           False, dp_times)
        last_mb, _ = _stage_micro_batch(shape, layout, setup, machine, clock, micro, blocks, first, last,
                                        True, dp_times)
        params = stage_parameters(shape, layout, blocks, first, last)
        priced[stage] = {
            "slot": sum(per_mb.values()), "share": share, "per_mb": per_mb, "last_mb": last_mb,
            "local_params": params["sharded"] + params["replicated"],
            # The loss summed over data x depth (and pipe), the clip norm's square-sum over depth, row, col, pipe.
            "sync": sum(seconds(c) * c.count for c in step_comms if c.kind == "sync"),
            "memory": memory_per_device(shape, layout, setup, micro, blocks, first, last),
        }
    forward_s = [priced[stage]["slot"] * priced[stage]["share"] for stage in stages]
    backward_s = [priced[stage]["slot"] * (1 - priced[stage]["share"]) for stage in stages]
    slowest = max(priced.values(), key=lambda entry: entry["slot"])
    breakdown = {k: slowest["per_mb"][k] * (count - 1) + slowest["last_mb"][k] for k in COMPONENTS}
    breakdown["pipeline_bubble"] = max(0.0, step_seconds(forward_s, backward_s, count) - count * slowest["slot"])
    # Stages step their optimizers at once; the one with the most parameters finishes last.
    local = max(entry["local_params"] for entry in priced.values())
    breakdown["optimizer"] += local * ADAMW_BYTES_PER_PARAM / (machine.memory_bandwidth_gbs * 1e9) \
        + 30 * machine.op_overhead_us * 1e-6
    breakdown["step_sync"] += max(entry["sync"] for entry in priced.values())

    step = sum(breakdown.values())
    flops = flops_per_token(shape, setup.seq_len) * setup.global_batch * setup.seq_len
    tflops = flops / step / layout.world_size / 1e12
    memory = max((entry["memory"] for entry in priced.values()), key=lambda m: sum(m.values()))
    total = sum(memory.values())
    limit = machine.memory_gb * machine.usable_memory_fraction
    why = "" if total <= limit else (f"needs {total:.1f} GiB per device, more than {limit:.1f} GiB usable "
                                     f"({machine.usable_memory_fraction:.0%} of {machine.memory_gb:g})")
    return Prediction(layout, step, tflops, tflops * 1e12 / machine.peak_flops(setup.dtype), total, not why, why,
                      breakdown, memory, micro, count)
