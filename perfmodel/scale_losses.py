"""What a step on thousands of GPUs loses that the same step on a few does not.

Synchronous training waits for every GPU at every step, so the job runs at the pace of its
slowest GPU. Identical GPUs of one machine do not run alike: Sinha et al., "Not All GPUs Are
Created Equal: Characterizing Variability in Large-Scale, Accelerator-Rich Systems", SC22
(https://arxiv.org/abs/2208.11035), measured over 90% of the GPUs of Summit, Vortex,
Frontera, Longhorn and Corona and found an 8% average performance variation across the GPUs
of a cluster (22% at most), with outliers up to 1.5x slower than the median GPU. Taking a
cluster's variation V as the range of normally distributed speeds over its N_c GPUs
(V = 2 sigma z(N_c), z(n) = sqrt(2 ln n), the expected largest of n standard normals to
first order), a job on N GPUs waits for one sigma z(N) below the median:

    slowest_gpu_factor(N) = 1 + V / 2 * z(N) / z(N_c)

so 64 GPUs of a V = 8% machine measured over 27,648 run 2.6% slower than the median GPU and
32,768 run 4.0% slower. Outliers are not priced: the source gives their size, not how often
they occur. A profile sets V and N_c (gpu_speed_variation, variation_measured_over_gpus);
without them the term is zero.
"""

from __future__ import annotations

import math


def expected_max_z(n: int) -> float:
    """How many standard deviations the largest of n normal draws lies above their mean (first order)."""
    return math.sqrt(2 * math.log(n)) if n > 1 else 0.0


def slowest_gpu_factor(gpus: int, variation: float, measured_over: int) -> float:
    """How much longer the slowest of `gpus` GPUs takes than the median one, as a factor."""
    if variation <= 0 or measured_over < 2:
        return 1.0
    return 1.0 + variation / 2 * expected_max_z(gpus) / expected_max_z(measured_over)
