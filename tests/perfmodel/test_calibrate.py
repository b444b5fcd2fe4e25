"""perfmodel calibrate: a quick calibration on 4 gloo ranks yields a loadable profile whose
all-reduce fit predicts an all-reduce timed here directly; one process writes a profile
without collectives; the fit, the launcher variables and the groups by hand."""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from perfmodel.calibrate import launch_from_env, main, run_calibration
from perfmodel.calibrate.compute import ROLES, min_dim_curves, min_dim_shapes, role_shape
from perfmodel.calibrate.measure import fit_alpha_beta, partitions
from perfmodel.machine import load_machine, machine_from_dict
from axon.spec.launcher import slurm_port
from axon.testing.spawn import run_distributed

MIB = 1 << 20


def calibrate_then_time_all_reduce(rank: int, world: int):
    """The quick profile, and a 1 MiB all-reduce over all ranks timed directly: slowest rank,
    median of repeats, the way a training step sees it."""
    import torch.distributed as dist

    profile = run_calibration(quick=True)
    buf = torch.zeros(MIB // 4)
    dist.all_reduce(buf)  # warm-up
    runs = []
    for _ in range(7):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(4):
            dist.all_reduce(buf)
        runs.append((time.perf_counter() - start) / 4)
    slowest = torch.tensor(runs, dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return profile, statistics.median(slowest.tolist()), torch.get_num_threads(), len(os.sched_getaffinity(0))


def test_quick_calibration_on_four_ranks_predicts_a_direct_all_reduce():
    results = run_distributed(4, calibrate_then_time_all_reduce)
    profile, measured, threads, cores = results[0]
    assert all(r[0] == profile for r in results)  # every rank fitted the same numbers
    machine = machine_from_dict(profile, "calibrated")
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        assert set(machine.collectives[op]["intra"]) == {2, 4}, op
    fit = machine.collectives["all_reduce"]["intra"][4]
    predicted = fit.alpha_us * 1e-6 + MIB / (fit.bandwidth_gbs * 1e9)
    assert measured / 3 < predicted < measured * 3, (predicted, measured, fit)
    assert machine.devices_per_node == 4 and machine.peak_tflops["float32"] > 0
    assert machine.memory_bandwidth_gbs > 0 and machine.op_overhead_us > 0
    # The peak is the best GEMM measured; curve points are medians of shapes of like size
    assert all(0 < e <= 1 for _, e in machine.gemm_efficiency) and max(e for _, e in machine.gemm_efficiency) > 0.5
    assert 0 <= machine.overlap_efficiency <= 1
    assert "with 4 ranks" in machine.source
    # GEMMs by smallest dimension (quick: 16, 64, 256), SDPA both ways, every memory-bound kind
    assert set(machine.gemm_efficiency_by_min_dim) == {16, 64, 256}
    assert all(0 < e <= 1 for points in machine.gemm_efficiency_by_min_dim.values() for _, e in points)
    assert set(machine.attention_efficiency) == {"forward", "backward"}
    assert all(0 < e <= 2 for points in machine.attention_efficiency.values() for _, e in points)
    assert set(machine.memory_efficiency) == {"norm", "rope", "swiglu", "residual", "loss", "optimizer"}
    assert all(0 < e <= 1 for points in machine.memory_efficiency.values() for _, e in points)
    # A whole reference step against the price of its ops: the same work, so within a few x;
    # four ranks' threads over the cores they share.
    assert 0.5 < machine.in_context_slowdown < 3
    assert machine.oversubscription == pytest.approx(max(1.0, 4 * threads / cores), rel=1e-3)


def test_one_process_writes_a_profile_without_collectives(tmp_path, monkeypatch):
    for name in list(os.environ):  # whatever launcher started pytest, calibrate must see none
        if name in ("RANK", "WORLD_SIZE") or name.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_")):
            monkeypatch.delenv(name)
    threads = torch.get_num_threads()
    try:
        assert main(["--out", str(tmp_path / "one.yaml"), "--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    machine = load_machine(tmp_path / "one.yaml")
    assert machine.collectives == {} and machine.devices_per_node == 1
    assert machine.peak_tflops["float32"] > 0 and "single process" in machine.source


def test_fit_recovers_alpha_and_bandwidth_and_keeps_alpha_non_negative():
    alpha, bw = 300e-6, 2e9
    points = [(n, alpha + n / bw) for n in (8, 4096, 65536, 1 << 20, 1 << 24)]
    got_alpha, got_bw = fit_alpha_beta(points)
    assert got_alpha == pytest.approx(alpha, rel=1e-6) and got_bw == pytest.approx(bw, rel=1e-6)
    # Times that would need a negative alpha: the fit through zero instead.
    got_alpha, got_bw = fit_alpha_beta([(1000, 1e-6), (2000, 3e-6), (3000, 5e-6)])
    assert got_alpha == 0 and got_bw > 0


def _place(env):
    info, name = launch_from_env(env)
    return name, info.rank, info.world_size, info.local_rank, info.local_world_size, info.master_addr, info.master_port


def test_launchers_map_to_rank_world_and_local_as_the_engine_reads_them():
    # srun without MASTER_*: the step's first node and a port from the job id, as axon.runtime.bootstrap finds them.
    srun = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
            "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "nid[001-002]", "SLURM_JOB_ID": "123"}
    assert _place(srun) == ("srun", 5, 8, 1, 4, "nid001", slurm_port(123, 0))  # the engine's one port rule
    mpich = {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "3", "MPI_LOCALNRANKS": "4",
             "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert _place(mpich) == ("mpiexec", 3, 4, 3, 4, "h", 1)
    assert _place({}) == ("single process", 0, 1, 0, 1, None, None)
    with pytest.raises(ValueError, match="mpiexec started 2 ranks but MASTER_ADDR and MASTER_PORT and the local "
                                         "rank are not set"):
        launch_from_env({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="SLURM_PROCID=8 must be smaller than SLURM_NTASKS=8"):
        launch_from_env({**srun, "SLURM_PROCID": "8"})


def test_groups_on_two_nodes_of_four():
    hosts = ["a"] * 4 + ["b"] * 4
    found = partitions(hosts)
    assert found[("intra", 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert found[("inter", 8)] == [list(range(8))]
    # One rank per node wins over consecutive ranks for an inter group of 2.
    assert found[("inter", 2)] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert ("intra", 8) not in found


def test_gemm_roles_put_the_small_dimension_where_axon_has_it():
    # forward x @ W^T (K = in is small when col is large), dX (N = in), dW (M = out)
    assert [role_shape(role, 16, 256) for role in ROLES] == [(256, 256, 16), (256, 16, 256), (16, 256, 256)]
    assert {held for _, held in ROLES.values()} == {"NT", "NN", "TN"}
    assert all(2.0 * b * b * d <= 4.5e9 and b >= d for d, b in min_dim_shapes(cuda=False, quick=False))


def test_min_dim_curves_take_the_median_of_the_three_roles():
    peak = 1e12
    seconds = lambda flops, eff: flops / (eff * peak)  # noqa: E731
    f16, f64 = 2.0 * 256 * 256 * 16, 2.0 * 256 * 256 * 64
    results = [((256, 256, 16), "forward", seconds(f16, 0.2)), ((256, 16, 256), "dX", seconds(f16, 0.5)),
               ((16, 256, 256), "dW", seconds(f16, 0.4)), ((256, 256, 64), "forward", seconds(f64, 0.9)),
               ((256, 64, 256), "dX", seconds(f64, 0.7)), ((64, 256, 256), "dW", seconds(f64, 0.8))]
    curves = min_dim_curves(results, peak)
    assert curves.keys() == {16, 64}
    assert curves[16] == [(f16, pytest.approx(0.4))] and curves[64] == [(f64, pytest.approx(0.8))]


def test_threads_per_core_counts_each_node_s_ranks_over_the_cores_they_may_use():
    from perfmodel.calibrate import reference_from_args, threads_per_core

    shared = [("a", frozenset({0, 1}), 1)] * 8  # eight one-thread ranks in one 2-core allocation
    bound = [("a", frozenset({r}), 1) for r in range(4)] + [("b", frozenset({0, 1}), 2)]  # srun --cpu-bind
    assert threads_per_core(shared) == 4.0 and threads_per_core(bound) == 1.0
    assert threads_per_core([("a", frozenset(range(8)), 2)]) == 1.0  # never below one
    shape, micro = reference_from_args("1M", 64, 3)
    assert (shape.seq_len, shape.hidden, micro) == (64, 128, 3) and reference_from_args(None, None, 1) is None
    with pytest.raises(ValueError, match="--model '7M' is not a preset"):
        reference_from_args("7M", None, 1)
    with pytest.raises(ValueError, match="--micro-batch must be at least 1, got 0"):
        reference_from_args("1M", None, 0)


def test_op_overhead_is_a_tiny_steps_time_beyond_its_work_over_the_ops_predict_counts():
    """A bench that reports the tiny reference step at its priced work plus 280 ops of 7 us:
    2 blocks x (40 forward + 60 backward) + 20 + 30 for the ends + 30 for AdamW (hand count)."""
    from perfmodel.calibrate.reference import measure_op_overhead_us, overhead_shape, priced_compute_s

    profile = {"name": "t", "devices_per_node": 1, "nics_per_node": 1, "overlap_efficiency": 0.0, "peak_tflops": {"float32": 0.05}, "memory_gb": 8,
               "memory_bandwidth_gbs": 10, "intra_node": {"bandwidth_gbs": 1, "latency_us": 5},
               "inter_node": {"bandwidth_gbs": 1, "latency_us": 5}, "gemm_efficiency": [[1e4, 0.1], [1e8, 0.6]]}
    machine = machine_from_dict({**profile, "op_overhead_us": 3, "in_context_slowdown": 1.3})
    bare = machine_from_dict({**profile, "op_overhead_us": 0})
    work_s = priced_compute_s(bare, overhead_shape(), 1, "float32")
    assert 0 < work_s < 280 * 7e-6  # the tiny step's work is small next to its ops

    class Bench:
        device = torch.device("cpu")

        def seconds(self, fn, local=False):
            fn()  # the step runs
            return work_s + 280 * 7e-6

    assert measure_op_overhead_us(Bench(), machine, "float32") == pytest.approx(7.0, rel=1e-9)


def test_interleaved_rounds_time_each_function_in_turn_on_one_clock(monkeypatch):
    """Three functions that advance a fake clock by 1, 2 and 3 ms: every round reads those
    times, and the calls alternate round by round."""
    import perfmodel.calibrate.measure as measure

    clock, calls = [0.0], []

    def ticking(label, seconds):
        def fn():
            calls.append(label)
            clock[0] += seconds
        return fn

    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock[0])
    bench = measure.Bench(torch.device("cpu"), world=1, quick=True)
    bench.window_s = 0.0  # a local op then runs its planned calls once per round
    fns = [(ticking("a", 1e-3), True), (ticking("b", 2e-3), False), (ticking("c", 3e-3), False)]
    rows = bench.interleaved(fns, rounds=4)
    assert [[round(t * 1e3, 9) for t in row] for row in rows] == [[1.0, 2.0, 3.0]] * 4
    timed = calls[3 * 2:]  # after each function's warm-up call and pilot
    runs = [label for i, label in enumerate(timed) if i == 0 or timed[i - 1] != label]
    assert runs == ["a", "b", "c"] * 4


def test_overlap_efficiency_is_the_median_of_paired_rounds():
    """Rounds (t_c, t_m, t_b) in ms whose efficiencies (t_c + t_m - t_b) / min(t_c, t_m) are,
    by hand, 0.5, 0.0, -0.1, 0.3 and 2/3: the median 0.3, not the 0.1 the columns' medians give."""
    from perfmodel.calibrate.measure import overlap_efficiency

    rounds = [(100, 100, 150), (100, 100, 200), (100, 100, 210), (120, 100, 190), (100, 90, 130)]

    class Bench:
        device, cuda = torch.device("cpu"), False

        def seconds(self, fn, local=False):
            return 0.1  # sizes the GEMM burst; the all-reduce is not run

        def interleaved(self, fns, rounds_count):
            assert [local for _, local in fns] == [True, False, False] and rounds_count == 15
            return [[t / 1e3 for t in row] for row in rounds]

    efficiency, (nbytes, t_c, t_m, t_b) = overlap_efficiency(Bench(), None, 2, (1e-3, 1e9), [((32, 32, 32), 0.01)],
                                                              "float32", quick=False)
    assert efficiency == pytest.approx(0.3)
    assert (t_c, t_m, t_b) == pytest.approx((0.1, 0.1, 0.19))  # the columns' medians, reported
    assert nbytes % 8 == 0
