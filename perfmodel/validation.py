"""Is perfmodel right on a machine? The bookkeeping of a validation run, without the measuring.

benchmarks/perfmodel_validation.py calibrates a profile and times one step of every layout of
N ranks (torch, spawned ranks); this module chooses the layouts, takes the machine's drift
between spawns out of the times, and scores the profile's predictions against them: Kendall
tau and Spearman rank correlations, mean absolute percentage error, the worst error, the
layouts off by more than 25%, and the top-1 regret (measured time of the predicted best / the
measured best). The 25% line is a reporting threshold chosen for the table (not a
measured figure): a layout off by more than a quarter would mislead a plan's ranking.

Its results file holds the latest run: per world the commit that measured it, its profile's
path and the scores. Earlier runs live in the history beside it (`history_of`), a list of
runs oldest first, each world's profile embedded as YAML (`profile_yaml`), so any run can be
predicted again (`repredict`) after the profile files were recalibrated.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Callable

import yaml

from axon.spec.layout import AXES, Layout, factorizations
from axon.spec.shapes import ModelShape
from axon.spec.training import TrainingSetup
from perfmodel.machine import Machine, load_machine, machine_from_dict
from perfmodel.predict import predict
from perfmodel.search import layout_problem


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Tau-b: concordant minus discordant pairs over the pairs not tied in either."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    n_x = concordant + discordant + ties_x
    n_y = concordant + discordant + ties_y
    return (concordant - discordant) / (n_x * n_y) ** 0.5 if n_x and n_y else 0.0


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def layouts_for(shape: ModelShape, world: int, setup: TrainingSetup):
    """Every layout the model divides, pure data parallelism (the anchor of `measure`) first."""
    layouts = [lay for lay in factorizations(world, AXES) if layout_problem(shape, lay, setup) is None]
    return sorted(layouts, key=lambda lay: lay.data != world)


def measure(world: int, spec: dict, group: int,
            measure_group: Callable[[int, dict], list[list[float]]]) -> tuple[list[list[float]], list[float]]:
    """Timed steps per layout (each spawn's first round, its warm-up, dropped), and the factor
    each layout's times are scaled by. `measure_group(world, spec)` runs one spawn: every round
    of every layout in spec["layouts"], its step times per layout.

    The anchor (pure data parallelism, the first layout) runs in every spawn, with consecutive
    groups of near-equal size of the others, at most `group` layouts per spawn in all; its
    times are those of every spawn. The machine drifts between spawns (one spawn of a run here
    ran 15% slow), so a spawn's times are scaled by the anchor's median over all spawns / its
    median in this spawn."""
    anchor, others = spec["layouts"][0], spec["layouts"][1:]
    spawns = -(-len(others) // max(1, group - 1))
    bounds = [len(others) * k // spawns for k in range(spawns + 1)]
    runs = [[times[1:] for times in measure_group(world, {**spec, "layouts": [anchor] + others[start:end]})]
            for start, end in zip(bounds, bounds[1:])]
    anchor_medians = [statistics.median(run[0]) for run in runs]
    reference = statistics.median(anchor_medians)
    anchor_times = [t for run in runs for t in run[0]]
    timed = [anchor_times] + [times for run in runs for times in run[1:]]
    scales = [reference / statistics.median(anchor_times)] + [reference / anchor_median
                                                              for anchor_median, run in zip(anchor_medians, runs)
                                                              for _ in run[1:]]
    return timed, scales


def score(machine: Machine, shape: ModelShape, setup: TrainingSetup, layouts, timed,
          scales: list[float] | None = None) -> dict:
    """Predictions from the profile alone next to the measured step times (warm-up dropped),
    each layout's median times its spawn's drift factor (`measure`; runs without one: 1)."""
    rows = []
    for lay, times, scale in zip(layouts, timed, scales or [1.0] * len(layouts)):
        prediction = predict(shape, lay, machine, setup)
        rows.append({"layout": {a: getattr(lay, a) for a in AXES}, "predicted_s": prediction.step_time_s,
                     "measured_s": statistics.median(times) * scale, "raw_s": times, "drift_scale": scale,
                     "biggest_cost": prediction.biggest_cost, "breakdown": prediction.breakdown})
    predicted = [r["predicted_s"] for r in rows]
    measured = [r["measured_s"] for r in rows]
    pick = min(range(len(rows)), key=predicted.__getitem__)
    # What each whole-machine figure of the profile contributes: the same scores without it.
    without = {}
    for key in ("in_context_slowdown", "oversubscription"):
        plain = dataclasses.replace(machine, **{key: 1.0})
        guess = [predict(shape, lay, plain, setup).step_time_s for lay in layouts]
        without[f"{key}=1"] = {"kendall_tau": kendall_tau(guess, measured), **errors(guess, measured)}
    return {
        "layouts": len(rows), "rows": rows,
        "kendall_tau": kendall_tau(predicted, measured), "spearman": spearman(predicted, measured),
        **errors(predicted, measured),
        "top1_regret": measured[pick] / min(measured), "predicted_best": rows[pick]["layout"],
        "measured_best": rows[min(range(len(rows)), key=measured.__getitem__)]["layout"],
        "without": without,
    }


def errors(predicted: list[float], measured: list[float]) -> dict:
    ratios = [p / m - 1 for p, m in zip(predicted, measured)]
    return {"mape": statistics.fmean(abs(r) for r in ratios), "worst_error": max(ratios, key=abs),
            "over_25_percent": sum(abs(r) > 0.25 for r in ratios)}


# What a world's result keeps when it is predicted again: its measurement and its profile.
MEASURED = ("world", "commit", "profile", "profile_file", "profile_yaml")


def repredict(old: dict, shape: ModelShape, setup: TrainingSetup, root: Path) -> dict:
    """A world's result predicted again by the current code from its measured times and profile
    (a path from `root`, or embedded)."""
    layouts = [Layout(**row["layout"]) for row in old["rows"]]
    return {**{key: old[key] for key in MEASURED if key in old},
            **score(profile_of(old, root), shape, setup, layouts, [row["raw_s"] for row in old["rows"]],
                    [row.get("drift_scale", 1.0) for row in old["rows"]])}


def profile_of(world_result: dict, root: Path) -> Machine:
    """A kept run's profile is embedded (profile_yaml); the latest run's lies in `profile`."""
    if "profile_yaml" in world_result:
        return machine_from_dict(yaml.safe_load(world_result["profile_yaml"]), where=world_result["profile_file"])
    return load_machine(root / world_result["profile"])


def history_of(results: Path) -> Path:
    """Where the earlier runs of `results` are kept: perfmodel_validation_history.json beside it."""
    return results.with_name(f"{results.stem}_history.json")


def keep_in_history(results: Path, root: Path) -> bool:
    """Append the run in `results` to its history, its profiles' YAML embedded (the next
    calibration overwrites the files; their paths are from `root`), unless the history already
    ends with it (a measurement that stopped half-way left it in place). True if appended."""
    if not results.exists():
        return False
    run = json.loads(results.read_text())
    for world in run["worlds"]:
        profile = root / world.get("profile", "")
        if "profile_yaml" not in world and profile.is_file():
            world["profile_file"] = world.pop("profile")
            world["profile_yaml"] = profile.read_text()
    history = history_of(results)
    runs = json.loads(history.read_text()) if history.exists() else []
    if runs and _measured(runs[-1]) == _measured(run):
        return False
    history.write_text(json.dumps(runs + [run], indent=1))
    return True


def _measured(run: dict) -> dict:
    return {**run, "worlds": [{k: v for k, v in w.items() if not k.startswith("profile")} for w in run["worlds"]]}
