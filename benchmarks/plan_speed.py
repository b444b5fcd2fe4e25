"""How long `python -m perfmodel plan` takes on shapes users plan (issue 33 item 4: under 5 s each).

Times `perfmodel.search.search` (the plan command's work, top 10, the fast path) on one core
for a grid of shapes: the three AxoNN points of `benchmarks/studies` (Perlmutter GPT-40B on
4,096 A100s, Alps GPT-60B on 6,144 GH200s, Frontier GPT-320B on 32,768 GCDs, at their studies'
batch and sequence), and 96 layers x 16384 hidden on 32,768 Frontier GCDs at sequence 4096,
8192 and 32768, Llama presets from 1B on 8 GPUs to 405B on 16,384, and a 1T GPT (Megatron's
128 x 25600) on 65,536 Frontier GCDs and on 16,384 GH200s, where pipelines win and many
layouts come close. Prints one line per shape and the worst, and writes JSON.

    flock /tmp/axon-cpu.lock .venv/bin/python -m benchmarks.plan_speed [--out benchmarks/results/plan_speed.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from axon.spec.layout import factorizations
from axon.spec.shapes import ModelShape, preset
from axon.spec.training import TrainingSetup
from perfmodel import memory
from perfmodel.machine import load_machine
from perfmodel.published_at_scale import gpt
from perfmodel.search import fits_in_memory, layout_problem, search

# AxoNN's GPT shapes as perfmodel/published_at_scale.py maps them (one rule for the GPT MLP as SwiGLU),
# and a 1T GPT (Megatron-LM 2021's 128 x 25600 x 160) with a 4h MLP.
GPT = {"gpt-40b": gpt(38, 9216, 72), "gpt-60b": gpt(56, 9216, 72), "gpt-320b": gpt(96, 16384, 128),
       "gpt-1t": ModelShape(layers=128, hidden=25600, heads=160, kv_heads=160, ffn=102400, vocab=51200, seq_len=2048)}
# (name, shape, machine, gpus, global batch, sequence)
CASES = [
    ("AxoNN Perlmutter 40B", GPT["gpt-40b"], "perlmutter", 4096, 4 * 4096, 2048),
    ("AxoNN Alps 60B", GPT["gpt-60b"], "alps", 6144, 4 * 6144, 2048),
    ("AxoNN Frontier 320B", GPT["gpt-320b"], "frontier", 32768, 4 * 32768, 2048),
    ("96 x 16384, seq 4096", GPT["gpt-320b"], "frontier", 32768, 2 * 32768, 4096),
    ("96 x 16384, seq 8192", GPT["gpt-320b"], "frontier", 32768, 32768, 8192),
    ("96 x 16384, seq 32768", GPT["gpt-320b"], "frontier", 32768, 8192, 32768),
    ("Llama 1B on 8", "1B", "dgx-h100", 8, 64, 4096),
    ("Llama 8B on 8", "8B", "dgx-h100", 8, 64, 8192),
    ("Llama 70B on 512", "70B", "perlmutter", 512, 1024, 8192),
    ("Llama 70B on 8192", "70B", "alps", 8192, 4096, 8192),
    ("Llama 405B on 16384", "405B", "frontier", 16384, 2048, 8192),
    ("GPT 1T on 65536", GPT["gpt-1t"], "frontier", 65536, 16384, 8192),
    ("GPT 1T on 16384", GPT["gpt-1t"], "alps", 16384, 8192, 4096),
]


def _shape(spec, seq: int) -> ModelShape:
    return dataclasses.replace(preset(spec, "--model") if isinstance(spec, str) else spec, seq_len=seq)


def _check_seconds(shape: ModelShape, gpus: int, machine, setup: TrainingSetup) -> tuple[float, float]:
    """Seconds of the two checks the search makes of every factorization before it prices any:
    the layout rules (axon.spec.layout_rules) and the memory verdict (perfmodel.memory), timed
    apart here (plain layouts only) to show what of a plan's time they take."""
    started = time.perf_counter()
    layouts = [lay for lay in factorizations(gpus) if layout_problem(shape, lay, setup) is None]
    # Cold, as in a plan: the search just run left every stage's memory in perfmodel.memory's caches.
    for cached in (memory._stage_memory, memory._scatter_peaks, memory._gather_peak, memory._gradient_block_bytes,
                   memory._gathered_weight_bytes, memory._blocks):
        cached.cache_clear()
    checked = time.perf_counter()
    for layout in layouts:
        fits_in_memory(shape, layout, machine, setup)
    return checked - started, time.perf_counter() - checked


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/plan_speed.json")
    args = parser.parse_args(argv)
    rows = []
    for name, spec, machine_name, gpus, batch, seq in CASES:
        shape = _shape(spec, seq)
        setup = TrainingSetup(global_batch=batch, seq_len=seq, micro_batch=0, dtype="bfloat16", recompute="block",
                              overlap=("all_reduce", "reduce_scatter", "all_gather", "data_parallel"))
        started = time.perf_counter()
        result = search(shape, gpus, load_machine(machine_name), setup, top=10)
        seconds = time.perf_counter() - started
        best = result.predictions[0] if result.predictions else None
        rules_s, memory_s = _check_seconds(shape, gpus, load_machine(machine_name), setup)
        rows.append({"case": name, "gpus": gpus, "machine": machine_name, "seconds": round(seconds, 2),
                     "rules_s": round(rules_s, 2), "memory_s": round(memory_s, 2),
                     "layouts": result.dividing, "fit": result.fitting, "predictions": result.priced,
                     "best": str(best.layout) if best else None, "best_step_s": best.step_time_s if best else None})
        print(f"{name:28s} {gpus:>6} {machine_name:>10}  {seconds:7.2f} s (rules {rules_s:5.2f}, memory "
              f"{memory_s:5.2f})  {result.dividing:>6} layouts {result.fitting:>5} fit {result.priced:>7} predictions",
              flush=True)
    worst = max(rows, key=lambda r: r["seconds"])
    print(f"worst: {worst['case']}, {worst['seconds']:.2f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "worst": worst}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
