"""Command line: `python -m axon train CONFIG [--set KEY=VALUE]...`.

Order matters: the launcher is read from the environment, then the config, layout
and data are checked on every rank, and only then does any communication start, so a
bad input ends every rank with the same one-sentence error instead of a hang.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m axon", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a model with the layout a config names")
    train.add_argument("config", help="YAML config (see axon/configs/)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, dotted for nesting (repeatable), e.g. --set layout.col=2")
    return parser

def _fail(rank: int, message: str) -> None:
    print(f"axon: error (rank {rank}): {message}", file=sys.stderr, flush=True)
    sys.exit(2)

def train_command(args) -> None:
    from axon.bootstrap import detect_launch, init_distributed, shutdown
    from axon.config import ConfigError, check_layout, load_config
    from axon.data import token_source

    try:
        launch = detect_launch()
    except ValueError as err:
        _fail(0, str(err))
    try:
        config = load_config(args.config, args.overrides)
        check_layout(config, launch.world_size)
        source = token_source(config)
    except ConfigError as err:
        _fail(launch.rank, str(err))

    from axon.grid import Grid
    from axon.metrics import MetricsLog
    from axon.parallel.comm import world_barrier, world_mean
    from axon.train import Trainer, describe
    from kernels import measure_gemm_tflops

    runtime = init_distributed(launch)
    try:
        grid = Grid(config.layout, runtime.rank)
        if config.train.peak_tflops > 0:
            peak, peak_source = config.train.peak_tflops, "train.peak_tflops from the config"
        else:
            world_barrier()  # all ranks time the GEMM at once, sharing the node as they will in training
            peak = world_mean(measure_gemm_tflops(runtime.device), runtime.device)
            peak_source = "fp32 GEMM timed on all ranks at once, averaged"
        trainer = Trainer(config, grid, runtime.device, peak_tflops=peak, source=source)
        leader = runtime.rank == 0
        if leader:
            print(describe(config, trainer, runtime, peak_source), flush=True)
            Path(config.out_dir).mkdir(parents=True, exist_ok=True)
            (Path(config.out_dir) / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        log = MetricsLog(config.out_dir, config.train.steps, config.train.log_every, enabled=leader)
        history = trainer.fit(log)
        log.close()
        if leader:
            steady = history[1:] or history  # the first step pays one-off warm-up costs
            median = sorted(m["step_time_s"] for m in steady)[len(steady) // 2]
            mean_mfu = sum(m["mfu"] for m in steady) / len(steady)
            print(f"axon: done: final loss {history[-1]['loss']:.4f}, median step {median:.3f} s, "
                  f"{trainer.tokens_per_step / median:,.0f} tok/s, mean MFU {100 * mean_mfu:.1f}%; "
                  f"metrics in {Path(config.out_dir) / 'metrics.jsonl'}", flush=True)
    finally:
        shutdown()

def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "train":
        train_command(args)

if __name__ == "__main__":
    main()
