"""A lower bound on a layout's predicted step without a prediction: what the planner prices first.

`predict` costs a few milliseconds a layout, most of it collectives and the pipeline replay;
a plan at scale has thousands of layouts that fit, nearly all far slower than the best. This
bound prices compute, which no link or rank order changes, and the collectives on links no
order beats, from pieces shared by many layouts, so the search (perfmodel.search) can set
most layouts aside without predicting them.

The bound is a sum of parts, each no more than the prediction's parts it stands for, so it
stays a bound when the prediction gains other non-negative terms. With m micro-batches, p
stages, C_s stage s's compute per micro-batch (GEMMs, attention, memory passes, launches: what
predict charges as gemm + attention + elementwise, by the same clocks) plus the collectives
its slot always exposes (below):
* the pipeline part (predict's compute, its stage collectives and p2p, and the bubble):
  predict charges m - 1 whole slots S of its slowest stage plus the last (compute the same,
  collectives at least zero), and the bubble R - m S when the replayed step R is longer. So
  the part is at least R - S + C of that stage, and at least (m - 1) S + C. R is no shorter
  than any chain of operations that wait on each other: micro-batch 0's forward through
  stages 0 .. p - 2, every operation of the last stage in turn, micro-batch m - 1's backward
  back through stages p - 2 .. 0 (R >= m S_(p-1) + sum of S_s for s < p - 1; the estimate
  used beyond REPLAY_OPS is no shorter either). The slowest stage is at most the last, so
  the part is at least m C_(p-1) + sum of C_s for s < p - 1 (plain 1F1B), and at least
  (m - 1) max C + min C (any schedule). Interleaved, the chain crosses the other stages on
  their chunk 0 only (K = m C_(p-1) + sum of C_(s,0)), so a slowest stage before the last
  is not inside it: with X that stage's collectives per micro-batch, the part is at least
  both m C + (m - 1) X and K - X, hence at least (1 - 1/m) K + min C whatever X is;
* optimizer: the same formula as predict's (the most local parameters of any stage), exact;
* the slowest GPU's wait: predict's factor f - 1 times its compute and optimizer, the compute
  being m times that of one stage, so at least m times the least of any stage's;
* the step's syncs and anything else: at least zero, left out.
The collectives in C_s are priced on `floor_placement`'s links, which no rank order beats (a
price never drops as a link slows), as predict's overlap treats them: a blocking one (tensor
all-reduces, norms, the embedding and loss reductions, the sends) whole, a dX all-reduce less
at most overlap_efficiency x its dW GEMM, and a phase's pool of overlapped gathers and
reduce-scatters exposing at least its total less overlap_efficiency x that phase's compute.
The last micro-batch's slot holds as much (its data-parallel buckets only join the backward
pool). At scale these are half the step: without them the bound was half the prediction.
Where ranks share cores (oversubscription > 1) a pipeline's stages lend each other cores
and predict shrinks their compute by factors it solves for: there the pipeline part is 0.

What determines a chunk's compute is only (row, col, micro-batch, its blocks, first, last):
data and depth change no GEMM's shape (a depth gather restores the whole weight block) and
pipe only through the stage split; its collectives' floor adds depth, and pipe only through
whether it exceeds a node (the sends). Each part is affine in the blocks, so it is priced at
0 and 1 block once per (row, col, depth, micro-batch, first, last) for one search.
"""

from __future__ import annotations

from axon.spec.layout import Layout
from axon.spec.shapes import ModelShape
from axon.spec.stage_split import balanced_counts
from axon.spec.training import TrainingSetup
from perfmodel.collectives import Placement, collective_time
from perfmodel.machine import Machine
from perfmodel.predict import OPTIMIZER_OPS, GemmClock, memory_seconds, overhead_seconds
from perfmodel.scale_losses import slowest_gpu_factor
from perfmodel.workload import (OPTIMIZER_BYTES_PER_PARAM, MicroBatchWork, micro_batch_work, pipeline_sends,
                                stage_parameters)

# The closed form can round differently from predict's sums by an ulp or two: a bound a hair
# low keeps a layout whose time ties the cutoff from being set aside unpriced.
ROUNDING = 1 - 1e-9


def stages(shape: ModelShape, layout: Layout) -> list[tuple[tuple[tuple[int, bool, bool], ...], bool, bool]]:
    """Each pipeline stage as predict builds it: its chunks' (blocks, first, last) (the
    parameter-balanced split into p x v chunks, stage s holding chunks s, s + p, ...), and
    whether it holds the embedding (first) and the head (last)."""
    p, v = layout.pipe, layout.virtual_stages
    counts = balanced_counts(shape, p * v)
    chunks = [(blocks, q == 0, q == p * v - 1) for q, blocks in enumerate(counts)]
    return [(tuple(chunks[c * p + s] for c in range(v)), s == 0, s == p - 1) for s in range(p)]


def floor_placement(size: int, machine: Machine) -> Placement:
    """Groups of `size` ranks placed no slower than in any rank order: a group no larger than a
    node may sit inside one (the intra-node bandwidth, the faster latency); a larger one
    crosses nodes in every order, on the inter-node latency and at most all of a node's NICs."""
    intra, inter = machine.intra_node, machine.inter_node
    if size <= machine.devices_per_node:
        return Placement(size, True, intra.bandwidth_gbs, min(intra.latency_us, inter.latency_us))
    return Placement(size, False, min(intra.bandwidth_gbs, machine.nics_per_node * inter.bandwidth_gbs),
                     inter.latency_us)


class StepBound:
    """Lower bounds on `predict`'s step for layouts of one model, machine and setup."""

    def __init__(self, shape: ModelShape, machine: Machine, setup: TrainingSetup):
        self.shape, self.machine, self.setup = shape, machine, setup
        self.clock = GemmClock(machine, setup.dtype)
        # Measured collective fits are not monotone in the links, and shared cores change what a
        # slot costs: there no collective is counted, unless an order's own placements are given.
        self.links_bound = not machine.collectives and machine.oversubscription <= 1
        self.works: dict[tuple, MicroBatchWork] = {}
        self.computed: dict[tuple, tuple] = {}
        self.compute: dict[tuple, tuple[float, ...]] = {}
        self.collectives: dict[tuple, tuple[float, ...]] = {}
        self.sends: dict[tuple, float] = {}
        self.parameters: dict[tuple, float] = {}
        self.split: dict[tuple, list] = {}
        self.floors: dict[int, Placement] = {}

    def __call__(self, layout: Layout, placements: dict[str, Placement] | None = None) -> float:
        """No order of `layout` predicts a shorter step (see the module docstring); with
        `placements` (where one order puts the groups of pipe, depth, row and col:
        perfmodel.collectives.group_placement), no shorter than that order does."""
        if placements is None and self.links_bound:
            placements = {axis: self._floor_placement(getattr(layout, axis))
                          for axis in ("pipe", "depth", "row", "col")}
        micro, count = self.setup.micro_batches(layout.data * layout.depth, layout.pipe)
        split = self._stages(layout)
        total, least_compute = 0.0, 0.0
        if layout.pipe == 1 or self.machine.oversubscription <= 1:  # no stage lends compute
            # Stages alike (the balanced split's middle ones) are priced once.
            priced = {stage: [self._chunk_floor(layout, micro, *chunk, placements) for chunk in stage[0]]
                      for stage in dict.fromkeys(split)}
            chunks = [priced[stage] for stage in split]
            compute = [sum(seconds for seconds, _ in stage) for stage in chunks]
            least_compute = min(sum(own for _, own in stage) for stage in priced.values())
            chain = count * compute[-1] + sum(stage[0][0] for stage in chunks[:-1])
            pipeline = (count - 1) * max(compute) + min(compute)
            if layout.virtual_stages == 1:
                pipeline = max(pipeline, chain)
            else:
                pipeline = max(pipeline, (1 - 1 / count) * chain + min(compute))
            total += pipeline
        local = max(self._local_parameters(layout, sum(chunk[0] for chunk in stage_chunks), first, last)
                    for stage_chunks, first, last in dict.fromkeys(split))
        optimizer = memory_seconds(self.machine, "optimizer", local * OPTIMIZER_BYTES_PER_PARAM) \
            + overhead_seconds(self.machine, OPTIMIZER_OPS)
        straggler = slowest_gpu_factor(layout.world_size, self.machine.gpu_speed_variation,
                                       self.machine.variation_measured_over_gpus)
        total += optimizer + (straggler - 1) * (count * least_compute + optimizer)
        return total * ROUNDING

    def _stages(self, layout: Layout) -> list:
        key = (layout.pipe, layout.virtual_stages)
        if key not in self.split:
            self.split[key] = stages(self.shape, layout)
        return self.split[key]

    def _floor_placement(self, size: int) -> Placement:
        if size not in self.floors:
            self.floors[size] = floor_placement(size, self.machine)
        return self.floors[size]

    def _chunk_floor(self, layout: Layout, micro: int, blocks: int, first: bool, last: bool,
                     placements: dict[str, Placement] | None) -> tuple[float, float]:
        """(compute plus the collectives it always exposes, compute alone): seconds of one
        micro-batch through one chunk. Every part is affine in the chunk's blocks (each block
        adds the same GEMMs, passes, launches and collectives), so each is priced at 0 and 1
        block, once per what decides it, and the pools' max(0, .) taken after."""
        row, col, depth = layout.row, layout.col, layout.depth
        key = (row, col, micro, first, last)
        if key not in self.compute:
            self.compute[key] = tuple(part for zero_or_one in (0, 1)
                                      for part in self._compute(row, col, depth, micro, zero_or_one, first, last)[:2])
        forward_0, backward_0, forward_1, backward_1 = self.compute[key]
        forward = forward_0 + blocks * (forward_1 - forward_0)
        backward = backward_0 + blocks * (backward_1 - backward_0)
        compute = forward + backward
        if placements is None:
            return compute, compute
        exposed = pool_forward = pool_backward = 0.0
        for axis in ("row", "col", "depth"):
            if getattr(layout, axis) > 1:
                # Only depth's collectives grow with depth (its gathers and reduce-scatters).
                key = (row, col, depth if axis == "depth" else 0, micro, first, last, axis, placements[axis])
                if key not in self.collectives:
                    parts = []
                    for zero_or_one in (0, 1):
                        *_, dw_times, work = self._compute(row, col, depth, micro, zero_or_one, first, last)
                        if axis == "depth":
                            work = self._work(row, col, depth, micro, zero_or_one, first, last)
                        parts += self._collectives(work.comms, dw_times, axis, placements[axis])
                    self.collectives[key] = tuple(parts)
                own_0, forward_0, backward_0, own_1, forward_1, backward_1 = self.collectives[key]
                exposed += own_0 + blocks * (own_1 - own_0)
                pool_forward += forward_0 + blocks * (forward_1 - forward_0)
                pool_backward += backward_0 + blocks * (backward_1 - backward_0)
        eff = self.machine.overlap_efficiency
        seconds = compute + exposed + max(0.0, pool_forward - eff * forward) + max(0.0, pool_backward - eff * backward)
        if layout.pipe > 1:
            seconds += self._sends(layout, micro, first, last, placements["pipe"])
        return seconds, compute

    def _work(self, row: int, col: int, depth: int, micro: int, blocks: int, first: bool, last: bool):
        """What one micro-batch asks of a rank through a chunk of `blocks` blocks (pipe left out)."""
        key = (row, col, depth, micro, blocks, first, last)
        if key not in self.works:
            setup = self.setup
            self.works[key] = micro_batch_work(self.shape, Layout(depth=depth, row=row, col=col), micro, setup.seq_len,
                                               setup.dtype, setup.recompute == "block", blocks, first, last,
                                               getattr(setup, "grad_reduce_dtype", "float32"))
        return self.works[key]

    def _compute(self, row: int, col: int, depth: int, micro: int, blocks: int, first: bool, last: bool) -> tuple:
        """(forward compute, backward compute, each dW GEMM's seconds, the work) of `_work`:
        predict's GEMMs, attention, memory passes and launch overhead by the same clocks (compute
        is never hidden). No GEMM, nor any collective over row or col, depends on depth."""
        key = (row, col, micro, blocks, first, last)
        if key not in self.computed:
            machine, clock = self.machine, self.clock
            work = self._work(row, col, depth, micro, blocks, first, last)
            by_phase = {"forward": 0.0, "backward": 0.0}
            dw_times = []
            for gemm in work.gemms:
                seconds = clock.gemm_seconds(gemm)
                by_phase[gemm.phase] += seconds
                if gemm.kind == "dw":
                    dw_times.append(seconds)
            for memory_pass in work.memory:
                by_phase[memory_pass.phase] += memory_seconds(machine, memory_pass.kind, memory_pass.nbytes) \
                    * memory_pass.count
            for phase, ops in work.ops.items():
                by_phase[phase] += overhead_seconds(machine, ops)
            self.computed[key] = by_phase["forward"], by_phase["backward"], dw_times, work
        return self.computed[key]

    def _collectives(self, comms: list, dw_times: list[float], axis: str,
                     placement: Placement) -> tuple[float, float, float]:
        """(seconds exposed whatever the compute, the forward's and the backward's pools) of the
        collectives over `axis`, as predict's _stage_micro_batch treats them: a blocking one
        whole, a dX all-reduce less at most overlap_efficiency x its dW GEMM, an overlapped
        gather or reduce-scatter into its phase's pool, priced as one of the most that can be
        in flight. Priced without the blocking latency's floor, which only adds."""
        setup, machine = self.setup, self.machine
        on, eff = set(setup.overlap), machine.overlap_efficiency
        exposed, pools = 0.0, {"forward": 0.0, "backward": 0.0}
        dx_index = -1
        for comm in comms:
            dx_index += comm.kind == "dx"
            if comm.axes != (axis,):
                continue
            seconds = collective_time(comm.op, comm.nbytes, placement, machine)
            if comm.kind == "gather" and "all_gather" in on or comm.kind == "rs" and "reduce_scatter" in on:
                together = setup.prefetch_distance + 1 if comm.kind == "gather" else machine.concurrent_collectives
                k = min(together, machine.concurrent_collectives)
                if k > 1:
                    seconds -= collective_time(comm.op, 1.0, placement, machine) * (1 - 1 / k)
                pools["backward" if comm.kind == "rs" else comm.phase] += seconds * comm.count
            elif comm.kind == "dx" and "all_reduce" in on:
                exposed += max(0.0, seconds * comm.count - eff * dw_times[dx_index])
            else:
                exposed += seconds * comm.count
        return exposed, pools["forward"], pools["backward"]

    def _sends(self, layout: Layout, micro: int, first: bool, last: bool, placement: Placement) -> float:
        """One micro-batch's point-to-point sends through one chunk."""
        key = (layout.col, micro, first, last, placement)
        if key not in self.sends:
            self.sends[key] = sum(send.count * collective_time(send.op, send.nbytes, placement, self.machine)
                                  for send in pipeline_sends(self.shape, layout, micro * self.setup.seq_len,
                                                             self.setup.dtype, first, last))
        return self.sends[key]

    def _local_parameters(self, layout: Layout, blocks: int, first: bool, last: bool) -> float:
        key = (layout.row, layout.col, layout.depth, blocks, first, last)
        if key not in self.parameters:
            params = stage_parameters(self.shape, layout, blocks, first, last)
            self.parameters[key] = params["sharded"] + params["replicated"]
        return self.parameters[key]
