"""`python -m axon convert`: Hugging Face Llama <-> axon checkpoint, in one process.

    python -m axon convert --from-hf HF_DIR --to CKPT_DIR [--force]
    python -m axon convert --from CKPT_DIR --to-hf HF_DIR

No torch.distributed: an axon checkpoint reshards on load, so the 1-process layout
written here resumes on any layout. Both directions hold the whole model in float32
memory once (4 bytes per parameter).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from axon.checkpoint.huggingface import export_hf, load_hf_weights, shape_from_hf


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m axon convert",
                                     description="Convert between a Hugging Face Llama and an axon checkpoint.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="HF_DIR", help="a Hugging Face LlamaForCausalLM directory")
    source.add_argument("--from", dest="from_ckpt", metavar="CKPT_DIR", help="an axon checkpoint directory")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", dest="to_ckpt", metavar="CKPT_DIR", help="axon checkpoint directory to write")
    target.add_argument("--to-hf", metavar="HF_DIR", help="Hugging Face directory to write")
    parser.add_argument("--force", action="store_true",
                        help="with --to: replace a non-empty folder that is not an axon checkpoint")
    parser.add_argument("--max-shard-bytes", type=float, default=5e9,
                        help="with --to-hf: split safetensors files above this size (default 5e9)")
    return parser


def hf_to_checkpoint(hf_dir: str, ckpt_dir: str) -> None:
    from axon.checkpoint import write_model_checkpoint
    from axon.parallel.grid import Grid
    from axon.model import Llama
    from axon.spec.layout import Layout

    shape = shape_from_hf(hf_dir)
    grid = Grid(Layout(), 0)  # every axis has size 1: no process group is created
    model = Llama(shape, grid)
    load_hf_weights(model, grid, hf_dir)
    write_model_checkpoint(ckpt_dir, model, grid, shape)


def checkpoint_to_hf(ckpt_dir: str, hf_dir: str, max_shard_bytes: float = 5e9) -> None:
    from axon.checkpoint import read_full_model

    shape, tensors = read_full_model(ckpt_dir)
    export_hf(tensors, shape, hf_dir, max_shard_bytes)


def check_checkpoint_target(to: str, force: bool) -> None:
    """--to names a folder the checkpoint will replace whole: never the current folder or one
    above it, and never a non-empty folder other than an axon checkpoint unless --force."""
    from axon.checkpoint.reader import META

    path = Path(to)
    if not to.strip() or path.name in ("", ".", "..") or Path.cwd().resolve().is_relative_to(path.resolve()):
        raise ValueError(f"--to {to!r} is the current folder or one above it; name a new folder for the checkpoint")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--to {to!r} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / META).is_file() and not force:
        raise ValueError(f"--to {to!r} is a non-empty folder that is not an axon checkpoint; name a new folder, "
                         "or pass --force to replace it")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.from_hf) == bool(args.to_hf):  # hf -> hf or checkpoint -> checkpoint
        parser.error("convert either --from-hf DIR --to CKPT or --from CKPT --to-hf DIR")
    try:
        if args.from_hf:
            check_checkpoint_target(args.to_ckpt, args.force)
            hf_to_checkpoint(args.from_hf, args.to_ckpt)
            print(f"wrote axon checkpoint {args.to_ckpt} from {args.from_hf}")
        else:
            checkpoint_to_hf(args.from_ckpt, args.to_hf, args.max_shard_bytes)
            print(f"wrote Hugging Face model {args.to_hf} from {args.from_ckpt}")
    except (OSError, ValueError) as err:  # bad input directories (ConfigError is a ValueError): one line, no trace
        print(f"axon convert: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
