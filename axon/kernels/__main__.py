"""Time the GEMM candidates for given shapes by hand.

    python -m axon.kernels tune --shapes MxNxK[,MxNxK...] --dtype float32|bfloat16 [--device cpu|cuda]
        [--layout NN|NT|TN|TT] [--json]

For each shape, C[M, N] = A[M, K] @ B[K, N] with the operands held in `--layout` (NN: both
row-major; the engine's forward is NT, dX NN, dW TN): every candidate's median time and the
winner. `--json` prints a list of {"shape": [M, N, K], "candidates": {name: seconds}, "best": name, ...}.
"""

from __future__ import annotations

import argparse
import json

import torch

from axon.kernels.gemm import CANDIDATES, LAYOUT_MODES, in_layout
from axon.kernels.tune import DEFAULT_MAX_COPY_BYTES, GemmTuner, device_name


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"shape {item!r} is not MxNxK with three positive integers")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def tune_shapes(shapes, dtype: torch.dtype, device: torch.device, layout: str, tuner: GemmTuner) -> list[dict]:
    results = []
    for m, n, k in shapes:
        a = in_layout(torch.randn(m, k, device=device).to(dtype), layout[0])
        b = in_layout(torch.randn(k, n, device=device).to(dtype), layout[1])
        names, skipped = tuner.feasible(a, b, layout)
        times = tuner.time_candidates(a, b, names)
        results.append({"shape": [m, n, k], "candidates": times, "best": min(times, key=times.get),
                        "held": layout, "skipped_bytes": skipped})
    return results


def print_table(results: list[dict], dtype: str, device: torch.device, layout: str) -> None:
    print(f"C[M,N] = A[M,K] @ B[K,N], {dtype} on {device_name(device)}, operands held {layout}, "
          f"torch {torch.__version__}; median ms per GEMM")
    print(f"{'M':>6}{'N':>7}{'K':>7}" + "".join(f"{name:>12}" for name in CANDIDATES) + f"{'best':>12}{'vs held':>9}")
    for r in results:
        cells = "".join(f"{r['candidates'][name] * 1e3:12.4f}" if name in r["candidates"] else f"{'skipped':>12}"
                        for name in CANDIDATES)
        speedup = r["candidates"][layout] / r["candidates"][r["best"]] if layout in r["candidates"] else 1.0
        print("{:6d}{:7d}{:7d}".format(*r["shape"]) + cells + f"{r['best']:>12}{speedup:8.2f}x")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m axon.kernels", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tune = commands.add_parser("tune", help="time every GEMM candidate for each shape and name the fastest")
    tune.add_argument("--shapes", type=parse_shapes, required=True, help="MxNxK[,MxNxK...]")
    tune.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    tune.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    tune.add_argument("--layout", choices=LAYOUT_MODES, default="NN", help="how A and B are held (default NN)")
    tune.add_argument("--warmup", type=int, default=2)
    tune.add_argument("--repeats", type=int, default=5)
    tune.add_argument("--max-copy-mb", type=float, default=DEFAULT_MAX_COPY_BYTES / 2**20,
                      help="skip candidates whose operand copies exceed this (MiB)")
    tune.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA/ROCm device on this machine")
    device = torch.device(args.device)
    tuner = GemmTuner(max_copy_bytes=int(args.max_copy_mb * 2**20), warmup=args.warmup, repeats=args.repeats)
    results = tune_shapes(args.shapes, getattr(torch, args.dtype), device, args.layout, tuner)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print_table(results, args.dtype, device, args.layout)
    return results


if __name__ == "__main__":
    main()
