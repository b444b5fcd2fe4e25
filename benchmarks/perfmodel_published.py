"""Does perfmodel reproduce published, measured training throughput? One row per published run
(the runs, their sources and conversions: perfmodel/published.py).

    .venv/bin/python -m benchmarks.perfmodel_published

Prints the table and writes benchmarks/results/perfmodel_published.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from perfmodel.published import PUBLISHED, compare

RESULTS = Path(__file__).resolve().parent / "results"


def layout_name(sizes: dict) -> str:
    return " ".join(f"{axis}={n}" for axis, n in sizes.items() if n > 1) or "1 GPU"


def main() -> list[dict]:
    rows = [compare(row) for row in PUBLISHED]
    print(f"{'source':<22} {'machine':<11} {'model':<13} {'GPUs':>5} {'layout':<14} {'published tok/s/GPU':>20} "
          f"{'predicted':>10} {'error':>7}")
    for row in rows:
        print(f"{row['source'].split(',')[0][:22]:<22} {row['machine']:<11} {row['model_name']:<13} {row['gpus']:>5} "
              f"{layout_name(row['layout']):<14} {row['tokens_per_gpu']:>20.0f} {row['predicted_tokens_per_gpu']:>10.0f} "
              f"{row['error']:>+7.1%}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "perfmodel_published.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {RESULTS / 'perfmodel_published.json'}")
    return rows


if __name__ == "__main__":
    main()
