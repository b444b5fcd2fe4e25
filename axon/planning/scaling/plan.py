"""A study's points priced by perfmodel: layout, step time, TFLOP/s per GPU, MFU, efficiency.

Scaling efficiency against the first point is the ratio of useful work per GPU per second,
    efficiency = (W_n / (g_n t_n)) / (W_1 / (g_1 t_1))     (W: model FLOPs per step),
which is t_1 / t_n for a weak study whose work per GPU stays the same, and
(t_1 g_1) / (t_n g_n) for a strong one (W fixed). A weak series whose model grows faster or
slower than its GPUs is corrected by its work per GPU, so the figure stays "share of the
first point's throughput per GPU".
"""

from __future__ import annotations

from dataclasses import dataclass

from axon.spec.layout_rules import find_layout_problem
from axon.spec.flops import flops_per_token
from axon.spec.layout import sizes_text
from perfmodel.machine import Machine, ProfileError, load_machine
from axon.spec.parameters import whole_model_parameters
from perfmodel.predict import Prediction, predict
from perfmodel.search import search

from axon.planning.scaling.study import Point, Study


@dataclass
class PointPlan:
    point: Point
    machine: Machine | None
    flops_per_step: float
    prediction: Prediction | None  # None when the point has a problem
    problem: str  # one sentence, empty when the point can run
    efficiency: float | None = None  # predicted, against the first point

    def to_dict(self) -> dict:
        p = self.prediction
        out = {"name": self.point.name, "model": self.point.model_name, "gpus": self.point.gpus,
               "nodes": nodes(self.point.gpus, self.machine) if self.machine else None,
               "layout": None, "step_time_s": None, "tflops_per_gpu": None, "mfu": None,
               "memory_gb_per_gpu": None, "efficiency": self.efficiency, "problem": self.problem}
        if p is not None:
            out.update(layout={**p.layout.sizes(), "order": ",".join(p.layout.order)}, step_time_s=p.step_time_s,
                       tflops_per_gpu=p.tflops_per_gpu, mfu=p.mfu, memory_gb_per_gpu=p.memory_gb_per_gpu,
                       micro_batch=p.micro_batch, micro_batches=p.micro_batches, breakdown=dict(p.breakdown))
        return out


def efficiency(flops_first: float, gpus_first: int, time_first: float,
               flops: float, gpus: int, time: float) -> float:
    """Throughput per GPU against the first point's (see the module docstring)."""
    return (flops / (gpus * time)) / (flops_first / (gpus_first * time_first))


def nodes(gpus: int, machine: Machine) -> int:
    return -(-gpus // machine.devices_per_node)


def node_problem(gpus: int, machine: Machine) -> str:
    """A point must fill whole nodes, or be a part of one node (a divisor of its devices)."""
    per_node = machine.devices_per_node
    if gpus % per_node == 0 or per_node % gpus == 0:
        return ""
    return (f"gpus={gpus} is not a multiple of the {per_node} devices per node of machine {machine.name!r} "
            f"(nor a part of one node)")


def plan_point(study: Study, point: Point, machine: Machine) -> tuple[Prediction | None, str]:
    """The point's prediction at its layout (or perfmodel's best), or the one reason it cannot run."""
    problem = node_problem(point.gpus, machine)
    if problem:
        return None, problem
    setup = study.setup(point)
    if point.layout is None:
        result = search(point.shape, point.gpus, machine, setup, top=1)
        if not result.predictions:
            reasons = "; ".join(f"{n} by {why}" for why, n in result.ruled_out.items())
            return None, f"no layout of {point.gpus} GPUs divides this model and batch ({reasons})"
        prediction = result.predictions[0]
        if not prediction.fits:
            return prediction, f"no layout fits in memory; the fastest, {sizes_text(prediction.layout)}, " \
                               f"{prediction.why_not}"
        return prediction, ""
    rule = find_layout_problem(point.shape, point.layout, setup.global_batch, setup.micro_batch)
    if rule:
        return None, f"layout {sizes_text(point.layout)}: {rule.sentence}"
    prediction = predict(point.shape, point.layout, machine, setup)
    if not prediction.fits:
        return prediction, f"layout {sizes_text(point.layout)} does not fit in memory: {prediction.why_not}"
    return prediction, ""


def plan_study(study: Study) -> list[PointPlan]:
    machines: dict[str, Machine] = {}
    plans = []
    for point in study.points:
        flops = flops_per_token(point.shape, study.seq_len) * study.point_batch(point) * study.seq_len
        machine = None
        try:
            if point.machine not in machines:
                machines[point.machine] = load_machine(point.machine)
            machine = machines[point.machine]
            machine.peak_flops(study.dtype)  # a profile without this dtype's peak cannot price the point
        except ProfileError as err:
            plans.append(PointPlan(point, machine, flops, None, str(err)))
            continue
        prediction, problem = plan_point(study, point, machine)
        plans.append(PointPlan(point, machine, flops, prediction, problem))
    set_efficiencies(plans)
    return plans


def set_efficiencies(plans: list[PointPlan]) -> None:
    """Each point's predicted efficiency against the first point's (none when either cannot run)."""
    first = plans[0]
    for entry in plans:
        entry.efficiency = None
        if not first.problem and not entry.problem:
            entry.efficiency = efficiency(first.flops_per_step, first.point.gpus, first.prediction.step_time_s,
                                          entry.flops_per_step, entry.point.gpus, entry.prediction.step_time_s)


def problems(plans: list[PointPlan]) -> list[str]:
    """One sentence per point that cannot run."""
    return [f"point {p.point.name} ({p.point.gpus} GPU{'s' if p.point.gpus > 1 else ''}): {p.problem}"
            for p in plans if p.problem]


def plan_table(study: Study, plans: list[PointPlan]) -> str:
    """A markdown table of the plan."""
    batch = (f"{study.batch_per_gpu} sequences per GPU" if study.kind == "weak"
             else f"global batch {study.global_batch}")
    lines = [f"{study.kind} scaling study {study.name}: {batch} x {study.seq_len} tokens, {study.dtype}, "
             f"recompute {study.recompute}", "",
             "| point | model | params | GPUs | nodes | layout | step s | TFLOP/s/GPU | MFU | GiB/GPU | efficiency |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in plans:
        p, point = entry.prediction, entry.point
        params = _count(whole_model_parameters(point.shape))
        node_count = nodes(point.gpus, entry.machine) if entry.machine else "?"
        if entry.problem or p is None:
            lines.append(f"| {point.name} | {point.model_name} | {params} | {point.gpus} | {node_count} | "
                         f"cannot run: {entry.problem} | | | | | |")
            continue
        lines.append(f"| {point.name} | {point.model_name} | {params} | {point.gpus} | {node_count} | "
                     f"{sizes_text(p.layout)} | {p.step_time_s:.4g} | {p.tflops_per_gpu:.4g} | {p.mfu:.1%} | "
                     f"{p.memory_gb_per_gpu:.3g} | {entry.efficiency:.1%} |")
    return "\n".join(lines)


def _count(parameters: int) -> str:
    return f"{parameters / 1e9:.1f}B" if parameters >= 1e9 else f"{parameters / 1e6:.1f}M"
