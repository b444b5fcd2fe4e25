"""`python -m axon dry-run CONFIG --world N [--ranks R,...] [--set KEY=VALUE]... [--json]`.

Builds what rank R of N builds in a real run, on meta tensors under torch's fake process
group, runs a step, and prints its memory and collectives beside perfmodel's prediction,
and the strict-NCCL verdict (axon/planning/dry_run/strict.py): exit status 1 if any rank
issued a collective NCCL would refuse or hang on. With a machine (--machine, or layout_machine
with layout: auto), each rank's peak memory against the device's (verdict.py): exit status 2
if one does not fit.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from axon.planning.dry_run.compare import (MEMORY_KEYS, by_axis, collective_rows, percent, perfmodel_collectives,
                                  perfmodel_memory)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m axon dry-run", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config (see axon/configs/)")
    parser.add_argument("--world", type=int, required=True, help="number of ranks of the run to rehearse")
    parser.add_argument("--ranks", default="", help="comma-separated ranks to build (default: the first and "
                                                    "last rank of each distinct pipeline stage, and a partner of "
                                                    "each first rank along every other axis)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, dotted for nesting (repeatable)")
    parser.add_argument("--machine", default="", help="profile name (perlmutter, frontier, alps, dgx-h100) or YAML: "
                                                      "each rank's peak memory against its device's usable memory, "
                                                      "exit status 2 if one does not fit (default: layout_machine, "
                                                      "with layout: auto)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per rank")
    parser.add_argument("--jobs", type=int, default=0, help="ranks rehearsed at once, each in its own "
                                                            "process (default: one per CPU core)")
    return parser


def resolve_config(path, overrides, world: int):
    """The config with its layout checked against `world` (layout: auto planned with its named
    profile); raises ConfigError with one sentence."""
    from axon.planning import auto_layout
    from axon.config import ConfigError, load_config

    if world < 1:
        raise ConfigError(f"--world must be at least 1, got {world}")
    return auto_layout.choose_from_named_profile(load_config(path, overrides), world,
                                                 "for a dry run: there is no allocation to calibrate on")


def stage_plan(config) -> list[tuple[int, bool, bool]]:
    """(blocks, first, last) of every pipeline stage, as the model builds them."""
    from axon.model.stages import stage_layers

    p = config.layout.pipe
    return [(len(r), s == 0, s == p - 1) for s, r in enumerate(stage_layers(config.model, p, config.train.stage_layers))]


def _distinct_stages(config) -> list[int]:
    """The first pipeline stage of each distinct kind (blocks, first, last)."""
    seen, stages = set(), []
    for stage, kind in enumerate(stage_plan(config)):
        if kind not in seen:
            seen.add(kind)
            stages.append(stage)
    return stages


def default_ranks(config) -> list[int]:
    """The first and the last rank of each distinct stage (blocks, first, last)."""
    layout = config.layout
    lowest = {axis: 0 for axis in layout.sizes()}
    highest = {axis: size - 1 for axis, size in layout.sizes().items()}
    ranks = [layout.rank_of({**corner, "pipe": stage}) for stage in _distinct_stages(config) for corner in (lowest, highest)]
    return sorted(dict.fromkeys(ranks))


def partner_ranks(config) -> list[int]:
    """For the first rank of each distinct stage, the last rank of its group along each other
    axis of size > 1 (sharing that group with it): what the strict-NCCL check compares."""
    layout = config.layout
    ranks = []
    for stage in _distinct_stages(config):
        lowest = {**{axis: 0 for axis in layout.sizes()}, "pipe": stage}
        ranks += [layout.rank_of({**lowest, axis: size - 1}) for axis, size in layout.sizes().items()
                  if axis != "pipe" and size > 1]
    return ranks


def parse_ranks(text: str, world: int) -> list[int]:
    from axon.config import ConfigError

    try:
        ranks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--ranks must be comma-separated integers, got {text!r}") from None
    outside = [r for r in ranks if not 0 <= r < world]
    if outside:
        raise ConfigError(f"--ranks {outside[0]} is outside the world of {world} ranks (0 to {world - 1})")
    return ranks


def rehearse(config, rank: int) -> dict:
    """One rank's dry run beside perfmodel's prediction, as the JSON object `--json` prints."""
    from axon.planning.dry_run.rank import run_rank

    started = time.perf_counter()
    built = run_rank(config, rank)
    stage = (built["blocks"], built["first"], built["last"])
    predicted = perfmodel_memory(config, *stage, built["stage"])
    rows = collective_rows(built["collectives"], perfmodel_collectives(config, *stage))
    traced_bytes, predicted_bytes = (sum(r["bytes"] * r[f] for r in rows) for f in ("count", "perfmodel_count"))
    return {
        "rank": rank, "coords": built["coords"], "stage": built["stage"], "blocks": built["blocks"],
        "memory_bytes": built["memory"], "perfmodel_memory_bytes": predicted,
        "memory_diff_percent": {k: percent(built["memory"][k], predicted[k]) for k in (*MEMORY_KEYS, "total")},
        "micro_batches": built["micro_batches"], "rehearsed_micro_batches": built["rehearsed_micro_batches"],
        "in_flight": built["in_flight"],
        "collectives": rows,
        "collectives_agree": all(r["count"] == r["perfmodel_count"] for r in rows),
        "collective_bytes": traced_bytes, "perfmodel_collective_bytes": predicted_bytes,
        "collective_bytes_diff_percent": percent(traced_bytes, predicted_bytes),
        "parameters_on_meta": built["all_meta"], "strict_nccl": built["strict_nccl"],
        "seconds": time.perf_counter() - started,
    }


def _gib(n: float) -> str:
    return f"{n / 2**30:9.3f}"


def _pct(x) -> str:
    return "    -" if x is None else f"{x:+6.1f}%"


def describe(config, result: dict) -> str:
    c = result["coords"]
    lines = [f"rank {result['rank']} (data {c['data']} pipe {c['pipe']} depth {c['depth']} row {c['row']} "
             f"col {c['col']}): stage {result['stage']}, {result['blocks']} blocks, built and stepped in "
             f"{result['seconds']:.1f} s",
             f"  {'memory GiB':18}{'dry run':>9} {'perfmodel':>9} {'diff':>8}"]
    for key in (*MEMORY_KEYS, "total"):
        lines.append(f"  {key:18}{_gib(result['memory_bytes'][key])} {_gib(result['perfmodel_memory_bytes'][key])} "
                     f"{_pct(result['memory_diff_percent'][key]):>8}")
    traced, predicted = by_axis(result["collectives"], "count"), by_axis(result["collectives"], "perfmodel_count")
    calls = lambda field, op, axis: sum(r[field] for r in result["collectives"]  # noqa: E731
                                        if (r["op"], r["axis"]) == (op, axis))
    lines.append(f"  {'collectives':24}{'calls':>7} {'GiB':>9} {'perfmodel calls':>16} {'GiB':>9}")
    for op, axis in sorted(set(traced) | set(predicted), key=lambda k: (k[1], k[0])):
        lines.append(f"  {op + ' [' + axis + ']':24}{calls('count', op, axis):7d} {_gib(traced[(op, axis)])} "
                     f"{calls('perfmodel_count', op, axis):16d} {_gib(predicted[(op, axis)])}")
    verdict = "every (op, axis, bytes) as often" if result["collectives_agree"] else "DIFFERENT collectives"
    lines.append(f"  inventory vs perfmodel: {verdict}; bytes {_pct(result['collective_bytes_diff_percent'])}")
    return "\n".join(lines)


def rehearse_all(config, ranks: list[int], jobs: int):
    """`rehearse` of each rank, in rank order. Ranks are independent (each its own fake world),
    so with jobs > 1 they run in that many spawned processes (a forked torch may deadlock)."""
    if jobs <= 1 or len(ranks) <= 1:
        yield from (rehearse(config, rank) for rank in ranks)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(ranks)), mp_context=context) as pool:
        yield from pool.map(rehearse, [config] * len(ranks), ranks)


def strict_verdict(results: list[dict]) -> tuple[list[str], str]:
    """Every strict-NCCL violation, one sentence each (the ranks' own, then the groups whose
    sampled members issued different sequences), and a one-line summary. Each result's
    `strict_nccl` becomes its JSON summary, with the group mismatches it takes part in."""
    from axon.planning.dry_run.strict import SMALL_GROUP, compare_groups, summary

    reports = {r["rank"]: r["strict_nccl"] for r in results}
    mismatched, compared = compare_groups(reports)
    sentences = [f"rank {rank}: {v}" for rank, report in reports.items() for v in report["violations"]]
    sentences += [sentence for _, _, sentence in mismatched]
    for r in results:
        mine = [sentence for a, b, sentence in mismatched if r["rank"] in (a, b)]
        r["strict_nccl"] = {**summary(r["strict_nccl"]), "mismatches": mine}
        r["strict_nccl"]["verdict"] = "ok" if not (r["strict_nccl"]["violations"] or mine) else "violations"
    calls = sum(report["collectives"] for report in reports.values())
    checks = (f"{calls} collectives on {len(reports)} rank(s): device tensors only, point-to-point batched, no "
              f"gather or object collective over more than {SMALL_GROUP} ranks; {compared} group(s) with 2+ sampled "
              f"members issued the same sequence")
    line = (f"strict NCCL: ok ({checks})" if not sentences else
            f"strict NCCL: {len(sentences)} violation(s) (checked {checks.split(':')[0]})")
    return sentences, line


def main(argv=None) -> None:
    # torch's fake process group has no backend object, so c10d warns "No backend of type 0"
    # at every hook check (over a hundred lines a run); C++ reads this before torch starts in
    # this process and in the rehearsal processes spawned below. A user's own setting wins.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    from axon.config import ConfigError

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    from axon.planning.dry_run import verdict
    from perfmodel.machine import ProfileError

    try:
        config, choice = resolve_config(args.config, args.overrides, args.world)
        ranks = (parse_ranks(args.ranks, args.world) if args.ranks else
                 sorted(set(default_ranks(config)) | set(partner_ranks(config))))
        try:
            machine = verdict.machine_for(args.machine, config)
        except ProfileError as err:
            raise ConfigError(f"--machine {args.machine or config.layout_machine!r}: {err}") from None
    except ConfigError as err:
        print(f"axon dry-run: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    if not args.json:
        how = f"layout: auto on {choice.machine_name} -> " if choice else "layout "
        print(f"axon dry-run: {config.model_name} on {args.world} ranks, {how}{config.layout}; "
              f"ranks {', '.join(map(str, ranks))}", flush=True)
    results = []
    for result in rehearse_all(config, ranks, args.jobs or os.cpu_count() or 1):
        result["memory_verdict"] = verdict.memory_verdict(result, machine) if machine else None
        results.append(result)
        if not args.json:
            print(describe(config, result), flush=True)
    violations, strict_line = strict_verdict(results)
    too_full = verdict.summary(results) if machine else None
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(strict_line)
        for sentence in violations:
            print(f"  {sentence}")
        if machine:
            for result in results:
                print(verdict.verdict_line(result))
        else:
            print(verdict.NO_MACHINE)
        print(f"axon dry-run: {len(ranks)} rank(s) in {time.perf_counter() - started:.1f} s; no weight was "
              f"allocated (every parameter on the meta device: {all(r['parameters_on_meta'] for r in results)})",
              flush=True)
    if violations:
        print(f"axon dry-run: {strict_line}", file=sys.stderr)
        for sentence in violations:
            print(f"axon dry-run: {sentence}", file=sys.stderr)
    if too_full:
        print(f"axon dry-run: error: {too_full}", file=sys.stderr)
    if violations or too_full:
        sys.exit(1 if violations else 2)
