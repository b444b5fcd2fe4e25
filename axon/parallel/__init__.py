"""Every collective of a training step lives in this package.

grid.py          Grid: the rank's coordinates and every process group of the five axes
groups.py        how those groups are created (one split per axis, not one call per group)
comm.py          the raw collectives (skipped on axes of size 1) and their autograd pairs
trace.py         the record of every collective of a step (metrics, Chrome trace)
flight.py        the flight recorder: this rank's recent collectives (and AXON_FAULT's injected faults)
flight_record.py the file a hang leaves in OUT_DIR/flight: written by the watchdog, read by diagnose
sharding.py      how a parameter's global tensor maps onto a rank (row/col blocks, depth slices)
linear.py        TensorParallelLinear: depth all-gather, GEMM, all-reduce over the split axis
embedding.py     VocabParallelEmbedding
cross_entropy.py vocab-parallel cross-entropy (no rank holds full logits)
norm.py          RMSNorm with statistics all-reduced over the sharded hidden dimension
grads.py         the gradient rule of each parameter kind, and exact global-norm clipping
overlap.py       the overlap switches (OAR, ORS) and the reductions they leave in flight
prefetch.py      OAG: depth all-gathers issued ahead, in the order the step runs them
data_parallel.py gradient buckets reduced over data and depth while backward runs
pipeline.py      1F1B over the pipe axis; p2p.py its batched sends and receives
flight.py        what each rank records of its collectives, for diagnosing a hang
full_tensor.py   full-tensor gathers for checks and export (never on the training path)

The replay that checks pipeline point-to-point orders under NCCL's rules is torch-free and
lives beside the schedule it checks: axon.spec.deadlock_check.
"""
