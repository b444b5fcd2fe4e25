"""The dry run's strict-NCCL checks (axon/planning/dry_run/strict.py): real layouts pass, and
each check catches a violation planted in the engine."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist

import axon.parallel.p2p as p2p
import axon.runtime.trainer as trainer
from axon.planning.dry_run import main
from axon.planning.dry_run.cli import default_ranks, partner_ranks, rehearse, strict_verdict
from axon.spec.layout import Layout
from axon.testing.runs import DRY_RUN_MODEL as MODEL, dry_run_config as config_for

EVERY_AXIS = Layout(data=2, pipe=2, depth=2, row=2, col=2)


def verdict(config) -> tuple[list[str], str]:
    ranks = sorted(set(default_ranks(config)) | set(partner_ranks(config)))
    return strict_verdict([rehearse(config, rank) for rank in ranks])


@pytest.mark.parametrize("layout, dtype", [(EVERY_AXIS, "bfloat16"), (Layout(pipe=2, row=2, virtual_stages=2),
                                                                     "float32")], ids=["every-axis", "interleaved"])
def test_real_layouts_pass(layout, dtype):
    model = {"layers": 4} if layout.virtual_stages > 1 else {}
    config = config_for(layout, dtype, "block", 2, model={**MODEL, **model})
    violations, line = verdict(config)
    assert violations == [], violations
    assert line.startswith("strict NCCL: ok") and " 0 group(s)" not in line, line


def test_partners_share_a_group_along_each_axis():
    config = config_for(EVERY_AXIS, micro_batches=2)
    lowest = config.layout.coords(default_ranks(config)[0])
    differ = {tuple(a for a in lowest if config.layout.coords(r)[a] != lowest[a]) for r in partner_ranks(config)}
    assert {("data",), ("depth",), ("row",), ("col",)} <= differ


def test_a_host_tensor_collective_is_caught(monkeypatch):
    """An engine all-reduce over row handed a CPU copy: NCCL would fail."""
    original = dist.all_reduce

    def on_host(tensor, *args, group=None, **kwargs):
        if group is not None and group.group_desc == "axon_row":
            tensor = torch.zeros(tensor.shape, dtype=tensor.dtype)
        return original(tensor, *args, group=group, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", on_host)
    violations, line = verdict(config_for(Layout(row=2, col=2)))
    assert "violation" in line
    hosts = [v for v in violations if "all_reduce over row (2 ranks: " in v and "host tensor" in v]
    assert hosts and "on cpu" in hosts[0] and "axon/parallel/comm.py" in hosts[0], violations


def test_unbatched_point_to_point_is_caught(monkeypatch):
    """The pipeline's transfers issued one by one instead of as one batch_isend_irecv."""

    def one_by_one(transfers, axis):
        for op, tensor, peer, _ in transfers:
            (dist.isend if op == "send" else dist.irecv)(tensor, peer, group=axis.group).wait()
        return None  # waited for already: nothing left in flight

    monkeypatch.setattr(p2p, "exchange", one_by_one)
    violations, _ = verdict(config_for(Layout(pipe=2, row=2), micro_batches=4))
    assert any(v.startswith("rank 0: unbatched send over pipe (2 ranks: ") for v in violations), violations
    assert any("unbatched recv over pipe" in v for v in violations), violations


def test_gather_and_object_collectives_over_the_world_are_caught(monkeypatch):
    """A gather and an all_gather_object over 16 ranks (more than SMALL_GROUP) in the step."""
    original = trainer.all_reduce

    def planted(tensor, axis, *args, **kwargs):
        world = dist.get_world_size()
        parts = [torch.empty_like(tensor) for _ in range(world)] if dist.get_rank() == 0 else None
        dist.gather(tensor, parts, dst=0)
        dist.all_gather_object([None] * world, "state")
        return original(tensor, axis, *args, **kwargs)

    monkeypatch.setattr(trainer, "all_reduce", planted)
    violations, _ = verdict(config_for(Layout(data=2, depth=2, row=2, col=2), micro_batches=1, global_batch=16))
    assert any(v.startswith("rank 0: gather over world (16 ranks: 0, 1, 2, ..., 15)") for v in violations), violations
    assert any("all_gather_object over world (16 ranks" in v for v in violations), violations
    assert not any("host tensor" in v for v in violations)  # the object's bytes travel as torch places them


def test_a_rank_dependent_collective_is_caught(monkeypatch):
    """One member of a row group issues an extra all-reduce on it: the members' sequences part."""
    original, extra = dist.all_reduce, {}

    def planted(tensor, *args, group=None, **kwargs):
        if group is not None and group.group_desc == "axon_row" and dist.get_rank() == 1 and not extra:
            extra["done"] = original(torch.zeros(3, device=tensor.device), group=group)
        return original(tensor, *args, group=group, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", planted)
    violations, line = verdict(config_for(Layout(row=2, col=2)))
    assert violations and "violation" in line
    assert any(v.startswith("ranks 1 and 3 issued different collectives on row (2 ranks: 1, 3): number 1 is "
                            "all_reduce f32[3] on rank 1 and all_reduce ") for v in violations), violations


def test_a_violation_fails_the_command(monkeypatch, capsys, tmp_path):
    """exit status 1, one sentence per violation on stderr; the JSON names the rank's verdict."""
    config = tmp_path / "run.yaml"
    config.write_text("out_dir: unused\n")
    original = trainer.all_reduce

    def planted(tensor, axis, *args, **kwargs):
        dist.all_gather_object([None] * dist.get_world_size(), "state")
        return original(tensor, axis, *args, **kwargs)

    monkeypatch.setattr(trainer, "all_reduce", planted)
    with pytest.raises(SystemExit) as stop:
        main([str(config), "--world", "16", "--json", "--jobs", "1", "--set", "model=1M", "--set", "layout.data=16",
              "--set", "train.global_batch=16"])
    assert stop.value.code == 1
    out, err = capsys.readouterr()
    results = json.loads(out)
    assert all(r["strict_nccl"]["verdict"] == "violations" for r in results)
    lines = err.strip().splitlines()
    assert lines[0].startswith("axon dry-run: strict NCCL: ")
    assert all("all_gather_object over world (16 ranks" in line for line in lines[1:]) and len(lines) > 1
