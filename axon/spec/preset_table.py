"""`python -m axon presets`: every model preset's shape and parameter count, torch-free.

The counts are axon.spec.parameters' (the one rule the engine's banner, the checkpoint
names and perfmodel's workload count with): `parameters` is every tensor, embedding and
LM head included; `non_embedding` leaves out the input embedding table (the N of 6N + 12Lhs,
FLOPs per token).
"""

from __future__ import annotations

import argparse
import json

from axon.spec.parameters import matmul_parameters, whole_model_parameters
from axon.spec.shapes import PRESETS, SIZES


def preset_rows() -> list[dict]:
    """One row per preset: its name, sizes, RoPE scaling factor and parameter counts."""
    return [{"name": name, **{key: getattr(shape, key) for key in SIZES},
             "rope_scaling_factor": shape.rope_scaling_factor,
             "parameters": whole_model_parameters(shape), "non_embedding": matmul_parameters(shape)}
            for name, shape in PRESETS.items()]


def human(count: int) -> str:
    """1234567 -> 1.23M, 8030261248 -> 8.03B."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return str(count)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m axon presets", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per preset")
    args = parser.parse_args(argv)
    rows = preset_rows()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = ("preset", *SIZES, "parameters", "non-embedding")
    table = [header] + [(r["name"], *(f"{r[key]:,}" for key in SIZES),
                         f"{r['parameters']:,} ({human(r['parameters'])})", human(r["non_embedding"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths))))
    print("model: NAME in a config picks one; a mapping with `preset: NAME` refines it (docs/running.md)")
    return 0
