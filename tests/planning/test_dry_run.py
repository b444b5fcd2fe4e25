"""axon dry-run: the engine built as rank R of N on meta tensors under the fake backend.

References: a hand count and a real 1-process gloo build for the state's bytes, perfmodel
for the collectives (exactly) and memory (within 5% per component and in total, on every rank
rehearsed here: test_memory_agreement.py), and one-sentence errors.
"""

from __future__ import annotations

import json
import re
import resource
from collections import Counter

import pytest
import torch
import yaml

from axon.planning.dry_run import main
from axon.planning.dry_run.cli import default_ranks, rehearse
from axon.spec.layout import Layout
from axon.testing.runs import DRY_RUN_MODEL as MODEL, dry_run_config as config_for
from axon.testing.spawn import run_distributed
from axon.testing.memory_check import assert_memory_agrees
from perfmodel.machine import MACHINES_DIR

# (layout, dtype, recompute, micro-batches per step[, gradient reduction dtype]): the engine's
# trace, extrapolated from one micro-batch to the step, against perfmodel's inventory.
INVENTORY_CASES = [
    (Layout(depth=2, col=2), "float32", "none", 2),
    (Layout(row=2, col=2), "float32", "block", 2),
    (Layout(data=2, depth=2), "bfloat16", "none", 2, "bfloat16"),
    (Layout(pipe=2, depth=2), "float32", "none", 4),
    (Layout(pipe=2, row=2), "bfloat16", "block", 4),
    (Layout(data=2, pipe=2, depth=2, row=2, col=2), "bfloat16", "none", 4),
]


@pytest.mark.parametrize("case", INVENTORY_CASES, ids=lambda c: f"{c[0].sizes()}-{c[1]}-{c[2]}")
def test_collectives_equal_perfmodel_inventory(case):
    layout, dtype, recompute, micro_batches, *reduce = case
    config = config_for(layout, dtype, recompute, micro_batches, *reduce)
    for rank in default_ranks(config):
        result = rehearse(config, rank)
        assert sum(r["count"] for r in result["collectives"]) > 10
        wrong = [r for r in result["collectives"] if r["count"] != r["perfmodel_count"]]
        assert not wrong, f"{layout} rank {rank}: {wrong}"
        assert result["collective_bytes"] == result["perfmodel_collective_bytes"]
        assert_memory_agrees(result)


# Memory within 5% of perfmodel, per component and in total (without and with pipe; at pipe > 1
# the first and the last stage, whose activations differ by the micro-batches 1F1B keeps in flight).
MEMORY_CASES = [
    (Layout(data=2, row=2), "float32", "none", 1),
    (Layout(data=2, depth=2), "bfloat16", "none", 2, "bfloat16"),
    (Layout(pipe=2, row=2, col=2), "bfloat16", "none", 4),
    (Layout(data=2, pipe=2, col=2), "bfloat16", "none", 2),
]


@pytest.mark.parametrize("case", MEMORY_CASES, ids=lambda c: f"{c[0].sizes()}-{c[1]}-{c[2]}")
def test_memory_within_5_percent_of_perfmodel(case):
    layout, dtype, recompute, micro_batches, *reduce = case
    config = config_for(layout, dtype, recompute, micro_batches, *reduce)
    for rank in default_ranks(config):
        assert_memory_agrees(rehearse(config, rank))


def _shard_bytes(numel: int, depth: int) -> int:
    return -(-numel // depth) * 4


def test_state_bytes_equal_a_hand_count():
    """depth 2 x col 2, rank 0: every matrix's [out/row, in/col] block over depth, padded."""
    config = config_for(Layout(depth=2, col=2))
    m = MODEL
    head_dim = m["hidden"] // m["heads"]
    kv = m["kv_heads"] * head_dim
    blocks = [  # (out, in) local blocks, col splits `in` of normal layers and `out` of transposed ones
        (m["hidden"], m["hidden"] // 2), (kv, m["hidden"] // 2), (kv, m["hidden"] // 2),  # wq wk wv
        (m["hidden"] // 2, m["hidden"]),  # wo
        (m["ffn"], m["hidden"] // 2), (m["ffn"], m["hidden"] // 2), (m["hidden"] // 2, m["ffn"])]  # w1 w3 w2
    weights = m["layers"] * sum(_shard_bytes(o * i, 2) for o, i in blocks)
    weights += 2 * _shard_bytes(m["vocab"] * m["hidden"] // 2, 2)  # embedding, head
    weights += (2 * m["layers"] + 1) * m["hidden"] // 2 * 4  # norm gains, split over col only
    result = rehearse(config, 0)
    assert result["memory_bytes"]["parameters"] == weights
    assert result["memory_bytes"]["gradients"] == weights
    assert result["memory_bytes"]["optimizer"] == 2 * weights
    assert result["parameters_on_meta"]


def _real_state_bytes(rank, world, config):
    from axon.parallel.grid import Grid
    from axon.runtime.trainer import Trainer

    grid = Grid(config.layout, rank)
    trainer = Trainer(config, grid, torch.device("cpu"), peak_tflops=1.0)
    trainer.step(0)
    params = list(trainer.model.parameters())
    state = [s for st in trainer.optimizer.state.values() for k, s in st.items() if k != "step"]
    out = {"parameters": sum(p.numel() * 4 for p in params), "gradients": sum(p.grad.numel() * 4 for p in params),
           "optimizer": sum(s.numel() * s.element_size() for s in state)}
    grid.destroy()
    return out


def test_state_bytes_equal_a_real_one_process_build():
    config = config_for(Layout(), "bfloat16", "block")
    real = run_distributed(1, _real_state_bytes, config)[0]
    dry = rehearse(config, 0)["memory_bytes"]
    assert {k: dry[k] for k in real} == real


@pytest.fixture
def empty_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("out_dir: unused\n")
    return str(path)


def test_json_output_and_no_real_weight(capsys, empty_config):
    """1B (5 GiB of fp32 weights on one rank) dry-runs without the process growing by a weight."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    main([empty_config, "--world", "4", "--json", "--jobs", "1", "--set", "model=1B", "--set", "model.seq_len=128",
          "--set", "model.layers=4", "--set", "layout.pipe=2", "--set", "layout.row=2",
          "--set", "train.global_batch=8", "--set", "train.dtype=bfloat16"])
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    results = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in results] == [0, 1, 2, 3]  # first and last rank of each of the two stages
    for r in results:
        assert r["memory_bytes"]["parameters"] > 2**28  # a quarter of 1B's 4 blocks + embedding or head
        assert r["memory_bytes"]["total"] == sum(v for k, v in r["memory_bytes"].items() if k != "total")
        assert "total" in r["perfmodel_memory_bytes"] and r["parameters_on_meta"]
        assert r["collectives_agree"]
    assert grown_mib < 200, f"the dry run grew the process by {grown_mib:.0f} MiB"


@pytest.mark.parametrize("argv, sentence", [
    (["--world", "6", "--set", "layout.depth=2", "--set", "layout.col=2"],
     "has 4 ranks but the job has world size 6"),
    (["--world", "4", "--ranks", "0,4", "--set", "layout.depth=4"], "--ranks 4 is outside the world of 4 ranks"),
    (["--world", "4", "--set", "layout=auto"], "layout: auto needs layout_machine"),
    (["--world", "1", "--machine", "nowhere"], "--machine 'nowhere': machine 'nowhere' is neither a shipped profile"),
])
def test_bad_input_is_one_sentence(argv, sentence, capsys, empty_config):
    with pytest.raises(SystemExit) as stop:
        main([empty_config, *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert sentence in err and len(err.splitlines()) == 1, err


def test_layout_auto_with_a_named_profile(capsys, empty_config):
    main([empty_config, "--world", "8", "--json", "--set", "model=1M", "--set", "layout=auto",
          "--set", "layout_machine=frontier", "--set", "train.global_batch=16"])
    results = json.loads(capsys.readouterr().out)
    assert results and all(r["collectives_agree"] for r in results)
    assert Counter(r["coords"]["pipe"] for r in results)  # the chosen layout's ranks were built
    # layout_machine also judges memory: a 64 GB MI250X GCD, 90% of it usable
    assert all(r["memory_verdict"] == {"machine": "frontier", "peak_bytes": r["memory_bytes"]["total"],
                                       "usable_bytes": round(0.9 * 64 * 2**30), "fits": True} for r in results)


def test_memory_verdict_per_rank(capsys, empty_config, tmp_path):
    """Each rank's peak against the device's usable memory: tiny in 2 stages fits a DGX H100's
    72 GiB; on a device of 1 MiB (90% usable) neither stage does, exit status 2 and one line."""
    argv = [empty_config, "--world", "2", "--jobs", "1", "--set", "model=tiny", "--set", "layout.pipe=2",
            "--set", "train.global_batch=8"]
    main([*argv, "--machine", "dgx-h100"])
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"rank \d \(stage \d\): peak ", line)]
    assert len(lines) == 2, lines
    for rank, line in enumerate(lines):
        assert re.fullmatch(rf"rank {rank} \(stage {rank}\): peak \d+\.\d MiB of 72\.0 GiB usable on "
                            r"dgx-h100: fits", line), line
    profile = yaml.safe_load((MACHINES_DIR / "dgx-h100.yaml").read_text())
    (tmp_path / "small.yaml").write_text(yaml.safe_dump({**profile, "name": "small", "memory_gb": 2.0**-10}))
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--machine", str(tmp_path / "small.yaml")])
    out, err = capsys.readouterr()
    assert stop.value.code == 2
    assert re.findall(r"^rank (\d) \(stage \d\): peak [\d.]+ MiB of 921\.6 KiB usable on small: does not fit$",
                      out, re.M) == ["0", "1"], out
    assert re.fullmatch(r"axon dry-run: error: 2 of 2 rank\(s\) rehearsed do not fit in small's 921\.6 KiB usable: "
                        r"rank 0 \(stage 0\), rank 1 \(stage 1\); the fullest, rank \d, peaks at [\d.]+ MiB\n", err), err


def test_ranks_in_parallel_processes_give_the_same_results(capfd, empty_config, monkeypatch):
    """--jobs 2 spawns two processes; every rank's numbers are those of the in-process run. The
    spawned rehearsals keep the fake process group's C++ warnings to themselves (torch in this
    test process started before the dry run could quiet it, so only the spawned ones are checked)."""
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL", raising=False)
    argv = [empty_config, "--world", "4", "--json", "--set", "model=1M", "--set", "layout.pipe=2",
            "--set", "layout.col=2", "--set", "train.global_batch=8"]
    runs, errs = [], []
    for jobs in ("1", "2"):
        main([*argv, "--jobs", jobs])
        out, err = capfd.readouterr()
        runs.append([{k: v for k, v in r.items() if k != "seconds"} for r in json.loads(out)])
        errs.append(err)
    assert [r["rank"] for r in runs[0]] == [0, 1, 2, 3]
    assert runs[1] == runs[0]
    assert "No backend of type" not in errs[1], errs[1][:500]


@pytest.mark.parametrize("recompute", ["none", "block"])
def test_interleaved_stages_agree_with_perfmodel(recompute):
    """virtual_stages 2: every chunk sends (v - 1 or v sends each way per micro-batch), and
    activations follow the interleaved order's chunks in flight."""
    layout = Layout(pipe=2, row=2, virtual_stages=2)
    config = config_for(layout, "bfloat16", recompute, 4, model={**MODEL, "layers": 4})
    for rank in default_ranks(config):
        result = rehearse(config, rank)
        sends = [r for r in result["collectives"] if r["op"] == "send"]
        assert sends and all(r["count"] == r["perfmodel_count"] for r in sends), sends
        assert result["collectives_agree"] and result["collective_bytes"] == result["perfmodel_collective_bytes"]
        assert_memory_agrees(result)
