"""Does perfmodel predict published runs on thousands of GPUs that set none of its levels?
(The runs, their sources, conversions and assumptions: perfmodel/published_at_scale.py.)

    .venv/bin/python -m benchmarks.perfmodel_at_scale

Prints one row per run (perfmodel's best plan for the run's model, GPUs, batch and sequence),
the step's scale terms, and the targets (each row within 25%, the median within 15%), and
writes benchmarks/results/perfmodel_at_scale.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from perfmodel.published_at_scale import AT_SCALE, MEDIAN_TARGET, ROW_TARGET, compare_at_scale, verdict

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> dict:
    rows = [compare_at_scale(row) for row in AT_SCALE]
    print(f"{'run':<30} {'GPUs':>6} {'planned layout':<22} {'published tok/s/GPU':>20} {'predicted':>10} "
          f"{'error':>7} {'straggler s':>12} {'exposed comm s':>15}")
    for row in rows:
        layout = " ".join(f"{axis}={n}" for axis, n in row["layout"].items() if n > 1)
        comm = sum(row["breakdown"][k] for k in ("tensor_comm", "depth_gather", "depth_reduce_scatter", "data_comm",
                                                  "pipeline_p2p", "step_sync"))
        print(f"{row['key']:<30} {row['gpus']:>6} {layout:<22} {row['tokens_per_gpu']:>20.1f} "
              f"{row['predicted_tokens_per_gpu']:>10.1f} {row['error']:>+7.1%} {row['breakdown']['straggler_wait']:>12.2f} "
              f"{comm:>15.2f}")
    result = verdict([row["error"] for row in rows])
    print(f"targets: every row within {ROW_TARGET:.0%} ({result['rows_within']} of {result['rows']}), median within "
          f"{MEDIAN_TARGET:.0%} (median |error| {result['median_abs']:.1%}): {'met' if result['met'] else 'NOT met'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"rows": rows, "verdict": result}
    (RESULTS / "perfmodel_at_scale.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / 'perfmodel_at_scale.json'}")
    return out


if __name__ == "__main__":
    main()
