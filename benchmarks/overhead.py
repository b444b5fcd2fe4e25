"""axon's training-step overhead at world 1 versus plain PyTorch, and CPU MFU.

Both sides start from identical weights and train on identical batches with the same
math: zero_grad, forward+backward of the mean loss, clip to the same max norm, AdamW
(same lr/betas/eps, decay on matrices only). Steps alternate axon, plain, axon, ...
so machine noise hits both alike; we report medians and the median of per-pair ratios.
The MFU peak is a large fp32 GEMM timed in the same run, before and after the steps.

    .venv/bin/python -m benchmarks.overhead [--steps 30] [--warmup 5] [--batch 8] [--model 20M]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from axon.config import build_config
from axon.data.batches import shard_micro_batches
from axon.parallel.grid import Grid
from axon.parallel.full_tensor import full_parameters
from axon.runtime.trainer import Trainer
from axon.testing.reference_model import PlainLlama
from axon.kernels.peak import measure_gemm_tflops
from axon.spec.flops import flops_per_token
from axon.spec.layout import Layout

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"


class PlainStep:
    """The same optimizer step as axon's Trainer.step, in plain PyTorch."""

    def __init__(self, trainer: Trainer):
        self.trainer, config = trainer, trainer.config
        self.model = PlainLlama(config.model)
        # Identical starting weights: axon's shards at world 1 are the full tensors.
        self.model.load_state_dict(full_parameters(trainer.model, trainer.grid))
        t = config.train
        decay = [p for p in self.model.parameters() if p.ndim == 2]  # matrices and embedding
        no_decay = [p for p in self.model.parameters() if p.ndim != 2]  # norm gains
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t.lr, betas=t.betas, eps=1e-8)

    def step(self, step: int) -> float:
        tr = self.trainer
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        # Same batches through the same loader, so data cost is inside both timings.
        for ids, targets in shard_micro_batches(tr.source, tr.config, tr.grid, step, tr.device):
            # Each micro-batch's mean, weighted by its share of the step's tokens = step mean.
            loss = self.model.loss(ids, targets) * (targets.numel() / tr.tokens_per_step)
            loss.backward()
            loss_sum += loss.detach()
        if tr.config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tr.config.train.grad_clip)
        self.optimizer.step()
        return float(loss_sum)  # .item(), as axon's step does


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def gemm_tflops(size: int, repeats: int) -> float:
    return measure_gemm_tflops(torch.device("cpu"), torch.float32, size=size, repeats=repeats)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="20M")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (one micro-batch)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gemm-size", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    total = args.warmup + args.steps
    config = build_config({"model": args.model, "layout": {},
                           "train": {"steps": total, "global_batch": args.batch, "lr": 3e-4, "grad_clip": 1.0}})
    trainer = Trainer(config, Grid(Layout(), 0), torch.device("cpu"))
    plain = PlainStep(trainer)
    params = sum(p.numel() for p in plain.model.parameters())

    gemm_before = gemm_tflops(args.gemm_size, 5)

    axon_times, plain_times, first_losses = [], [], None
    for step in range(total):
        # Alternate which side goes first so neither always runs on a "warmer" machine.
        order = ("axon", "plain") if step % 2 == 0 else ("plain", "axon")
        result = {}
        for side in order:
            if side == "axon":
                result["axon"] = timed(lambda s: trainer.step(s)["loss"], step)
            else:
                result["plain"] = timed(plain.step, step)
        if step == 0:
            first_losses = (result["axon"][1], result["plain"][1])
        if step >= args.warmup:
            axon_times.append(result["axon"][0])
            plain_times.append(result["plain"][0])

    gemm_after = gemm_tflops(args.gemm_size, 5)
    peak = statistics.median([gemm_before, gemm_after])

    axon_med, plain_med = statistics.median(axon_times), statistics.median(plain_times)
    pair_ratio = statistics.median(a / p for a, p in zip(axon_times, plain_times))
    tokens = config.train.global_batch * config.model.seq_len
    flops = flops_per_token(config.model) * tokens

    def side(t):
        tflops = flops / t / 1e12
        return {"median_step_s": t, "tokens_per_s": tokens / t, "model_tflops": tflops, "mfu": tflops / peak}

    report = {
        "command": " ".join([sys.executable, *sys.argv] if argv is None
                            else [sys.executable, "-m", "benchmarks.overhead", *argv]),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model": args.model, "parameters": params, "batch": args.batch, "seq_len": config.model.seq_len,
        "tokens_per_step": tokens, "flops_per_step": flops, "warmup": args.warmup, "steps": args.steps,
        "first_step_loss": {"axon": first_losses[0], "plain": first_losses[1],
                            "abs_diff": abs(first_losses[0] - first_losses[1])},
        "gemm": {"size": args.gemm_size, "tflops_before": gemm_before, "tflops_after": gemm_after,
                 "tflops_median": peak},
        "axon": side(axon_med), "plain": side(plain_med),
        "ratio_of_medians": axon_med / plain_med, "median_pair_ratio": pair_ratio,
        "raw_step_s": {"axon": axon_times, "plain": plain_times},
    }
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


def print_table(r: dict) -> None:
    loss = r["first_step_loss"]
    print(f"model {r['model']} ({r['parameters'] / 1e6:.2f}M params), {r['batch']} x {r['seq_len']} tokens/step, "
          f"{r['threads']} threads, torch {r['torch']}, {r['steps']} timed steps each after {r['warmup']} warm-up")
    print(f"first-step loss: axon {loss['axon']:.6f}  plain {loss['plain']:.6f}  |diff| {loss['abs_diff']:.2e}")
    print(f"{'':8}{'step ms':>10}{'tokens/s':>11}{'TFLOP/s':>10}{'MFU':>8}")
    for name in ("axon", "plain"):
        s = r[name]
        print(f"{name:8}{s['median_step_s'] * 1e3:10.1f}{s['tokens_per_s']:11.0f}"
              f"{s['model_tflops']:10.4f}{s['mfu']:8.1%}")
    g = r["gemm"]
    print(f"GEMM {g['size']}^3 fp32: {g['tflops_before']:.4f} before, {g['tflops_after']:.4f} after, "
          f"median {g['tflops_median']:.4f} TFLOP/s (MFU peak)")
    print(f"axon/plain: ratio of medians {r['ratio_of_medians']:.3f}, "
          f"median of per-pair ratios {r['median_pair_ratio']:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
