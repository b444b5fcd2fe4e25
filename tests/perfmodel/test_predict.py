"""perfmodel's formulas against hand-computed cases, its search, CLI and profiles.

Nothing here imports torch: one test proves the planner runs with torch unimportable.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from perfmodel.cli import main as cli_main
from perfmodel.collectives import collective_time, group_placement
from axon.spec.layout import AXES, Layout, factorizations
from perfmodel.machine import MACHINES_DIR, ProfileError, load_machine, machine_from_dict, machine_to_dict
from axon.spec.shapes import ModelShape, preset
from perfmodel.predict import GemmClock, predict
from perfmodel.search import layout_problem, plan
from axon.spec.training import TrainingSetup
from perfmodel.workload import stage_parameters

REPO = Path(__file__).resolve().parents[2]
BASE = dict(name="hand", devices_per_node=4, memory_gb=40, peak_tflops={"float32": 10, "bfloat16": 100},
            memory_bandwidth_gbs=1000, intra_node={"bandwidth_gbs": 100, "latency_us": 2},
            inter_node={"bandwidth_gbs": 25, "latency_us": 5}, nics_per_node=4,
            gemm_efficiency=[[1e6, 0.2], [1e8, 0.6]], overlap_efficiency=1.0, op_overhead_us=0)
HAND = machine_from_dict(BASE)


def test_ring_formulas_and_links():
    intra = group_placement(Layout(col=4), ("col",), HAND)
    assert intra.intra and intra.size == 4
    # all-reduce: 2(p-1) a + 2(p-1)/p n/B = 6 * 2 us + 1.5 * 1 GB / 100 GB/s
    assert collective_time("all_reduce", 1e9, intra, HAND) == pytest.approx(12e-6 + 0.015)
    # all-gather and reduce-scatter: (p-1) a + (p-1)/p n/B
    assert collective_time("all_gather", 1e9, intra, HAND) == pytest.approx(6e-6 + 0.0075)
    assert collective_time("reduce_scatter", 4e8, intra, HAND) == pytest.approx(6e-6 + 0.003)


def test_nics_are_shared_by_the_groups_leaving_a_node():
    # data=2 x col=4 on 4-device nodes: each data group is one rank per node, so all 4 devices
    # of a node send out at once over 4 NICs of 25 GB/s: 25 GB/s each, inter-node latency.
    spread = group_placement(Layout(data=2, col=4), ("data",), HAND)
    assert not spread.intra and spread.bandwidth_gbs == pytest.approx(25) and spread.latency_us == 5
    # col=4 x data=2 with data innermost: col groups are {0,2,4,6}: 2 per node, 2 streams per node.
    swapped = group_placement(Layout(data=2, col=4, order=("pipe", "depth", "row", "col", "data")), ("col",), HAND)
    assert not swapped.intra and swapped.bandwidth_gbs == pytest.approx(4 * 25 / 2)
    # A group filling whole nodes sends one stream per node: the NICs' full 100 GB/s, capped by the link.
    whole = group_placement(Layout(col=8), ("col",), HAND)
    assert not whole.intra and whole.bandwidth_gbs == pytest.approx(100)
    ar = collective_time("all_reduce", 8e8, spread, HAND)
    assert ar == pytest.approx(2 * 1 * 5e-6 + 2 * 1 / 2 * 8e8 / 25e9)


def test_measured_fit_wins_and_scales_by_ring_algebra():
    machine = machine_from_dict({**BASE, "collectives": {"all_reduce": {"intra": {2: {"alpha_us": 10, "bandwidth_gbs": 1}}}}})
    two = group_placement(Layout(col=2), ("col",), machine)
    assert collective_time("all_reduce", 1e6, two, machine) == pytest.approx(10e-6 + 1e-3)
    four = group_placement(Layout(col=4), ("col",), machine)
    # alpha x (3 / 1); bandwidth x (1/2) / (3/4)
    assert collective_time("all_reduce", 1e6, four, machine) == pytest.approx(30e-6 + 1e6 / (1e9 * 2 / 3))
    # No fit for all-gather: the link model.
    assert collective_time("all_gather", 1e6, two, machine) == pytest.approx(2e-6 + 0.5 * 1e6 / 100e9)


def test_blocking_collectives_pay_the_measured_latency_between_compute():
    machine = machine_from_dict({**BASE, "blocking_latency_us": {"intra": {2: 500}}})
    two, four = (group_placement(Layout(col=p), ("col",), machine) for p in (2, 4))
    assert collective_time("all_reduce", 8, two, machine, blocking=True) == pytest.approx(500e-6)
    assert collective_time("all_reduce", 8, four, machine, blocking=True) == pytest.approx(1500e-6)  # x (p-1)
    assert collective_time("all_reduce", 8, two, machine) == pytest.approx(2 * 2e-6 + 8 / 100e9)
    big = 1e9  # where the ring takes longer than the floor, the ring wins
    assert collective_time("all_reduce", big, two, machine, blocking=True) == pytest.approx(4e-6 + big / 100e9)
    assert machine_from_dict(machine_to_dict(machine)) == machine  # what calibrate writes reads back the same


def test_pipeline_transfers_pay_the_two_rank_blocking_latency():
    """The engine waits on each batch of sends and receives: a two-rank rendezvous whatever the
    number of stages, so a send pays the 2-rank latency (500 us here), not the pipe group's."""
    machine = machine_from_dict({**BASE, "blocking_latency_us": {"intra": {2: 500}}})
    four = group_placement(Layout(pipe=4), ("pipe",), machine)
    assert collective_time("send", 8, four, machine, blocking=True) == pytest.approx(500e-6)
    assert collective_time("send", 8, four, machine) == pytest.approx(2e-6 + 8 / 100e9)  # the link alone
    big = 1e9
    assert collective_time("send", big, four, machine, blocking=True) == pytest.approx(2e-6 + big / 100e9)


def test_gemm_efficiency_interpolates_in_log_flops():
    clock = GemmClock(HAND, "float32")
    assert clock.efficiency(1e7) == pytest.approx(0.4)
    assert clock.efficiency(1e3) == 0.2 and clock.efficiency(1e12) == 0.6  # flat outside
    assert clock.seconds(1e7) == pytest.approx(1e7 / (10e12 * 0.4))


def test_parameters_per_rank_by_hand():
    tiny = preset("tiny")  # 2 layers, hidden 64, 4 heads of 16, 2 kv heads, ffn 192, vocab 256
    block = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 192
    sharded = 2 * block + 256 * 64 * 2  # blocks, LM head, embedding
    assert stage_parameters(tiny, Layout(), 2, True, True) == {"sharded": sharded, "replicated": 5 * 64}
    assert stage_parameters(tiny, Layout(depth=2, col=2), 2, True, True) == {"sharded": sharded / 4,
                                                                             "replicated": 5 * 32}


def test_pipeline_bubble_is_p_minus_1_over_m():
    # A tiny vocabulary: the embedding and head barely weigh, so the stages are nearly even
    # and the replayed 1F1B schedule gives the textbook bubble.
    shape = ModelShape(layers=8, hidden=256, heads=8, kv_heads=8, ffn=512, vocab=8, seq_len=128)
    setup = TrainingSetup(global_batch=16, seq_len=128, micro_batch=2, dtype="float32")
    p = predict(shape, Layout(pipe=4), HAND, setup)
    assert p.micro_batches == 8
    pipelined = p.step_time_s - p.breakdown["pipeline_bubble"] - p.breakdown["optimizer"] - p.breakdown["step_sync"]
    assert p.breakdown["pipeline_bubble"] / pipelined == pytest.approx(3 / 8, rel=0.02)
    # A heavy head makes the last stage the slowest; the others' extra time hides in its shadow,
    # so the bubble is still about (p - 1) slots of the stages feeding it, not of the slowest.
    heavy = predict(ModelShape(layers=8, hidden=256, heads=8, kv_heads=8, ffn=512, vocab=16384, seq_len=128),
                    Layout(pipe=4), HAND, setup)
    assert 0 < heavy.breakdown["pipeline_bubble"] < 3 / 8 * (heavy.step_time_s - heavy.breakdown["pipeline_bubble"])


def test_in_context_slowdown_scales_compute_and_oversubscribed_cores_absorb_the_bubble():
    shape = ModelShape(layers=8, hidden=256, heads=8, kv_heads=8, ffn=512, vocab=8, seq_len=128)
    setup = TrainingSetup(global_batch=16, seq_len=128, micro_batch=2, dtype="float32")
    machine = machine_from_dict({**BASE, "op_overhead_us": 5})
    compute = ("gemm", "attention", "elementwise", "optimizer")
    for layout in (Layout(data=4), Layout(row=2, col=2)):
        plain = predict(shape, layout, machine, setup).breakdown
        slowed = predict(shape, layout, machine_from_dict({**BASE, "op_overhead_us": 5, "in_context_slowdown": 1.25}),
                         setup).breakdown
        for k in compute:
            assert slowed[k] == pytest.approx(1.25 * plain[k], rel=1e-12), k
        # With every overlap window at 100%, slower compute hides at least as much communication.
        assert sum(slowed[k] for k in slowed if k not in compute) <= sum(plain[k] for k in plain if k not in compute)
    # pipe=4, 8 micro-batches, one rank per stage on a node of 4, stages near even (a vocabulary
    # of 8): the replay is about (8 + 3) slots. Sharing cores, a stage alone in the warm-up or
    # drain runs faster (up to f times); in the steady state all four compute: the step falls
    # with f, towards the busy 8 slots, never below the work over the cores (the mean stage).
    base = predict(shape, Layout(pipe=4), machine, setup)
    busy = base.step_time_s - base.breakdown["pipeline_bubble"]
    steps = [predict(shape, Layout(pipe=4), machine_from_dict({**BASE, "op_overhead_us": 5, "oversubscription": f}),
                     setup).step_time_s for f in (1.25, 2, 4)]
    assert base.step_time_s > steps[0] > steps[1] > steps[2] > 0.99 * busy
    assert base.breakdown["pipeline_bubble"] > 0.25 * busy
    with pytest.raises(ProfileError, match="oversubscription .* at least 1, got 0.5"):
        machine_from_dict({**BASE, "oversubscription": 0.5})


def test_memory_by_hand_and_layouts_that_do_not_fit():
    tiny = preset("tiny")
    setup = TrainingSetup(global_batch=8, seq_len=64, dtype="float32")
    p = predict(tiny, Layout(depth=2), HAND, setup)
    local = stage_parameters(tiny, Layout(depth=2), 2, True, True)
    params = local["sharded"] + local["replicated"]
    assert p.memory["weights"] == pytest.approx(params * 4 / 2**30)
    assert p.memory["optimizer"] == pytest.approx(params * 8 / 2**30)
    big = predict(preset("405B"), Layout(data=8), HAND, TrainingSetup(global_batch=8, seq_len=8192))
    assert not big.fits and "GiB per device" in big.why_not and "36.0 GiB usable" in big.why_not


def test_overlap_hides_communication_and_never_adds_time():
    shape = preset("1M")
    on = TrainingSetup(global_batch=16, seq_len=128, dtype="float32")
    off = TrainingSetup(global_batch=16, seq_len=128, dtype="float32", overlap=())
    for layout in (Layout(depth=4), Layout(data=2, depth=2), Layout(row=2, col=2)):
        p_on, p_off = predict(shape, layout, HAND, on), predict(shape, layout, HAND, off)
        assert p_on.step_time_s <= p_off.step_time_s
        assert sum(p_on.breakdown.values()) == pytest.approx(p_on.step_time_s)
    assert predict(shape, Layout(depth=4), HAND, on).breakdown["depth_gather"] < \
        predict(shape, Layout(depth=4), HAND, off).breakdown["depth_gather"]


def test_search_covers_every_factorization_and_respects_divisibility():
    shape = preset("1M")  # 4 heads, 2 kv heads: row at most 2
    setup = TrainingSetup(global_batch=24, seq_len=128, dtype="float32")
    predictions, ruled_out = plan(shape, 12, HAND, setup)
    plain = [p for p in predictions if p.layout.virtual_stages == 1]  # pipelined ones are also tried interleaved
    assert len(plain) + sum(ruled_out.values()) == len(factorizations(12, AXES))
    sizes = {tuple(getattr(p.layout, a) for a in AXES) for p in predictions}
    assert (3, 1, 1, 1, 4) in sizes and (1, 1, 3, 2, 2) in sizes  # factors of 3 are searched
    for p in predictions:
        assert p.layout.row <= 2 and layout_problem(shape, p.layout, setup) is None
    fitting = [p.step_time_s for p in predictions if p.fits]
    assert fitting == sorted(fitting)


def test_layout_problem_names_the_key_and_numbers():
    setup = TrainingSetup(global_batch=6, seq_len=128)
    # The engine's config check raises the same sentences (axon/spec/layout_rules.py).
    assert layout_problem(preset("1M"), Layout(row=8), setup) == \
        "model.heads=4 is not divisible by layout.row=8, which splits it"
    assert layout_problem(preset("1M"), Layout(row=4), setup) == \
        "model.kv_heads=2 is not divisible by layout.row=4, which splits it"
    assert layout_problem(preset("1M"), Layout(data=4), setup) == \
        "train.global_batch=6 is not divisible by layout.data x layout.depth = 4 x 1 = 4"


def test_shipped_profiles_load_and_cite_sources():
    names = sorted(p.stem for p in MACHINES_DIR.glob("*.yaml"))
    assert {"perlmutter", "frontier", "alps", "dgx-h100"} <= set(names)
    for name in names:
        machine = load_machine(name)
        assert machine.peak_tflops["bfloat16"] > machine.peak_tflops["float32"] > 0
        text = (MACHINES_DIR / f"{name}.yaml").read_text()
        assert text.count("#") >= 10 and "http" in text  # every number carries its source


def test_profile_errors_name_the_key(tmp_path):
    with pytest.raises(ProfileError, match="intra_node.bandwidth_gbs must be a positive number, got -1"):
        machine_from_dict({**BASE, "intra_node": {"bandwidth_gbs": -1, "latency_us": 2}})
    with pytest.raises(ProfileError, match="unknown key 'nic'"):
        machine_from_dict({**BASE, "nic": 4})
    with pytest.raises(ProfileError, match="neither a shipped profile"):
        load_machine("nosuchmachine")


def test_plan_json_and_explain(tmp_path, capsys):
    assert cli_main(["plan", "--model", "8B", "--gpus", "64", "--machine", "perlmutter", "--global-batch", "256",
                     "--seq", "4096", "--top", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 5
    for row in rows:
        assert set(row["layout"]) >= {"data", "pipe", "depth", "row", "col"}
        assert math.prod(row["layout"][a] for a in AXES) == 64
        assert sum(row["breakdown"].values()) == pytest.approx(row["step_time_s"])
        assert row["tflops_per_gpu"] > 0 and 0 < row["mfu"] < 1 and row["memory_gb_per_gpu"] > 0
    assert [r["step_time_s"] for r in rows] == sorted(r["step_time_s"] for r in rows)
    best = ",".join(f"{a}={n}" for a, n in rows[0]["layout"].items() if a in AXES + ("virtual_stages",))
    assert cli_main(["explain", "--model", "8B", "--gpus", "64", "--machine", "perlmutter", "--global-batch", "256",
                     "--seq", "4096", "--layout", best, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step_time_s"] == pytest.approx(rows[0]["step_time_s"])
    assert cli_main(["explain", "--model", "8B", "--gpus", "64", "--machine", "perlmutter", "--global-batch", "256",
                     "--layout", "data=8,row=8"]) == 0
    assert "time by component" in capsys.readouterr().out
    assert cli_main(["explain", "--model", "1M", "--gpus", "8", "--machine", "perlmutter", "--global-batch", "8",
                     "--layout", "row=8"]) == 2
    assert "model.heads=4 is not divisible by layout.row=8" in capsys.readouterr().err


def test_planner_never_imports_torch():
    code = ("import sys; sys.modules['torch'] = None\n"  # any import of torch now raises
            "from perfmodel.cli import main\n"
            "assert main(['plan', '--model', '70B', '--gpus', '4096', '--machine', 'frontier', '--global-batch',"
            " '1024', '--seq', '4096', '--top', '3']) == 0\n"
            "assert main(['explain', '--model', '70B', '--gpus', '4096', '--machine', 'frontier', '--global-batch',"
            " '1024', '--seq', '4096', '--layout', 'data=32,depth=16,row=8']) == 0\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "biggest cost" in result.stdout and "time by component" in result.stdout


def test_cli_prices_bf16_gradient_reductions(capsys):
    """--grad-reduce-dtype bfloat16 halves the bytes of the data all-reduces and depth
    reduce-scatters: those components get cheaper, nothing else changes."""
    base = ["explain", "--model", "8B", "--gpus", "64", "--machine", "perlmutter", "--global-batch", "256",
            "--layout", "data=8,depth=8", "--overlap", "none", "--json"]
    breakdowns = {}
    for dtype in ("float32", "bfloat16"):
        assert cli_main(base + ["--grad-reduce-dtype", dtype]) == 0
        breakdowns[dtype] = json.loads(capsys.readouterr().out)["breakdown"]
    fp32, bf16 = breakdowns["float32"], breakdowns["bfloat16"]
    for component in ("data_comm", "depth_reduce_scatter"):
        assert 0 < bf16[component] < 0.75 * fp32[component], component
    for component in ("gemm", "attention", "depth_gather", "tensor_comm"):
        assert bf16[component] == pytest.approx(fp32[component]), component


def test_async_gathers_and_reduce_scatters_wait_out_fixed_costs_side_by_side():
    """depth=2 inside a node of 4 whose link has a 1 ms latency: a gather or reduce-scatter has a
    fixed cost of 1 ms (ring: one pass of p - 1 = 1 step). With nothing hidden behind compute
    (overlap_efficiency 0), two at a time save 0.5 ms each. Per micro-batch, hand count, 2 blocks:
    gathers of 7 matrices a block forward and again backward, the embedding both ways and the
    head forward (31); reduce-scatters of 7 a block and the embedding (15; the head's is blocking)."""
    shape = ModelShape(layers=2, hidden=64, heads=4, kv_heads=4, ffn=128, vocab=64, seq_len=16)
    setup = TrainingSetup(global_batch=4, seq_len=16, micro_batch=1, dtype="float32")
    profile = {**BASE, "intra_node": {"bandwidth_gbs": 100, "latency_us": 1000}, "overlap_efficiency": 0.0}
    serial = predict(shape, Layout(depth=2), machine_from_dict(profile), setup)
    side_by_side = predict(shape, Layout(depth=2), machine_from_dict({**profile, "concurrent_collectives": 2}), setup)
    saved = {k: serial.breakdown[k] - side_by_side.breakdown[k] for k in serial.breakdown}
    micro_batches = 2  # 4 sequences over depth 2, one per micro-batch
    assert saved["depth_gather"] == pytest.approx(micro_batches * 31 * 0.5e-3, rel=1e-6)
    assert saved["depth_reduce_scatter"] == pytest.approx(micro_batches * 15 * 0.5e-3, rel=1e-6)
    assert all(abs(v) < 1e-15 for k, v in saved.items() if not k.startswith("depth_"))
