"""Command line: `python -m axon COMMAND ...`, the table of commands and nothing else.

`train` runs a job (axon.runtime.run); the others own their arguments and are imported
only when used, so `python -m axon data ...` on a login node never imports torch.
"""

from __future__ import annotations

import argparse
import sys

# Subcommands that own their arguments: (module, function, help), imported only when used.
OWN_ARGUMENTS = {
    "data": ("axon.data.prepare", "main", "prepare or verify token files (python -m axon data prepare -h)"),
    "convert": ("axon.checkpoint.convert", "main", "Hugging Face Llama <-> axon checkpoint (python -m axon convert -h)"),
    "memorize": ("axon.memorize.cli", "memorize_main",
                 "memorization sweep: models x {standard, goldfish} (python -m axon memorize -h)"),
    "memorize-eval": ("axon.memorize.cli", "memorize_eval_main",
                      "memorization scores of one checkpoint (python -m axon memorize-eval -h)"),
    "dry-run": ("axon.planning.dry_run", "main",
                "build what rank R of N would build, on fake devices, beside perfmodel (python -m axon dry-run -h)"),
    "scaling": ("axon.planning.scaling.cli", "main", "weak/strong scaling studies: plan, submit, report (python -m axon scaling -h)"),
    "diagnose": ("axon.runtime.diagnose", "main", "name the rank and collective behind a hang from OUT_DIR/flight (python -m axon diagnose -h)"),
    "presets": ("axon.spec.preset_table", "main", "list the model presets: shapes and parameter counts (--json)"),
}


def _parser() -> argparse.ArgumentParser:
    from axon.runtime.exit_codes import MEANINGS

    codes = ", ".join(f"{code} {meaning}" for code, meaning in MEANINGS.items())
    parser = argparse.ArgumentParser(prog="python -m axon", description="Train Llama-style models over "
                                     "data x pipe x depth x row x col process grids, and the tools around it.",
                                     epilog=f"exit codes: {codes} (launch/README.md); every command's user "
                                            "errors read `axon COMMAND: error: ...` and exit 2")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a model with the layout a config names")
    train.add_argument("config", help="YAML config (see axon/configs/)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, dotted for nesting (repeatable), e.g. --set layout.col=2")
    train.add_argument("--overwrite", action="store_true",
                       help="start over in an out_dir that holds an earlier run: its files are moved to "
                            "OUT_DIR/earlier-TIME/ (nothing is deleted); to continue it instead, --set train.resume=latest")
    for name, (_, _, summary) in OWN_ARGUMENTS.items():
        commands.add_parser(name, help=summary)
    return parser


def _version() -> str:
    from axon.runtime.provenance import version_line

    return version_line()


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in OWN_ARGUMENTS:  # hand the rest over before parsing
        import importlib

        from axon.config.errors import ConfigError, error_line

        module, function, _ = OWN_ARGUMENTS[argv[0]]
        try:
            return getattr(importlib.import_module(module), function)(argv[1:])
        except ConfigError as err:  # a command that does not catch its own: the same one sentence, exit 2
            print(error_line(argv[0], str(err)), file=sys.stderr, flush=True)
            return 2
    args = _parser().parse_args(argv)
    if args.command == "train":
        from axon.runtime.run import train_command

        train_command(args)


if __name__ == "__main__":
    sys.exit(main())  # a subcommand's return value is its exit status
