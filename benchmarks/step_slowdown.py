"""How `in_context_slowdown` depends on the reference step: a whole forward, backward and AdamW
step of several models, timed on every rank at once, against its price from one profile.

Run under the launcher the profile was calibrated with, at the same rank count:

    .venv/bin/torchrun --nproc-per-node 8 -m benchmarks.step_slowdown \\
        --profile benchmarks/results/machine_cpu_8ranks.yaml

Prints a table and writes benchmarks/results/step_slowdown.json (rank 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--out", type=Path, default=RESULTS / "step_slowdown.json")
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    from perfmodel.calibrate.measure import Bench
    from perfmodel.calibrate.reference import priced_compute_s, reference_shape, reference_step
    from perfmodel.machine import load_machine
    from axon.spec.shapes import preset

    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if world > 1:
        dist.init_process_group("gloo")
    machine = dataclasses.replace(load_machine(args.profile), in_context_slowdown=1.0)
    bench = Bench(torch.device("cpu"), world, quick=False)
    builtin, builtin_micro = reference_shape(False)
    cases = [("built-in 2 blocks", builtin, builtin_micro)]
    cases += [(f"{name} seq 128", dataclasses.replace(preset(name), seq_len=128), micro)
              for name, micro in (("1M", 4), ("10M", 1), ("10M", 2), ("10M", 4))]
    rows = []
    for name, shape, micro in cases:
        measured = bench.seconds(reference_step(shape, micro, "float32", bench.device), local=True)
        priced = priced_compute_s(machine, shape, micro, "float32")
        rows.append({"reference": name, "micro_batch": micro, "measured_s": measured, "priced_s": priced,
                     "slowdown": measured / priced})
    if world == 1 or dist.get_rank() == 0:
        print(f"{world} ranks, profile {args.profile}")
        print(f"{'reference':<20} {'sequences':>9} {'measured ms':>12} {'priced ms':>10} {'slowdown':>9}")
        for r in rows:
            print(f"{r['reference']:<20} {r['micro_batch']:>9} {r['measured_s'] * 1e3:>12.1f} "
                  f"{r['priced_s'] * 1e3:>10.1f} {r['slowdown']:>9.3f}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"world": world, "profile": args.profile, "rows": rows}, indent=1))
        print(f"wrote {args.out}")
    if world > 1:
        dist.destroy_process_group()
    return rows


if __name__ == "__main__":
    main()
