"""Re-set a profile's fitted levels against published rows, and leave one source out.

A profile's `fitted_to` names the levels that published runs set (GEMM, attention,
memory-bound efficiency) and the rows that set them. `refit` moves each such level by one
factor on all its curves (the GEMM level scales `gemm_efficiency` and
`gemm_efficiency_by_min_dim` alike) so that the given rows' predicted tokens/s come closest
to the published ones: least squares in log(predicted / published), plus a small pull
towards the shipped level, so that a level the rows cannot tell apart from another stays
where it was. `leave_one_source_out` re-sets the levels without one source's rows at a time
and predicts those rows: how far the profile would be off on a run like them had it not
seen them. (The shipped levels came from a grid search for the best worst-case error, so
re-setting with every row gives factors near, not exactly, 1.)
"""

from __future__ import annotations

import dataclasses
import math

from perfmodel.machine import Machine, load_machine
from perfmodel.published import PUBLISHED, Published, predicted_tokens_per_gpu, role

# The curves each fitted level moves together.
LEVEL_CURVES = {"gemm_efficiency": ("gemm_efficiency", "gemm_efficiency_by_min_dim"),
                "attention_efficiency": ("attention_efficiency",),
                "memory_efficiency": ("memory_efficiency",)}
FACTOR_RANGE = (0.25, 4.0)  # a level is searched within these factors of the shipped one
PULL = 1e-4  # weight of (log factor)^2 against the rows' squared log errors
SWEEPS = 3  # coordinate-descent passes over the levels
TOLERANCE = 1e-3  # golden-section search stops when the bracket of log(factor) is this narrow


def scaled(machine: Machine, factors: dict[str, float]) -> Machine:
    """`machine` with every efficiency of each level's curves times its factor."""
    changes = {}
    for level, factor in factors.items():
        for name in LEVEL_CURVES[level]:
            value = getattr(machine, name)
            if isinstance(value, dict):
                changes[name] = {key: tuple((x, e * factor) for x, e in points) for key, points in value.items()}
            else:
                changes[name] = tuple((x, e * factor) for x, e in value)
    return dataclasses.replace(machine, **changes)


def log_error(row: Published, machine: Machine) -> float:
    return math.log(predicted_tokens_per_gpu(row, machine)[0] / row.tokens_per_gpu)


def refit(machine: Machine, rows: list[Published], levels: tuple[str, ...]) -> dict[str, float]:
    """Each level's factor that fits `rows` best (coordinate descent, golden section per level)."""
    levels = tuple(level for level in levels if getattr(machine, level))  # a profile may lack a curve
    logs = dict.fromkeys(levels, 0.0)

    def objective(trial: dict[str, float]) -> float:
        moved = scaled(machine, {level: math.exp(x) for level, x in trial.items()})
        return sum(log_error(row, moved) ** 2 for row in rows) + PULL * sum(x * x for x in trial.values())

    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(SWEEPS if len(levels) > 1 else 1):
        for level in levels:
            low, high = math.log(FACTOR_RANGE[0]), math.log(FACTOR_RANGE[1])
            a, b = high - ratio * (high - low), low + ratio * (high - low)
            fa, fb = objective({**logs, level: a}), objective({**logs, level: b})
            while high - low > TOLERANCE:
                if fa <= fb:
                    high, b, fb = b, a, fa
                    a = high - ratio * (high - low)
                    fa = objective({**logs, level: a})
                else:
                    low, a, fa = a, b, fb
                    b = low + ratio * (high - low)
                    fb = objective({**logs, level: b})
            logs[level] = (low + high) / 2
    return {level: math.exp(x) for level, x in logs.items()}


def leave_one_source_out(machine_name: str, rows: list[Published] = PUBLISHED) -> list[dict]:
    """Per source of a machine's fit rows: its rows predicted by the levels re-set on the others."""
    machine = load_machine(machine_name)
    fit_rows = [row for row in rows if row.machine == machine_name and role(row, machine)[0] == "fit"]
    levels = tuple(machine.fitted_to)
    out = []
    for source in dict.fromkeys(row.source for row in fit_rows):
        kept = [row for row in fit_rows if row.source != source]
        held = [row for row in fit_rows if row.source == source]
        entry = {"machine": machine_name, "left_out": source.split(",")[0], "rows_left_out": [r.key for r in held],
                 "rows_fitted": [r.key for r in kept]}
        if not kept:
            entry.update(factors=None, errors=None,
                         note="no other source set this profile's levels: without this one they are not identified")
        else:
            factors = refit(machine, kept, levels)
            moved = scaled(machine, factors)
            entry.update(factors=factors, errors={row.key: predicted_tokens_per_gpu(row, moved)[0] / row.tokens_per_gpu - 1
                                                  for row in held})
        out.append(entry)
    return out
