"""`python -m axon scaling {plan|submit|report} STUDY.yaml`.

plan    each point's layout, predicted step time, TFLOP/s per GPU, MFU and efficiency (--json)
submit  one run per point: Slurm job scripts from launch/ (--launcher slurm) or torchrun here (local)
report  each point's metrics.jsonl against the plan: results.csv, results.json, results.md, PNG plots
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from axon.planning.scaling.study import StudyError, load_study


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m axon scaling", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="predict every point (perfmodel)")
    plan.add_argument("study")
    plan.add_argument("--json", action="store_true", help="a list of objects, one per point")
    submit = commands.add_parser("submit", help="write and start one run per point")
    submit.add_argument("study")
    submit.add_argument("--launcher", choices=("slurm", "local"), required=True)
    submit.add_argument("--dir", help="STUDY_DIR (default runs/scaling/NAME); points write to STUDY_DIR/points/NAME/")
    submit.add_argument("--account", help="Slurm account (overrides slurm.account)")
    submit.add_argument("--partition", help="Slurm partition (overrides slurm.partition)")
    submit.add_argument("--qos", help="Slurm qos (overrides slurm.qos)")
    submit.add_argument("--time", help="Slurm time limit per point, e.g. HH:MM:SS or D-HH:MM (overrides slurm.time)")
    submit.add_argument("--template", help="launch/ script stem or any file to start from (overrides slurm.template, "
                        "which may only name a launch/ script; default: the machine's)")
    submit.add_argument("--timeout", type=float, default=900.0, help="local: seconds one point may run")
    submit.add_argument("--points", help="comma list of point names to run (default: all)")
    report = commands.add_parser("report", help="collect the points' metrics against the plan")
    report.add_argument("study")
    report.add_argument("--dir", help="STUDY_DIR the points ran in (default runs/scaling/NAME)")
    report.add_argument("--out", help="where the results go (default STUDY_DIR)")
    return parser


def study_dir(study, given: str | None) -> Path:
    return Path(given) if given else Path("runs") / "scaling" / study.name


def main(argv: list[str] | None = None) -> None:
    """The entry point axon's dispatcher calls: exits with run's status when it is not 0."""
    code = run(argv)
    if code:
        sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        study = load_study(args.study)
        if args.command == "plan":
            return _plan(study, args.json)
        if args.command == "submit":
            from axon.planning.scaling.submit import submit

            chosen = set(filter(None, (args.points or "").split(","))) or None
            return submit(study, study_dir(study, args.dir), args, chosen)
        from axon.planning.scaling.report import report

        directory = study_dir(study, args.dir)
        return report(study, directory, Path(args.out) if args.out else directory)
    except StudyError as err:
        print(f"axon scaling: error: {err}", file=sys.stderr)
        return 2


def _plan(study, as_json: bool) -> int:
    from axon.planning.scaling.plan import plan_study, plan_table, problems

    plans = plan_study(study)
    if as_json:
        print(json.dumps([entry.to_dict() for entry in plans], indent=1))
    else:
        print(plan_table(study, plans))
    for sentence in problems(plans):
        print(f"axon scaling: error: {sentence}", file=sys.stderr)
    return 2 if problems(plans) else 0
