"""Compute kernels used by axon's layers, and the measurements that tune them.

Imports torch only; knows nothing of axon's grid or parallelism.
"""

from axon.kernels.attention import causal_attention
from axon.kernels.peak import measure_gemm_tflops
from axon.kernels.rope import apply_rotary, rotary_tables
from axon.kernels.tune import GemmChoice, GemmTuner

__all__ = ["GemmChoice", "GemmTuner", "apply_rotary", "causal_attention", "measure_gemm_tflops", "rotary_tables"]
