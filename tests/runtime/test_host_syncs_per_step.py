"""A training step makes the host wait for the device once (DESIGN section 10): the loss, the
gradient norm and the stop vote read together before the finite check, and nothing per
micro-batch. Counted on CPU with axon.testing.host_syncs at world 1 and on 4 ranks with
pipeline and tensor axes, where a GPU's queue would drain."""

from __future__ import annotations

import pytest
import torch

from axon.config import build_config
from axon.parallel.grid import Grid
from axon.runtime.trainer import Trainer
from axon.testing.host_syncs import HostSyncs
from axon.testing.spawn import run_distributed

# 8 sequences in micro-batches of 2: 4 micro-batches per step at world 1 (2 with pipe 2 x col 2).
RUN = {"model": {"preset": "tiny", "seq_len": 16},
       "train": {"steps": 4, "global_batch": 8, "micro_batch": 2, "lr": 1e-3, "seed": 3, "peak_tflops": 1.0}}
ONE_READ = ["tolist"]  # Trainer.step's torch.cat([...]).tolist()


def _syncs_per_step(rank: int, world: int, layout: dict, out_dir: str, loss: str = "standard") -> list[list[str]]:
    config = build_config({**RUN, "train": {**RUN["train"], "loss": loss}, "layout": layout, "out_dir": out_dir})
    trainer = Trainer(config, Grid(config.layout, rank), torch.device("cpu"))
    trainer.step(0)  # the first step builds what later ones reuse
    counted = []
    for step in (1, 2):
        with HostSyncs() as syncs:
            # AdamW's step counters live on the host (torch keeps state["step"] on the CPU unless
            # capturable or fused), so reading them does not wait for a GPU: not counted.
            update = trainer.optimizer.step
            trainer.optimizer.step = lambda *a, **k: _uncounted(syncs, update, *a, **k)
            try:
                trainer.step(step)
            finally:
                trainer.optimizer.step = update
        counted.append(list(syncs.calls))
    return counted


def _uncounted(syncs: HostSyncs, fn, *args, **kwargs):
    with syncs.not_counting():
        return fn(*args, **kwargs)


@pytest.mark.parametrize("loss", ["standard", "goldfish"])
def test_one_process_step_reads_the_host_once(tmp_path, loss):
    # Goldfish's kept-token count is hashed on the host ahead of the step and divided by on the device.
    assert _syncs_per_step(0, 1, {}, str(tmp_path), loss) == [ONE_READ, ONE_READ]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout, loss", [({"pipe": 2, "col": 2}, "standard"), ({"depth": 2, "row": 2}, "goldfish")],
                         ids=["pipe2xcol2", "depth2xrow2-goldfish"])
def test_four_rank_step_reads_the_host_once_on_every_rank(tmp_path, layout, loss):
    for rank, counted in enumerate(run_distributed(4, _syncs_per_step, layout, str(tmp_path), loss)):
        assert counted == [ONE_READ, ONE_READ], (rank, counted)
