"""Predict one training step: time by component, throughput, memory, and whether it fits.

Per micro-batch and pipeline stage: each GEMM at the efficiency the machine reaches for its
FLOPs and smallest dimension, attention at SDPA's own measured efficiency, norms, RoPE,
SwiGLU, residual adds, the loss and the optimizer by the bytes they move at memory bandwidth
times each kind's measured efficiency, kernel-launch overhead (all of these compute times
times the machine's measured `in_context_slowdown`), and every collective of `workload` by
`collectives`. Overlap then hides what it can:
* OAR: each backward dX all-reduce behind its layer's dW GEMM;
* OAG: depth gathers behind the compute of the same phase (the first one stays exposed);
* ORS and DP: reduce-scatters and data-parallel buckets behind backward compute (the last
  one of each stays exposed);
each limited to `overlap_efficiency` of the compute. Pipeline stages: the 1F1B schedule the
engine runs is replayed with each stage's forward and backward times (`perfmodel.pipeline_replay`);
even stages give the textbook bubble of (p - 1) / m of the busy time; where ranks share
cores (`oversubscription` > 1), each stage computes faster while other stages' ranks on its
node wait in their collectives, and the plain 1F1B order is replayed event by event with the
node's cores shared among the ranks busy at each moment, so a stage waiting for its
neighbour lends its cores (`perfmodel.core_sharing`; interleaved orders: the replay up to f
times faster, never faster than the busy time).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
from dataclasses import dataclass, field

from perfmodel.collectives import collective_time, group_placement
from perfmodel.core_sharing import lent_compute_factor, shared_core_replay, stage_mates_on_node, stage_mix_by_node
from axon.spec.flops import flops_per_token
from axon.spec.layout import DEFAULT_ORDER, Layout
from perfmodel.machine import Machine
from perfmodel.memory import fullest, stage_memory, why_it_does_not_fit
from axon.spec.shapes import ModelShape
from axon.spec.schedules import pipeline_order
from perfmodel.pipeline_replay import REPLAY_OPS, step_seconds
from perfmodel.scale_losses import slowest_gpu_factor
from axon.spec.stage_split import balanced_counts
from axon.spec.training import TrainingSetup
from perfmodel.workload import (OPTIMIZER_BYTES_PER_PARAM, Gemm, micro_batch_work, stage_parameters,
                                step_collectives)

COMPONENTS = ("gemm", "attention", "elementwise", "optimizer", "tensor_comm", "depth_gather",
              "depth_reduce_scatter", "data_comm", "pipeline_p2p", "pipeline_bubble", "step_sync", "straggler_wait")
STAGE_COMPUTE = ("gemm", "attention", "elementwise")  # a stage's own compute, out of phase with other stages'
STAGE_COMMS = ("tensor_comm", "depth_gather", "depth_reduce_scatter", "data_comm", "pipeline_p2p")
# Framework ops of one optimizer step outside its per-tensor work: 29 measured on CPU
# (benchmarks/results/launch_counts.json: 205 optimizer launches at 2 layers, 381 at 4, so 88 per
# layer + 29). The per-layer part is left out: on GPUs the trainer's AdamW is fused=True, a few
# multi-tensor kernels per step rather than one per parameter tensor.
OPTIMIZER_OPS = 30
SLOT_PARTS = STAGE_COMPUTE + ("tensor_comm", "depth_gather", "depth_reduce_scatter", "pipeline_p2p")  # a micro-batch's slot


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
            "layout": {**lay.sizes(), "order": ",".join(lay.order), "virtual_stages": lay.virtual_stages},
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


@functools.lru_cache(maxsize=256)
def _logs(points: tuple) -> tuple[list[float], list[float]]:
    return [math.log(size) for size, _ in points], [e for _, e in points]


def interpolate(points: tuple, x: float) -> float:
    """The efficiency at size `x` on a curve of (size, efficiency) points: linear in log(size),
    held flat outside the measured range."""
    logs, effs = _logs(points)
    lx = math.log(max(x, 1.0))
    i = bisect.bisect_left(logs, lx)
    if i == 0:
        return effs[0]
    if i == len(logs):
        return effs[-1]
    t = (lx - logs[i - 1]) / (logs[i] - logs[i - 1])
    return effs[i - 1] + t * (effs[i] - effs[i - 1])


class GemmClock:
    """Seconds for a GEMM on one device, by its shape: the efficiency curve of its smallest
    dimension (interpolated in log(dimension) between the two measured ones around it), else
    the profile's FLOPs-only curve. Attention products use the measured SDPA curves."""

    def __init__(self, machine: Machine, dtype: str):
        self.peak = machine.peak_flops(dtype) / machine.in_context_slowdown  # what a step's ops reach in turn
        self.curve = machine.gemm_efficiency
        self.dims = sorted(machine.gemm_efficiency_by_min_dim)
        self.by_dim = machine.gemm_efficiency_by_min_dim
        self.attention = machine.attention_efficiency

    def efficiency(self, flops: float, min_dim: int | None = None) -> float:
        if not self.dims or min_dim is None:
            return interpolate(self.curve, flops)
        i = bisect.bisect_left(self.dims, min_dim)
        if i < len(self.dims) and self.dims[i] == min_dim or i == 0 or i == len(self.dims):
            return interpolate(self.by_dim[self.dims[min(i, len(self.dims) - 1)]], flops)
        low, high = self.dims[i - 1], self.dims[i]
        t = math.log(min_dim / low) / math.log(high / low)
        return (1 - t) * interpolate(self.by_dim[low], flops) + t * interpolate(self.by_dim[high], flops)

    def gemm_seconds(self, gemm: Gemm) -> float:
        """Seconds for all `count` of them."""
        flops = gemm.flops
        if flops <= 0:
            return 0.0
        if gemm.kind == "attention":
            # Keyed by one SDPA call's FLOPs; a profile without SDPA curves prices the call as one
            # GEMM of those FLOPs.
            curve = self.attention.get(gemm.phase)
            eff = interpolate(curve, flops) if curve else self.efficiency(flops)
        else:
            eff = self.efficiency(flops, min(gemm.m, gemm.n, gemm.k))
        return flops * gemm.count / (self.peak * eff)

    def seconds(self, flops: float, min_dim: int | None = None) -> float:
        return flops / (self.peak * self.efficiency(flops, min_dim)) if flops > 0 else 0.0


def memory_seconds(machine: Machine, kind: str, nbytes: float) -> float:
    """Seconds to move `nbytes` of `kind` work at memory bandwidth times its measured efficiency,
    slowed as the ops of a whole step are (`in_context_slowdown`)."""
    if nbytes <= 0:
        return 0.0
    curve = machine.memory_efficiency.get(kind)
    eff = interpolate(curve, nbytes) if curve else 1.0
    return nbytes * machine.in_context_slowdown / (machine.memory_bandwidth_gbs * 1e9 * eff)


def overhead_seconds(machine: Machine, ops: float) -> float:
    """Seconds of framework overhead for `ops` eager ops."""
    return ops * machine.op_overhead_us * 1e-6 * machine.in_context_slowdown


class CommClock:
    """Seconds for one of a Comm's collectives; blocking ones (between pieces of compute) pay
    the machine's blocking latency. Placements are worked out once per group of axes."""

    def __init__(self, layout: Layout, machine: Machine):
        self.layout, self.machine, self.placements, self.prices = layout, machine, {}, {}

    def __call__(self, comm) -> float:
        # A step has many collectives alike (buckets of one size, a block's per layer): each priced once.
        blocking = self._blocking(comm)
        key = (comm.op, comm.nbytes, comm.axes, blocking)
        price = self.prices.get(key)
        if price is None:
            price = self.prices[key] = collective_time(comm.op, comm.nbytes, self._placement(comm), self.machine,
                                                       blocking)
        return price

    def in_flight(self, comm, together: int) -> float:
        """Seconds of one of `together` asynchronous collectives issued back to back: the
        process group waits out their fixed costs (time at one byte) side by side, up to the
        machine's `concurrent_collectives` at a time; transfers still take their turn."""
        priced = self(comm)
        k = min(together, self.machine.concurrent_collectives)
        if k <= 1:
            return priced
        key = (comm.op, 1.0, comm.axes, "fixed")
        fixed = self.prices.get(key)
        if fixed is None:
            fixed = self.prices[key] = collective_time(comm.op, 1.0, self._placement(comm), self.machine)
        return priced - fixed * (1 - 1 / k)

    def asleep(self, comm, priced: float) -> float:
        """Seconds of one collective (priced at `priced` by this clock) its early ranks sleep,
        waiting for the last: the blocking latency beyond the collective's own time. Counted
        only where ranks share cores, and not for pipeline transfers: the neighbour a stage
        waits for is in the same exchange, so the sleep frees no core for a computing stage."""
        if self.machine.oversubscription <= 1 or not self._blocking(comm) or comm.kind == "p2p":
            return 0.0
        return priced - collective_time(comm.op, comm.nbytes, self._placement(comm), self.machine)

    def _placement(self, comm):
        if comm.axes not in self.placements:
            self.placements[comm.axes] = group_placement(self.layout, comm.axes, self.machine)
        return self.placements[comm.axes]

    @staticmethod
    def _blocking(comm) -> bool:
        return comm.kind in ("blocking", "dx", "sync", "p2p")


def _category(comm) -> str:
    if comm.kind == "p2p":
        return "pipeline_p2p"
    if comm.axes == ("depth",):
        return "depth_gather" if comm.op == "all_gather" else "depth_reduce_scatter"
    return "tensor_comm"


def _unordered(layout: Layout) -> Layout:
    """The layout in the default rank order: what a rank computes and sends does not depend on
    the order, only where its groups sit, so work is worked out once per set of axis sizes."""
    return layout if layout.order == DEFAULT_ORDER else dataclasses.replace(layout, order=DEFAULT_ORDER)


@functools.lru_cache(maxsize=1 << 14)
def _micro_batch_work(shape, layout, micro, seq, dtype, recompute, stage_layers, first, last, grad_reduce_dtype):
    return micro_batch_work(shape, layout, micro, seq, dtype, recompute, stage_layers, first, last, grad_reduce_dtype)


@functools.lru_cache(maxsize=1 << 14)
def _step_collectives(shape, layout, bucket_mb, stage_layers, first, last, grad_reduce_dtype) -> tuple:
    return tuple(step_collectives(shape, layout, bucket_mb, stage_layers, first, last, grad_reduce_dtype))


@dataclass(frozen=True)
class _ComputeDevice:
    """A machine as a cache key for compute: equal where every figure that prices compute is,
    whatever the links (the planner's floor machines change only those), so a chunk's compute
    is worked out once for all the rank orders and floors of a layout."""
    figures: tuple
    machine: Machine = field(compare=False)

    @staticmethod
    def of(machine: Machine, dtype: str) -> _ComputeDevice:
        def items(curves: dict) -> tuple:
            return tuple(sorted(curves.items()))

        return _ComputeDevice((machine.peak_flops(dtype), machine.in_context_slowdown, machine.gemm_efficiency,
                               items(machine.gemm_efficiency_by_min_dim), items(machine.attention_efficiency),
                               items(machine.memory_efficiency), machine.memory_bandwidth_gbs, machine.op_overhead_us),
                              machine)


@functools.lru_cache(maxsize=1 << 14)
def _chunk_compute(device: _ComputeDevice, shape, row, col, micro, seq, dtype, recompute, stage_layers, first,
                   last) -> tuple[dict, dict, tuple]:
    """One micro-batch's compute through one chunk: seconds by compute component, by phase, and
    of each dW GEMM. Only row and col shape a rank's GEMMs and passes; no link enters."""
    machine, clock = device.machine, GemmClock(device.machine, dtype)
    work = micro_batch_work(shape, Layout(row=row, col=col), micro, seq, dtype, recompute, stage_layers, first, last)
    out = dict.fromkeys(STAGE_COMPUTE, 0.0)
    compute = {"forward": 0.0, "backward": 0.0}
    dw_times = []
    for g in work.gemms:
        t = clock.gemm_seconds(g)
        out["attention" if g.kind == "attention" else "gemm"] += t
        compute[g.phase] += t
        if g.kind == "dw":
            dw_times.append(t)
    for memory_pass in work.memory:
        t = memory_seconds(machine, memory_pass.kind, memory_pass.nbytes) * memory_pass.count
        out["elementwise"] += t
        compute[memory_pass.phase] += t
    for phase in ("forward", "backward"):
        t = overhead_seconds(machine, work.ops[phase])
        out["elementwise"] += t
        compute[phase] += t
    return out, compute, tuple(dw_times)


def _stage_micro_batch(shape, layout, setup, machine, device, seconds, micro, stage_layers, first, last, dp_times):
    """Seconds by component for one micro-batch on one stage, after overlap, without and with
    the data-parallel reductions (which ride on the last micro-batch), the forward's share of
    its compute, and the seconds its ranks sleep in exposed blocking collectives."""
    work = _micro_batch_work(shape, _unordered(layout), micro, setup.seq_len, setup.dtype, setup.recompute == "block",
                             stage_layers, first, last, getattr(setup, "grad_reduce_dtype", "float32"))
    eff = machine.overlap_efficiency
    on = set(setup.overlap)
    own, compute, dw_times = _chunk_compute(device, shape, layout.row, layout.col, micro, setup.seq_len, setup.dtype,
                                            setup.recompute == "block", stage_layers, first, last)
    out = {**dict.fromkeys(COMPONENTS, 0.0), **own}

    # Overlappable work per phase: (category, seconds of all, seconds of one) pools, hidden
    # behind that phase's compute.
    pools = {"forward": [], "backward": []}
    hidden_by_dx = asleep = 0.0
    dx_index = 0
    pending_rs = sum(comm.count for comm in work.comms if comm.kind == "rs")
    for comm in work.comms:
        category = _category(comm)
        # Prefetched gathers run the one in use and prefetch_distance ahead at once; reduce-
        # scatters stay pending to the step's end.
        if comm.kind == "gather" and "all_gather" in on:
            one = seconds.in_flight(comm, setup.prefetch_distance + 1)
            pools[comm.phase].append((category, one * comm.count, one))
        elif comm.kind == "rs" and "reduce_scatter" in on:
            one = seconds.in_flight(comm, pending_rs)
            pools["backward"].append((category, one * comm.count, one))
        elif comm.kind == "dx" and "all_reduce" in on:
            one = seconds(comm)
            t = one * comm.count
            hidden = min(t, eff * dw_times[dx_index])  # both summed over the same layers
            hidden_by_dx += hidden
            out[category] += t - hidden
            asleep += seconds.asleep(comm, one) * comm.count * (1 - hidden / t if t > 0 else 0.0)
        else:
            one = seconds(comm)
            out[category] += one * comm.count
            asleep += seconds.asleep(comm, one) * comm.count
        dx_index += comm.kind == "dx"
    share = compute["forward"] / max(compute["forward"] + compute["backward"], 1e-30)
    plain = _expose(out, pools, compute, hidden_by_dx, eff)
    if "data_parallel" in on:
        pools["backward"] = pools["backward"] + [("data_comm", t, t) for t in dp_times]
    else:
        out = {**out, "data_comm": out["data_comm"] + sum(dp_times)}
    return plain, _expose(out, pools, compute, hidden_by_dx, eff), share, asleep


@functools.lru_cache(maxsize=4096)
def _shared_core_step(forward_s: tuple, backward_s: tuple, micro_batches: int, mix: tuple, oversubscription: float) -> float:
    p = len(forward_s)
    orders = [[(kind, j) for kind, j, _ in pipeline_order(s, p, micro_batches)] for s in range(p)]
    return shared_core_replay(orders, forward_s, backward_s, mix, oversubscription)


def _scaled(seconds: dict, factor: float) -> dict:
    """`seconds` with the stage's compute components times `factor`."""
    return {k: t * factor if k in STAGE_COMPUTE else t for k, t in seconds.items()}


def _expose(out: dict, pools: dict, compute: dict, hidden_by_dx: float, eff: float) -> dict:
    """`out` plus what each phase's pool of overlappable collectives leaves exposed."""
    out = dict(out)
    for phase, pool in pools.items():
        total = sum(t for _, t, _ in pool)
        if total <= 0:
            continue
        window = max(0.0, eff * compute[phase] - (hidden_by_dx if phase == "backward" else 0.0))
        # Forward: the first gather has nothing to hide behind; backward: the last collective.
        edge = pool[-1][2] if phase == "backward" else pool[0][2]
        exposed = min(total, max(edge, total - window))
        for category, t, _ in pool:  # exposed time shared out in proportion
            out[category] += exposed * t / total
    return out


class _Held:
    """A machine as a cache key by identity (a profile's dicts make it unhashable): the planner
    asks about one machine object, and a cache that holds it keeps its id from being reused."""

    __slots__ = ("machine",)

    def __init__(self, machine: Machine):
        self.machine = machine

    def __hash__(self) -> int:
        return id(self.machine)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Held) and other.machine is self.machine


def _stages_priced(shape: ModelShape, layout: Layout, machine: Machine, setup: TrainingSetup) -> tuple:
    """Each distinct stage's prices (what predict works out before the pipeline replay): kept
    for the last few layouts, as the planner prices a layout without its bubble and then with it."""
    return _recent_stages(_Held(machine), shape, layout, setup)


@functools.lru_cache(maxsize=256)
def _recent_stages(held: _Held, shape: ModelShape, layout: Layout, setup: TrainingSetup) -> tuple:
    return _price_stages(shape, layout, held.machine, setup)


def _price_stages(shape: ModelShape, layout: Layout, machine: Machine, setup: TrainingSetup) -> tuple:
    shards = layout.data * layout.depth
    micro, count = setup.micro_batches(shards, layout.pipe)
    device = _ComputeDevice.of(machine, setup.dtype)
    p, v = layout.pipe, layout.virtual_stages
    seconds = CommClock(layout, machine)
    # Each stage as the engine builds it: its chunks' block counts (the parameter-balanced split
    # into p x v chunks; stage s holds chunks s, s + p, ...), whether it holds the embedding
    # (first) and the head and loss (last). Each chunk of a micro-batch sends its activations on
    # and its gradient back: v times the point-to-point traffic of plain 1F1B.
    counts = balanced_counts(shape, p * v)
    chunks = [(blocks, q == 0, q == p * v - 1) for q, blocks in enumerate(counts)]
    stages = [(tuple(chunks[c * p + s] for c in range(v)), s == 0, s == p - 1) for s in range(p)]
    lending = stage_mates_on_node(layout, machine.devices_per_node) if p > 1 and machine.oversubscription > 1 else None
    priced, chunk_prices = {}, {}
    for stage in dict.fromkeys(stages):
        stage_chunks, first, last = stage
        blocks = sum(chunk[0] for chunk in stage_chunks)
        step_comms = _step_collectives(shape, _unordered(layout), setup.bucket_mb, blocks, first, last,
                                       getattr(setup, "grad_reduce_dtype", "float32"))
        dp_times = [seconds(c) for c in step_comms if c.kind == "dp"]
        per_chunk = []
        for chunk in stage_chunks:  # interleaved stages share most chunks: each priced once a prediction
            key = (chunk, tuple(dp_times))
            if key not in chunk_prices:
                chunk_prices[key] = _stage_micro_batch(shape, layout, setup, machine, device, seconds, micro, *chunk,
                                                       dp_times)
            per_chunk.append(chunk_prices[key])
        if lending:  # other stages' ranks on the node lend this stage the cores they leave while asleep
            plain_sum = {k: sum(plain[k] for plain, _, _, _ in per_chunk) for k in COMPONENTS}
            factor = lent_compute_factor(sum(plain_sum[k] for k in STAGE_COMPUTE),
                                         sum(plain_sum[k] for k in STAGE_COMMS),
                                         sum(asleep for _, _, _, asleep in per_chunk), *lending,
                                         machine.oversubscription)
            per_chunk = [(_scaled(plain, factor), _scaled(with_dp, factor), share, asleep)
                         for plain, with_dp, share, asleep in per_chunk]
        # The data-parallel reductions ride on the stage's last backward, of its chunk 0.
        per_mb = {k: sum(plain[k] for plain, _, _, _ in per_chunk) for k in COMPONENTS}
        last_mb = {k: per_mb[k] - per_chunk[0][0][k] + per_chunk[0][1][k] for k in COMPONENTS}
        params = stage_parameters(shape, layout, blocks, first, last)
        priced[stage] = {
            "slot": sum(per_mb.values()), "per_mb": per_mb, "last_mb": last_mb,
            "chunk_slots": [(sum(plain.values()), share) for plain, _, share, _ in per_chunk],
            "local_params": params["sharded"] + params["replicated"],
            # The loss summed over data x depth (and pipe), the clip norm's square-sum over depth, row, col, pipe.
            "sync": sum(seconds(c) * c.count for c in step_comms if c.kind == "sync"),
            "memory": stage_memory(shape, layout, setup, micro, blocks, first, last),
        }
    return micro, count, lending, stages, priced


def predict(shape: ModelShape, layout: Layout, machine: Machine, setup: TrainingSetup,
            replay_pipeline: bool = True) -> Prediction:
    """Predict one optimizer step. The layout must already pass `search.layout_problem`.
    `replay_pipeline=False` leaves the pipeline bubble out (it is never negative), which makes
    the step a cheap lower bound for the planner: replaying an interleaved order is the costly part."""
    micro, count, lending, stages, priced = _stages_priced(shape, layout, machine, setup)
    p, v = layout.pipe, layout.virtual_stages
    # Per virtual stage q = c p + s (per stage when v = 1): forward and backward seconds.
    forward_s, backward_s = [0.0] * (p * v), [0.0] * (p * v)
    for s, stage in enumerate(stages):
        for c, (slot, share) in enumerate(priced[stage]["chunk_slots"]):
            forward_s[c * p + s], backward_s[c * p + s] = slot * share, slot * (1 - share)
    slowest = max(priced.values(), key=lambda entry: entry["slot"])
    breakdown = {k: slowest["per_mb"][k] * (count - 1) + slowest["last_mb"][k] for k in COMPONENTS}
    if replay_pipeline:
        busy = count * slowest["slot"]
        if lending and v == 1 and 2 * p * count <= REPLAY_OPS:
            # Ranks sharing cores: a stage waiting for its neighbour lends its cores to the busy
            # ones, event by event; the slowest stage can then finish sooner than its price.
            replayed = _shared_core_step(tuple(forward_s), tuple(backward_s), count,
                                         stage_mix_by_node(layout, machine.devices_per_node), machine.oversubscription)
            if replayed < busy:  # the replay scales whole slots: so do their parts
                breakdown = {k: t * replayed / busy if k in SLOT_PARTS else t for k, t in breakdown.items()}
        else:
            # Interleaved, or schedules too long to replay event by event: a waiting rank's share
            # goes to the busy ones, the replay running up to f times faster, down to the busy time.
            replayed = step_seconds(forward_s, backward_s, count, p) / machine.oversubscription
        breakdown["pipeline_bubble"] = max(0.0, replayed - busy)
    # Stages step their optimizers at once; the one with the most parameters finishes last.
    local = max(entry["local_params"] for entry in priced.values())
    breakdown["optimizer"] += memory_seconds(machine, "optimizer", local * OPTIMIZER_BYTES_PER_PARAM) \
        + overhead_seconds(machine, OPTIMIZER_OPS)
    breakdown["step_sync"] += max(entry["sync"] for entry in priced.values())
    # The step waits for the job's slowest GPU, whose compute runs longer than the median's
    # (perfmodel.scale_losses: grows with the GPU count).
    straggler = slowest_gpu_factor(layout.world_size, machine.gpu_speed_variation, machine.variation_measured_over_gpus)
    breakdown["straggler_wait"] = (straggler - 1) * sum(breakdown[k] for k in STAGE_COMPUTE + ("optimizer",))

    step = sum(breakdown.values())
    flops = flops_per_token(shape, setup.seq_len) * setup.global_batch * setup.seq_len
    tflops = flops / step / layout.world_size / 1e12
    memory = dict(fullest(entry["memory"] for entry in priced.values()))
    total = sum(memory.values())
    why = why_it_does_not_fit(total, machine)
    return Prediction(layout, step, tflops, tflops * 1e12 / machine.peak_flops(setup.dtype), total, not why, why,
                      breakdown, memory, micro, count)
