"""`python -m axon memorize CONFIG` and `python -m axon memorize-eval CONFIG --checkpoint DIR`.

Both check everything (config, layouts, documents, filler, checkpoint) on every rank before
the ranks meet, so a mistake ends every rank with one sentence instead of a hang.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _fail(rank: int, message: str, command: str = "memorize") -> None:
    from axon.config.errors import error_line

    print(error_line(command, message, rank), file=sys.stderr, flush=True)
    sys.exit(2)


def _parser(name: str, evaluate: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m axon {name}", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="experiment YAML (e.g. axon/configs/memorize_local.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, e.g. --set targets=my_docs.jsonl --set out_dir=runs/mem (repeatable)")
    if not evaluate:
        parser.add_argument("--seeds", type=int, metavar="N",
                            help="run every model x loss over the first N of the config's seeds (more: consecutive "
                                 "ones after them)")
        parser.add_argument("--quick", action="store_true",
                            help="apply the config's quick: overrides (a reduced run, e.g. fewer epochs)")
    if evaluate:
        parser.add_argument("--checkpoint", required=True, help="an axon checkpoint directory (any layout)")
        parser.add_argument("--model", help="which models entry the checkpoint is (default: the first)")
        parser.add_argument("--seed", type=int, help="which of the config's seeds the checkpoint was trained with "
                                                     "(its documents are scored; default: the first)")
        parser.add_argument("--out", help="write the scores as JSON here too")
        parser.add_argument("--acr", action="store_true",
                            help="also the Adversarial Compression Ratio of every target and control (prompt search "
                                 "with the experiment's acr_* budget; with layout.pipe > 1, on the stages folded "
                                 "into depth)")
    return parser


def _start(args):
    """The launch, the experiment and its planned runs, all checked; then the ranks meet."""
    from axon.runtime.bootstrap import detect_launch, init_distributed
    from axon.config import ConfigError, check_init_weights
    from axon.memorize.experiment import load_experiment
    from axon.memorize.runner import plan_runs

    command = "memorize-eval" if getattr(args, "checkpoint", None) else "memorize"
    try:
        launch = detect_launch()
    except ValueError as err:
        _fail(0, str(err), command)
    try:
        experiment = load_experiment(args.config, args.overrides, quick=getattr(args, "quick", False),
                                     seeds=getattr(args, "seeds", None))
        if getattr(args, "model", None):
            chosen = [m for m in experiment.models if m.name == args.model]
            if not chosen:
                raise ConfigError(f"--model {args.model!r} is not one of the config's models "
                                  f"({', '.join(m.name for m in experiment.models)})")
            experiment.models = chosen
        if getattr(args, "checkpoint", None):
            experiment.models, experiment.losses = experiment.models[:1], experiment.losses[:1]
            if args.seed is not None and experiment.seeds and args.seed not in experiment.seeds:
                raise ConfigError(f"--seed {args.seed} is not one of the config's seeds "
                                  f"({', '.join(map(str, experiment.seeds))})")
            experiment.seeds = (args.seed,) if args.seed is not None else experiment.seeds[:1]
        if getattr(args, "acr", False):
            experiment.section.acr = "all"
        evaluates = bool(getattr(args, "checkpoint", None))
        docs, runs = plan_runs(experiment, launch.world_size, lr_probes=not evaluates)  # a checkpoint's lr is moot
        if not evaluates:  # the runs start from their init_from weights: names and shapes checked now
            for init_from in dict.fromkeys(run.config.init_from for run in runs if run.config.init_from):
                check_init_weights(next(run.config for run in runs if run.config.init_from == init_from))
    except ConfigError as err:
        _fail(launch.rank, str(err), command)
    # Rank 0 alone checks the checkpoint (one stat per shard file), or what an earlier attempt of
    # the sweep left (axon.memorize.resume); the others learn its verdict.
    reader, verdict = _checkpoint(args, runs[0].config) if evaluates and launch.rank == 0 else (None, None)
    if not evaluates and launch.rank == 0:
        from axon.memorize.resume import prepare_resume

        reader, verdict = prepare_resume(experiment, runs)  # (each cell's start, the verdict)
    runtime = init_distributed(launch, command=command)
    if evaluates:
        reader = _agree_on_checkpoint(runtime, reader, verdict)
    else:
        reader = _agree_on_resume(runtime, reader, verdict)
    return experiment, docs, runs, reader, runtime


def _agree_on_resume(runtime, starts, verdict):
    """Every rank: each cell's start as rank 0 found it; an error ends every rank with its sentence."""
    from axon.config import ConfigError
    from axon.memorize.resume import agree_on_resume
    from axon.runtime.bootstrap import shutdown

    try:
        return agree_on_resume(runtime, starts, verdict)
    except ConfigError as err:
        from axon.config.errors import error_line

        print(error_line("memorize", str(err), runtime.rank), file=sys.stderr, flush=True)
        shutdown(all_ranks_done=True)
        sys.exit(2)


def _checkpoint(args, config):
    """Rank 0: the checkpoint checked (metadata, model, every shard file's size), and its verdict."""
    from axon.checkpoint import CheckpointReader
    from axon.config import ConfigError

    try:
        reader = CheckpointReader(Path(args.checkpoint))
        reader.check_model(config.model)
        reader.check_files()
    except ConfigError as err:
        return None, {"error": str(err)}
    return reader, {"path": str(reader.path)}


def _agree_on_checkpoint(runtime, reader, verdict):
    """Every rank: rank 0's verdict, and the reader (each rank reads the small meta.json itself);
    an error ends every rank with rank 0's sentence, after meeting once."""
    from axon.checkpoint import CheckpointReader
    from axon.runtime.bootstrap import shutdown
    from axon.runtime.verdict import share_from_rank0

    verdict = share_from_rank0(runtime, "checkpoint", verdict)
    if "error" in verdict:
        from axon.config.errors import error_line

        print(error_line("memorize-eval", verdict["error"], runtime.rank), file=sys.stderr, flush=True)
        shutdown(all_ranks_done=True)
        sys.exit(2)
    return reader or CheckpointReader(verdict["path"])


def memorize_main(argv) -> None:
    from axon.runtime.bootstrap import shutdown
    from axon.memorize.runner import run_sweep
    from axon.runtime.trainer import TrainingDiverged

    from axon.runtime.exit_codes import PREEMPTED
    from axon.runtime.preemption import StopSignal
    from axon.runtime.trainer import Preempted

    args = _parser("memorize", evaluate=False).parse_args(argv)
    experiment, docs, runs, starts, runtime = _start(args)
    done = False
    try:
        if runtime.rank == 0:
            probes = sum(run.probe for run in runs)
            print(f"axon: memorize: {len(runs) - probes} runs ({len(experiment.models)} models x "
                  f"{len(experiment.losses)} losses x {len(experiment.seed_list())} seed(s))"
                  + (f" after {probes} learning-rate probes" if probes else "")
                  + f" on {runtime.world_size} rank(s), device {runtime.device.type}; targets {docs.source}, "
                  f"{len(docs.target_canaries)} canaries; {len(docs.controls)} control documents, "
                  f"{len(docs.control_canaries)} control canaries", flush=True)
        try:
            with StopSignal() as stop:
                run_sweep(experiment, docs, runs, runtime, starts, stop)
        except Preempted as stopped:  # agreed in a step's reductions: every rank is here
            if runtime.rank == 0:
                print(f"axon: memorize: {stop.name} received: stopped after step {stopped.step}, checkpoint "
                      f"{stopped.path}; the same command continues the sweep (exit code {PREEMPTED}: requeue me)",
                      flush=True)
            done = True
            sys.exit(PREEMPTED)
        except TrainingDiverged as err:  # decided on reduced numbers: every rank stops at the same step
            from axon.config.errors import error_line
            from axon.runtime.exit_codes import DIVERGED

            print(error_line("memorize", str(err), runtime.rank), file=sys.stderr, flush=True)
            done = True  # every rank is here, so they can meet before tearing down
            sys.exit(DIVERGED)
        done = True
    finally:
        shutdown(all_ranks_done=done)


def memorize_eval_main(argv) -> None:
    """Scores of one checkpoint on the experiment's targets and controls."""
    from axon import checkpoint
    from axon.runtime.bootstrap import shutdown
    from axon.parallel.grid import Grid
    from axon.memorize.runner import acr_all, evaluate_all
    from axon.runtime.trainer import Trainer

    args = _parser("memorize-eval", evaluate=True).parse_args(argv)
    experiment, docs, runs, reader, runtime = _start(args)
    done = False
    try:
        run = runs[0]
        grid = Grid(run.config.layout, runtime.rank)
        trainer = Trainer(run.config, grid, runtime.device, source=run.stream)
        checkpoint.load(trainer, reader)
        scores, _ = evaluate_all(trainer, docs, run.stream, experiment.section)
        if args.acr and run.acr_layout is None:
            acr_scores, acr_documents = acr_all(trainer.model, grid, runtime.device, docs, experiment.section)
            scores.update(acr_scores, **acr_documents)
        elif args.acr:  # pipeline stages: the stages folded into depth, the checkpoint read resharded
            from axon.memorize.runner import acr_model

            model, acr_grid = acr_model(run, runtime, reader.path)
            acr_scores, acr_documents = acr_all(model, acr_grid, runtime.device, docs, experiment.section)
            scores.update(acr_scores, **acr_documents)
            acr_grid.destroy()
        grid.destroy()
        if runtime.rank == 0:
            record = {"checkpoint": str(reader.path), "model": run.model.name, "step": reader.step, **scores}
            print(json.dumps(record, indent=1), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(record, indent=1))
        done = True
    finally:
        shutdown(all_ranks_done=done)
