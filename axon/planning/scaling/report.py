"""A study's runs against its plan: results.csv, results.json, results.md and PNG plots.

Each point's STUDY_DIR/points/NAME/metrics.jsonl (one line per step, axon.runtime.metrics) gives
the median step time over the steps after `warmup_steps`, TFLOP/s per GPU (the study's model
FLOPs per step, as the plan counts them, over that median and the GPUs), MFU against the
profile's peak and the peak memory any step logged. A point with no metrics is "failed" (or
"not run" when it has no config either); one with fewer steps than the study's is "unfinished".
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from axon.runtime.metrics import read_metrics
from axon.spec.layout import Layout, sizes_text
from perfmodel.predict import COMPONENTS, predict

from axon.planning.scaling.plan import PointPlan, efficiency, plan_study, set_efficiencies
from axon.planning.scaling.study import Study


@dataclass
class Measured:
    status: str  # ok, unfinished, failed, not run
    steps: int = 0
    step_time_s: float | None = None
    tflops_per_gpu: float | None = None
    mfu: float | None = None
    peak_memory_gb: float | None = None
    efficiency: float | None = None


def measure_point(study: Study, entry: PointPlan, point_dir: Path) -> Measured:
    metrics = point_dir / "metrics.jsonl"
    if not metrics.is_file():
        return Measured("failed" if (point_dir / "config.yaml").is_file() else "not run")
    rows = read_metrics(metrics)
    steady = [r for r in rows if r.get("step", 0) > study.warmup_steps]
    if not steady:
        return Measured("failed" if _exited_badly(point_dir) else "unfinished", len(rows))
    median = statistics.median(r["step_time_s"] for r in steady)
    tflops = entry.flops_per_step / median / entry.point.gpus / 1e12
    peak = entry.machine.peak_tflops[study.dtype] if entry.machine else 0.0
    memory = [r["peak_memory_gb"] for r in rows if "peak_memory_gb" in r]
    status = "ok" if len(rows) >= study.steps else ("failed" if _exited_badly(point_dir) else "unfinished")
    return Measured(status, len(rows), median, tflops, tflops / peak if peak else None, max(memory, default=None))


def _exited_badly(point_dir: Path) -> bool:
    code = point_dir / "exit_code"
    return code.is_file() and code.read_text().strip() != "0"


def ran_layout(point_dir: Path) -> Layout | None:
    """The layout a point's config.yaml names (the one it ran at), or None."""
    try:
        return Layout.from_mapping(yaml.safe_load((point_dir / "config.yaml").read_text())["layout"])
    except (OSError, KeyError, TypeError, ValueError, AttributeError):
        return None


def collect(study: Study, directory: Path) -> list[tuple[PointPlan, Measured]]:
    plans = plan_study(study)
    for entry in plans:  # predict at the layout each point ran at, should today's plan pick another
        layout = ran_layout(directory / "points" / entry.point.name)
        if entry.prediction and layout and layout != entry.prediction.layout and not entry.problem:
            entry.prediction = predict(entry.point.shape, layout, entry.machine, study.setup(entry.point))
    set_efficiencies(plans)
    results = [(entry, measure_point(study, entry, directory / "points" / entry.point.name)) for entry in plans]
    first_plan, first = results[0]
    for entry, measured in results:
        if first.step_time_s and measured.step_time_s:
            measured.efficiency = efficiency(first_plan.flops_per_step, first_plan.point.gpus, first.step_time_s,
                                             entry.flops_per_step, entry.point.gpus, measured.step_time_s)
    return results


def rows(results) -> list[dict]:
    out = []
    for entry, m in results:
        p = entry.prediction
        out.append({"point": entry.point.name, "model": entry.point.model_name, "gpus": entry.point.gpus,
                    "layout": sizes_text(p.layout) if p else "", "status": m.status, "steps": m.steps,
                    "step_time_s": m.step_time_s, "predicted_step_time_s": p.step_time_s if p else None,
                    "tflops_per_gpu": m.tflops_per_gpu, "predicted_tflops_per_gpu": p.tflops_per_gpu if p else None,
                    "mfu": m.mfu, "predicted_mfu": p.mfu if p else None, "peak_memory_gb": m.peak_memory_gb,
                    "predicted_memory_gb": p.memory_gb_per_gpu if p else None, "efficiency": m.efficiency,
                    "predicted_efficiency": entry.efficiency})
    return out


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(study: Study, table: list[dict]) -> str:
    lines = [f"{study.kind} scaling study {study.name}: median step after {study.warmup_steps} warm-up steps "
             f"(of {study.steps}); predicted by perfmodel at the same layout", "",
             "| point | GPUs | layout | status | step s | predicted | TFLOP/s/GPU | predicted | MFU | peak GiB "
             "| efficiency | predicted |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['point']} | {r['gpus']} | {r['layout']} | {r['status']} | {_fmt(r['step_time_s'], '.4f')} "
                     f"| {_fmt(r['predicted_step_time_s'], '.4f')} | {_fmt(r['tflops_per_gpu'], '.4f')} "
                     f"| {_fmt(r['predicted_tflops_per_gpu'], '.4f')} | {_fmt(r['mfu'], '.1%')} "
                     f"| {_fmt(r['peak_memory_gb'], '.2f')} | {_fmt(r['efficiency'], '.1%')} "
                     f"| {_fmt(r['predicted_efficiency'], '.1%')} |")
    missing = [f"{r['point']} ({r['status']})" for r in table if r["status"] != "ok"]
    if missing:
        lines += ["", f"Not measured in full: {', '.join(missing)}."]
    return "\n".join(lines)


def report(study: Study, directory: Path, out: Path) -> int:
    results = collect(study, directory)
    table = rows(results)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    (out / "results.json").write_text(json.dumps(
        [{**r, "predicted_breakdown_s": dict(e.prediction.breakdown) if e.prediction else None}
         for r, (e, _) in zip(table, results)], indent=1))
    text = markdown(study, table)
    (out / "results.md").write_text(text + "\n")
    plots = plot(study, results, out)
    print(text)
    print(f"\nwrote {out / 'results.csv'}, results.json, results.md, {', '.join(p.name for p in plots)}")
    return 0 if all(r["status"] == "ok" for r in table) else 1


def plot(study: Study, results, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpus = [e.point.gpus for e, _ in results]
    labels = [e.point.name for e, _ in results]
    paths = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)

    fig, ax = plt.subplots(figsize=(6, 4))
    for values, label, style in (([m.efficiency for _, m in results], "measured", "o-"),
                                 ([e.efficiency for e, _ in results], "predicted (perfmodel)", "s--")):
        xs = [g for g, v in zip(gpus, values) if v is not None]
        ax.plot(xs, [v for v in values if v is not None], style, label=label)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xscale="log", xlabel="GPUs (ranks)", ylabel="scaling efficiency", title=f"{study.name} ({study.kind})")
    ax.set_xticks(gpus, [str(g) for g in gpus])
    ax.set_xticks([], minor=True)  # no 3x10^0 between the points
    ax.legend()
    save(fig, "efficiency.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = range(len(results))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [m.tflops_per_gpu or 0 for _, m in results], width, label="measured")
    ax.bar([x + width / 2 for x in xs], [e.prediction.tflops_per_gpu if e.prediction else 0 for e, _ in results],
           width, label="predicted")
    for x, (_, m) in zip(xs, results):
        if m.status != "ok":
            ax.annotate(m.status, (x - width / 2, 0), rotation=90, va="bottom", ha="center", fontsize=8)
    ax.set_xticks(list(xs), labels, rotation=30, ha="right")
    ax.set(ylabel="TFLOP/s per GPU", title=f"{study.name}: measured vs predicted")
    ax.legend()
    save(fig, "tflops.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    bottom = [0.0] * len(results)
    for component in COMPONENTS:
        values = [e.prediction.breakdown.get(component, 0.0) if e.prediction else 0.0 for e, _ in results]
        if any(values):
            ax.bar(list(xs), values, bottom=bottom, label=component)
            bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(list(xs), labels, rotation=30, ha="right")
    ax.set(ylabel="predicted step time (s)", title=f"{study.name}: predicted step-time breakdown")
    ax.legend(fontsize=7)
    save(fig, "breakdown.png")
    return paths
