"""A lower bound on a layout's predicted step without a prediction: what the planner prices first.

`predict` costs a few milliseconds a layout, most of it collectives and the pipeline replay;
a plan at scale has thousands of layouts that fit, nearly all far slower than the best. This
bound prices only what does not depend on links or rank order, from pieces shared by many
layouts, so the search (perfmodel.search) can set most layouts aside without predicting them.

The bound is a sum of parts, each no more than the prediction's parts it stands for, so it
stays a bound when the prediction gains other non-negative terms. With m micro-batches, p
stages, C_s stage s's compute per micro-batch (GEMMs, attention, memory passes, launches: what
predict charges as gemm + attention + elementwise, by the same clocks; links enter none of it):
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
* the step's syncs and anything else: at least zero, left out.
Where ranks share cores (oversubscription > 1) a pipeline's stages lend each other cores
and predict shrinks their compute by factors it solves for: there the pipeline part is 0.

What determines a stage's compute is only (row, col, micro-batch, its chunks' blocks, first,
last): data and depth change no GEMM's shape (a depth gather restores the whole weight block)
and pipe only through the stage split. So the parts are cached on that key for one search,
and 6,000 layouts need a few hundred stage prices.
"""

from __future__ import annotations

from axon.spec.layout import Layout
from axon.spec.shapes import ModelShape
from axon.spec.stage_split import balanced_counts
from axon.spec.training import TrainingSetup
from perfmodel.machine import Machine
from perfmodel.predict import OPTIMIZER_OPS, GemmClock, memory_seconds, overhead_seconds
from perfmodel.workload import OPTIMIZER_BYTES_PER_PARAM, micro_batch_work, stage_parameters

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


class StepBound:
    """Lower bounds on `predict`'s step for layouts of one model, machine and setup."""

    def __init__(self, shape: ModelShape, machine: Machine, setup: TrainingSetup):
        self.shape, self.machine, self.setup = shape, machine, setup
        self.clock = GemmClock(machine, setup.dtype)
        self.compute: dict[tuple, float] = {}
        self.parameters: dict[tuple, float] = {}

    def __call__(self, layout: Layout) -> float:
        """No order of `layout` predicts a shorter step (see the module docstring)."""
        micro, count = self.setup.micro_batches(layout.data * layout.depth, layout.pipe)
        split = stages(self.shape, layout)
        total = 0.0
        if layout.pipe == 1 or self.machine.oversubscription <= 1:  # no stage lends compute
            chunks = [[self._chunk_compute(layout, micro, *chunk) for chunk in stage_chunks]
                      for stage_chunks, _, _ in split]
            compute = [sum(stage) for stage in chunks]
            chain = count * compute[-1] + sum(stage[0] for stage in chunks[:-1])
            pipeline = (count - 1) * max(compute) + min(compute)
            if layout.virtual_stages == 1:
                pipeline = max(pipeline, chain)
            else:
                pipeline = max(pipeline, (1 - 1 / count) * chain + min(compute))
            total += pipeline
        local = max(self._local_parameters(layout, sum(chunk[0] for chunk in stage_chunks), first, last)
                    for stage_chunks, first, last in dict.fromkeys(split))
        total += memory_seconds(self.machine, "optimizer", local * OPTIMIZER_BYTES_PER_PARAM) \
            + overhead_seconds(self.machine, OPTIMIZER_OPS)
        return total * ROUNDING

    def _chunk_compute(self, layout: Layout, micro: int, blocks: int, first: bool, last: bool) -> float:
        """Seconds of one micro-batch's compute through one chunk: predict's GEMMs, attention,
        memory passes and launch overhead, before any overlap (compute is never hidden)."""
        key = (layout.row, layout.col, micro, blocks, first, last)
        if key not in self.compute:
            setup = self.setup
            # Only row and col shape a rank's compute: the rest of the layout is set to 1.
            work = micro_batch_work(self.shape, Layout(row=layout.row, col=layout.col), micro, setup.seq_len,
                                    setup.dtype, setup.recompute == "block", blocks, first, last)
            seconds = sum(self.clock.gemm_seconds(g) for g in work.gemms)
            seconds += sum(memory_seconds(self.machine, m.kind, m.nbytes) * m.count for m in work.memory)
            seconds += sum(overhead_seconds(self.machine, ops) for ops in work.ops.values())
            self.compute[key] = seconds
        return self.compute[key]

    def _local_parameters(self, layout: Layout, blocks: int, first: bool, last: bool) -> float:
        key = (layout.row, layout.col, layout.depth, blocks, first, last)
        if key not in self.parameters:
            params = stage_parameters(self.shape, layout, blocks, first, last)
            self.parameters[key] = params["sharded"] + params["replicated"]
        return self.parameters[key]
