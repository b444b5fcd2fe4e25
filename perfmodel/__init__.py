"""perfmodel: predicts a training step's time and memory for a layout.

Pure Python + numpy + pyyaml; never imports torch. axon consumes the plain data
defined here (`Layout`, `ModelShape`, the FLOP count) so both sides agree on it.
"""

from perfmodel.flops import flops_per_token
from perfmodel.parameters import matmul_parameters
from perfmodel.layout import AXES, DEFAULT_ORDER, Layout
from perfmodel.models import PRESETS, ModelShape, preset

__all__ = [
    "AXES", "DEFAULT_ORDER", "Layout", "ModelShape", "PRESETS", "preset",
    "flops_per_token", "matmul_parameters",
]
