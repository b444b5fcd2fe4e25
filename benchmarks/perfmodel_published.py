"""Does perfmodel reproduce published, measured training throughput? One row per published run
(the runs, their sources and conversions: perfmodel/published.py).

    .venv/bin/python -m benchmarks.perfmodel_published

Prints the table, each row's role in its profile (fit: the row set some of the profile's
levels; check: it did not), and a leave-one-source-out table (each machine's fitted levels
re-set without one source's rows, then those rows predicted), and writes
benchmarks/results/perfmodel_published.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from perfmodel.published import PUBLISHED, compare
from perfmodel.refit import leave_one_source_out

RESULTS = Path(__file__).resolve().parent / "results"


def layout_name(sizes: dict) -> str:
    return " ".join(f"{axis}={n}" for axis, n in sizes.items() if n > 1) or "1 GPU"


def main() -> dict:
    rows = [compare(row) for row in PUBLISHED]
    print(f"{'source':<22} {'machine':<11} {'model':<13} {'GPUs':>5} {'layout':<14} {'role':<5} "
          f"{'published tok/s/GPU':>20} {'predicted':>10} {'error':>7}")
    for row in rows:
        print(f"{row['source'].split(',')[0][:22]:<22} {row['machine']:<11} {row['model_name']:<13} {row['gpus']:>5} "
              f"{layout_name(row['layout']):<14} {row['role']:<5} {row['tokens_per_gpu']:>20.0f} "
              f"{row['predicted_tokens_per_gpu']:>10.0f} {row['error']:>+7.1%}")
    print("\nLeave one source out: each machine's fitted levels re-set without one source's rows "
          "(perfmodel/refit.py), then those rows predicted")
    print(f"{'machine':<11} {'source left out':<24} {'re-set factors (gemm / attention / memory)':<44} error on its rows")
    held_out = []
    for name in dict.fromkeys(row.machine for row in PUBLISHED):
        for entry in leave_one_source_out(name):
            held_out.append(entry)
            if entry["factors"] is None:
                factors, errors = "-", entry["note"]
            else:
                factors = " / ".join(f"{entry['factors'][level]:.3f}" if level in entry["factors"] else "-"
                                     for level in ("gemm_efficiency", "attention_efficiency", "memory_efficiency"))
                errors = ", ".join(f"{key} {error:+.1%}" for key, error in entry["errors"].items())
            print(f"{name:<11} {entry['left_out'][:24]:<24} {factors:<44} {errors}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "leave_one_source_out": held_out}
    (RESULTS / "perfmodel_published.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS / 'perfmodel_published.json'}")
    return result


if __name__ == "__main__":
    main()
