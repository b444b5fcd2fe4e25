"""`layout: auto`: perfmodel picks the layout at start-up; the run reports how close it was.

The machine profile comes from `layout_machine` (a shipped name or a YAML), else from
OUT_DIR/machine_profile.yaml left by an earlier run, else from a quick calibration on this
allocation (all ranks, a few seconds), saved there for the next run. Every rank plans with
the same profile, so every rank picks the same layout without talking about it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from axon.config import ConfigError, RunConfig, check_layout, training_setup
from axon.spec.layout import AXES, factorizations, sizes_text
from perfmodel.machine import ProfileError, load_machine, machine_from_dict
from perfmodel.predict import Prediction
from perfmodel.search import layout_problem, plan
from perfmodel.suggest import remedy, shortfall

PROFILE_FILE = "machine_profile.yaml"


@dataclasses.dataclass
class LayoutChoice:
    prediction: Prediction
    runner_up: list[Prediction]
    machine_name: str


def profile_before_start(config: RunConfig):
    """The profile to plan with if one exists without measuring (else None: calibrate)."""
    named = config.layout_machine
    cached = Path(config.out_dir) / PROFILE_FILE
    if not named and not cached.is_file():
        return None
    try:
        return load_machine(named or cached)
    except (ProfileError, OSError, yaml.YAMLError) as err:
        raise ConfigError(f"layout_machine={named or str(cached)!r}: {err}") from None


def check_some_layout_fits_the_shape(config: RunConfig, world_size: int) -> None:
    """Before calibrating: at least one layout of the world must divide the model and batch."""
    setup = training_setup(config)
    problems = [layout_problem(config.model, lay, setup) for lay in factorizations(world_size, AXES)]
    if all(problems):
        raise ConfigError(f"layout: auto found no layout of {world_size} ranks for this model and batch "
                          f"(for example {problems[-1]})")


def choose(config: RunConfig, world_size: int, machine) -> tuple[RunConfig, LayoutChoice]:
    """The config with the best predicted layout that fits in memory filled in. Fitting is
    perfmodel plan's check (perfmodel.search.fits_in_memory: the fullest stage, each stage with
    the micro-batches its schedule keeps in flight); when nothing fits, the error says what
    would, as plan's does (perfmodel.suggest)."""
    # The best and three runners-up: the search prices only what can reach the top 4.
    predictions, ruled_out = plan(config.model, world_size, machine, training_setup(config), AXES, top=4)
    fitting = [p for p in predictions if p.fits]
    if not fitting:
        if not predictions:
            raise ConfigError(f"layout: auto found no layout of {world_size} ranks that fits on {machine.name}: "
                              + "; ".join(f"{n} by {r}" for r, n in ruled_out.items()))
        # The same words as `perfmodel plan`'s, with the settings as config keys.
        short = shortfall(config.model, world_size, machine, training_setup(config))
        raise ConfigError(f"layout: auto found no layout of {world_size} ranks that fits in memory on {machine.name}: "
                          + remedy(short, lambda name, value: f"train.{name}={value}", "ranks"))
    best = fitting[0]
    return (dataclasses.replace(config, layout=best.layout),
            LayoutChoice(best, fitting[1:4], machine.name))


def choose_from_named_profile(config: RunConfig, world_size: int, where: str) -> tuple[RunConfig, LayoutChoice | None]:
    """For commands that cannot calibrate (a dry run, a memorization sweep): `layout: auto`
    planned with the config's named profile, then the layout checked against the world."""
    choice = None
    if config.layout_auto:
        machine = profile_before_start(config)
        if machine is None:
            raise ConfigError(f"layout: auto needs layout_machine (a profile name such as frontier, or a YAML) {where}")
        config, choice = choose(config, world_size, machine)
    check_layout(config, world_size)
    return config, choice


def calibrate_here(config: RunConfig, rank: int):
    """Quick calibration on every rank at once; rank 0 saves it; all plan with rank 0's."""
    from axon.parallel.comm import broadcast_object
    from perfmodel.calibrate import run_calibration

    profile = broadcast_object(run_calibration(quick=True), src=0)
    if rank == 0:
        path = Path(config.out_dir) / PROFILE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return machine_from_dict(profile, "calibrated profile")


def describe_choice(choice: LayoutChoice) -> str:
    best = choice.prediction
    lines = [f"axon: layout auto -> {sizes_text(best.layout)}, predicted {best.step_time_s:.3f} s per step on "
             f"{choice.machine_name} ({best.memory_gb_per_gpu:.2f} GiB per rank; biggest cost {best.biggest_cost})"]
    for other in choice.runner_up:
        lines.append(f"axon:   next: {sizes_text(other.layout)}, predicted {other.step_time_s:.3f} s")
    return "\n".join(lines)


def describe_outcome(choice: LayoutChoice, measured_s: float) -> str:
    predicted = choice.prediction.step_time_s
    return (f"axon: layout auto: predicted {predicted:.3f} s per step, measured median {measured_s:.3f} s "
            f"(measured / predicted = {measured_s / predicted:.2f})")


def save_outcome(out_dir: str, choice: LayoutChoice, measured_s: float) -> None:
    """OUT_DIR/layout_auto.json: the pick, its prediction and breakdown, the runners-up, the measurement."""
    import json

    record = {"machine": choice.machine_name, "measured_median_step_s": measured_s,
              "chosen": choice.prediction.to_dict(), "runner_up": [p.to_dict() for p in choice.runner_up]}
    (Path(out_dir) / "layout_auto.json").write_text(json.dumps(record, indent=1))
