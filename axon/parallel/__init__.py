"""Every collective of a training step lives in this package.

comm.py          the raw collectives (skipped on axes of size 1) and their autograd pairs
sharding.py      how a parameter's global tensor maps onto a rank (row/col blocks, depth slices)
linear.py        TensorParallelLinear: depth all-gather, GEMM, all-reduce over the split axis
embedding.py     VocabParallelEmbedding
cross_entropy.py vocab-parallel cross-entropy (no rank holds full logits)
norm.py          RMSNorm with statistics all-reduced over the sharded hidden dimension
grads.py         the gradient rule of each parameter kind, and exact global-norm clipping
gather.py        full-tensor gathers for checks and export
"""
