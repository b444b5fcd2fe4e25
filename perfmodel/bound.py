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
from perfmodel.workload import OPTIMIZER_BYTES_PER_PARAM, micro_batch_work, pipeline_sends, stage_parameters

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
        # slot costs: there no collective is counted.
        self.links_bound = not machine.collectives and machine.oversubscription <= 1
        self.compute: dict[tuple, tuple[float, float]] = {}
        self.sends: dict[tuple, float] = {}
        self.parameters: dict[tuple, float] = {}

    def __call__(self, layout: Layout) -> float:
        """No order of `layout` predicts a shorter step (see the module docstring)."""
        micro, count = self.setup.micro_batches(layout.data * layout.depth, layout.pipe)
        split = stages(self.shape, layout)
        total, least_compute = 0.0, 0.0
        if layout.pipe == 1 or self.machine.oversubscription <= 1:  # no stage lends compute
            chunks = [[self._chunk_floor(layout, micro, *chunk) for chunk in stage_chunks]
                      for stage_chunks, _, _ in split]
            compute = [sum(seconds for seconds, _ in stage) for stage in chunks]
            least_compute = min(sum(own for _, own in stage) for stage in chunks)
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

    def _chunk_floor(self, layout: Layout, micro: int, blocks: int, first: bool, last: bool) -> tuple[float, float]:
        """(compute plus the collectives it always exposes, compute alone): seconds of one
        micro-batch through one chunk. Every part is affine in the chunk's blocks (each block
        adds the same GEMMs, passes, launches and collectives), so it is priced at 0 and 1
        block, once per key, and the pools' max(0, .) taken after."""
        depth = layout.depth if self.links_bound else 1
        key = (layout.row, layout.col, depth, micro, first, last)
        if key not in self.compute:
            sizes = Layout(depth=depth, row=layout.row, col=layout.col)
            self.compute[key] = (self._price_chunk(sizes, micro, 0, first, last),
                                 self._price_chunk(sizes, micro, 1, first, last))
        none, one = self.compute[key]
        forward, backward, exposed, pool_forward, pool_backward = (
            at_zero + blocks * (at_one - at_zero) for at_zero, at_one in zip(none, one))
        eff = self.machine.overlap_efficiency
        compute = forward + backward
        seconds = compute + exposed + max(0.0, pool_forward - eff * forward) + max(0.0, pool_backward - eff * backward)
        if layout.pipe > 1 and self.links_bound:
            seconds += self._sends(layout, micro, first, last)
        return seconds, compute

    def _price_chunk(self, sizes: Layout, micro: int, blocks: int, first: bool, last: bool) -> tuple[float, ...]:
        """(forward compute, backward compute, collectives exposed whatever the compute, the
        forward's and the backward's pools of overlapped collectives): predict's GEMMs,
        attention, memory passes and launch overhead (compute is never hidden), and the
        collectives on links no order beats (`sizes`: the axes that shape them; without pipe,
        whose sends `_sends` prices)."""
        setup, machine, clock = self.setup, self.machine, self.clock
        work = micro_batch_work(self.shape, sizes, micro, setup.seq_len, setup.dtype, setup.recompute == "block",
                                blocks, first, last, getattr(setup, "grad_reduce_dtype", "float32"))
        by_phase = {"forward": 0.0, "backward": 0.0}
        for gemm in work.gemms:
            by_phase[gemm.phase] += clock.gemm_seconds(gemm)
        for memory_pass in work.memory:
            by_phase[memory_pass.phase] += memory_seconds(machine, memory_pass.kind, memory_pass.nbytes) \
                * memory_pass.count
        for phase, ops in work.ops.items():
            by_phase[phase] += overhead_seconds(machine, ops)
        exposed, pools = 0.0, {"forward": 0.0, "backward": 0.0}
        if self.links_bound:
            # As predict's _stage_micro_batch treats each collective: a blocking one is exposed
            # whole, a dX all-reduce hides at most behind its dW GEMM, and a phase's pool of
            # overlapped gathers and reduce-scatters leaves at least what exceeds eff x that
            # phase's compute. A pooled one is priced as one of the most that can be in flight.
            on, eff = set(setup.overlap), machine.overlap_efficiency
            dw_times = [clock.gemm_seconds(g) for g in work.gemms if g.kind == "dw"]
            dx_index = 0
            for comm in work.comms:
                (axis,) = comm.axes
                placement = floor_placement(getattr(sizes, axis), machine)
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
                dx_index += comm.kind == "dx"
        return by_phase["forward"], by_phase["backward"], exposed, pools["forward"], pools["backward"]

    def _sends(self, layout: Layout, micro: int, first: bool, last: bool) -> float:
        """One micro-batch's point-to-point sends through one chunk, on the fastest link a pipe
        group of this size can have."""
        beyond_node = layout.pipe > self.machine.devices_per_node
        key = (layout.col, micro, first, last, beyond_node)
        if key not in self.sends:
            placement = floor_placement(layout.pipe, self.machine)
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
