"""A bf16 step casts each fp32 master weight to bf16 once (axon.parallel.prefetch.cast_shard),
not at every use, and trains bitwise as casting at every use does, with the fused AdamW too
(it updates the weights without bumping their versions: the trainer forgets the copies)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from axon.config import build_config
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer
from axon.spec.layout import Layout

LAYERS, MICRO_BATCHES = 2, 3
RUN = {"model": {"preset": "tiny", "layers": LAYERS, "seq_len": 16},
       "train": {"steps": 4, "global_batch": 6, "micro_batch": 2, "lr": 1e-2, "seed": 5, "dtype": "bfloat16",
                 "peak_tflops": 1.0}}


class CastsToBf16(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ == "_to_copy" and args[0].dtype == torch.float32 \
                and out.dtype == torch.bfloat16:
            self.count += 1
        return out


def _trainer(tmp_path, keep: bool, fused: bool) -> Trainer:
    config = build_config({**RUN, "out_dir": str(tmp_path)})
    trainer = Trainer(config, Grid(Layout(), 0), torch.device("cpu"))
    if not keep:
        for layer in trainer.cast_layers:
            layer.keep_cast = False
        trainer.cast_layers = []
    if fused:  # the GPU's optimizer, on the CPU
        trainer.optimizer = torch.optim.AdamW(trainer.optimizer.param_groups, lr=1e-2, eps=1e-8, fused=True)
    return trainer


def _losses_and_casts(tmp_path, keep: bool, fused: bool = False) -> tuple[list[float], int]:
    trainer = _trainer(tmp_path, keep, fused)
    losses = [trainer.step(0)["loss"]]
    with CastsToBf16() as casts:
        losses.append(trainer.step(1)["loss"])
    losses += [trainer.step(s)["loss"] for s in (2, 3)]
    return losses, casts.count


def test_each_weight_is_cast_once_per_step_with_the_same_numbers(tmp_path):
    every_use, casts_every_use = _losses_and_casts(tmp_path / "a", keep=False)
    kept, casts_kept = _losses_and_casts(tmp_path / "b", keep=True)
    linears = 7 * LAYERS + 1  # wq wk wv wo w1 w2 w3 per block, and the output head
    # Each linear's weight is used in forward and in backward of every micro-batch: 2m casts become 1.
    assert casts_every_use - casts_kept == (2 * MICRO_BATCHES - 1) * linears
    assert kept == every_use and kept[-1] < kept[0]


def test_the_fused_optimizer_does_not_leave_stale_copies(tmp_path):
    assert _losses_and_casts(tmp_path / "a", keep=True, fused=True)[0] == \
        _losses_and_casts(tmp_path / "b", keep=False, fused=True)[0]
