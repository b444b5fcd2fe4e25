"""When no layout of a GPU count fits in memory: how far off the closest one is, and what would fit.

The closest is the layout, among all the model and batch divide, whose fullest stage needs the
least memory (the check `search.fits_in_memory` makes, each stage with the micro-batches its
schedule keeps in flight). What would fit is computed, never guessed:
* the fewest GPUs at which some layout fits, doubling from the count asked for (whole nodes stay
  whole), until a count that no layout divides or MOST_GPUS;
* each setting that alone makes some layout of the count asked for fit (SETTINGS: recompute,
  a micro-batch of 1, bfloat16), or, when none does alone, all of them together.
Interleaved layouts are left out: interleaving only adds activations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from axon.spec.layout import AXES, Layout, factorizations, sizes_text
from axon.spec.layout_rules import find_layout_problem
from axon.spec.shapes import ModelShape
from axon.spec.training import TrainingSetup
from perfmodel.machine import Machine
from perfmodel.search import fits_in_memory, need_gib

MOST_GPUS = 1 << 17  # the largest GPU count tried: past any machine this model describes
# What each setting becomes when it saves memory (a TrainingSetup field and its value).
SETTINGS = (("recompute", "block"), ("micro_batch", 1), ("dtype", "bfloat16"))


@dataclass
class Shortfall:
    """Why nothing of `gpus` fits, and what would."""

    gpus: int
    need_gib: float  # the closest layout's fullest stage, per device
    usable_gib: float
    closest: Layout
    fits_on: int | None  # the fewest GPUs (doubling) at which a layout fits; None: none up to `tried_up_to`
    tried_up_to: int  # the largest GPU count tried
    settings: tuple[tuple[str, object], ...]  # settings that make a layout of `gpus` fit
    together: bool  # `settings` fit only all together, not one by one
    tried: tuple[tuple[str, object], ...]  # the settings of SETTINGS not chosen already

    def to_dict(self) -> dict:
        return {"gpus": self.gpus, "smallest_need_gib": self.need_gib, "usable_gib": self.usable_gib,
                "closest_layout": self.closest.sizes(), "fits_on_gpus": self.fits_on,
                "gpus_tried_up_to": self.tried_up_to, "settings": dict(self.settings),
                "settings_together": self.together}


def dividing_layouts(shape: ModelShape, gpus: int, setup: TrainingSetup, axes: tuple[str, ...] = AXES):
    """Every uninterleaved layout of `gpus` that the model and batch divide."""
    return [layout for layout in factorizations(gpus, axes)
            if not find_layout_problem(shape, layout, setup.global_batch, setup.micro_batch)]


def some_layout_fits(shape: ModelShape, gpus: int, machine: Machine, setup: TrainingSetup,
                     axes: tuple[str, ...] = AXES) -> bool | None:
    """Whether some layout of `gpus` fits; None when the model and batch divide none."""
    layouts = dividing_layouts(shape, gpus, setup, axes)
    if not layouts:
        return None
    return any(fits_in_memory(shape, layout, machine, setup) for layout in layouts)


def fewest_gpus(shape: ModelShape, gpus: int, machine: Machine, setup: TrainingSetup,
                axes: tuple[str, ...] = AXES) -> tuple[int | None, int]:
    """(the fewest GPUs, doubling from `gpus`, at which some layout fits, or None; the largest
    count tried). Halving an axis keeps every divisibility, so past a count no layout divides,
    none does."""
    count = gpus
    while count * 2 <= MOST_GPUS:
        count *= 2
        fits = some_layout_fits(shape, count, machine, setup, axes)
        if fits:
            return count, count
        if fits is None:
            break
    return None, count


def fitting_settings(shape: ModelShape, gpus: int, machine: Machine, setup: TrainingSetup,
                     axes: tuple[str, ...] = AXES) -> tuple[tuple[tuple[str, object], ...], bool]:
    """(the settings of SETTINGS, not already chosen, each of which alone makes a layout of `gpus`
    fit; when none does alone, all of them if together they do, flagged True)."""
    changes = [(name, value) for name, value in SETTINGS if getattr(setup, name) != value]
    alone = tuple((name, value) for name, value in changes
                  if some_layout_fits(shape, gpus, machine, dataclasses.replace(setup, **{name: value}), axes))
    if alone or len(changes) < 2:
        return alone, False
    if some_layout_fits(shape, gpus, machine, dataclasses.replace(setup, **dict(changes)), axes):
        return tuple(changes), True
    return (), False


def shortfall(shape: ModelShape, gpus: int, machine: Machine, setup: TrainingSetup,
              axes: tuple[str, ...] = AXES) -> Shortfall:
    """What is missing for `gpus` (which some layout divides, none fitting) and what would fit."""
    layouts = dividing_layouts(shape, gpus, setup, axes)
    if not layouts:
        raise ValueError(f"no layout of {gpus} GPUs divides this model and batch")
    needs = {layout: need_gib(shape, layout, setup) for layout in layouts}
    closest = min(layouts, key=needs.get)
    fits_on, tried = fewest_gpus(shape, gpus, machine, setup, axes)
    settings, together = fitting_settings(shape, gpus, machine, setup, axes)
    changes = tuple((name, value) for name, value in SETTINGS if getattr(setup, name) != value)
    return Shortfall(gpus, needs[closest], machine.usable_gib, closest, fits_on,
                     tried, settings, together, changes)


def remedy(short: Shortfall, setting_text, unit: str = "GPUs") -> str:
    """`short` in words: what the smallest layout needs against what is usable, and what would fit.
    `setting_text(name, value)` writes a setting as the reader would give it (a flag, a config key)."""
    text = (f"the smallest, {sizes_text(short.closest)}, needs {short.need_gib:.1f} GiB per device, "
            f"{short.usable_gib:.1f} GiB usable")
    settings = [setting_text(name, value) for name, value in short.settings]
    joined = (", ".join(settings[:-1]) + (" and " if short.together else " or ") + settings[-1]
              if len(settings) > 1 else "".join(settings)) + (" together" if short.together else "")
    if short.fits_on is not None:
        text += f"; it would fit on {short.fits_on} {unit}"
        return text + (f" (or on {short.gpus} with {joined})" if settings else "")
    if settings:
        return text + f"; it would fit with {joined}, but on no count of {unit} up to {short.tried_up_to} as it is"
    text += f"; nor would it on any count of {unit} up to {short.tried_up_to}"
    return text + ("" if not short.tried else
                   ", nor with " + " and ".join(setting_text(name, value) for name, value in short.tried))
