"""Real 4-process launches of tests/end_to_end/launch_probe.py: torchrun, mpiexec, and srun's environment.

Each launch starts 4 gloo ranks on this machine; every rank all-reduces rank+1, so all of
them must report 1+2+3+4 = 10. Children get an environment with every launcher variable
stripped, so one launcher's variables cannot leak into another's test.
"""

import json
import os
import sys
from pathlib import Path

from axon.spec.launcher import slurm_port
from axon.testing.processes import REPO, clean_env, free_port, start, wait

PROBE = REPO / "tests" / "end_to_end" / "launch_probe.py"
WORLD = 4


def _records(out: Path, log: str) -> list[dict]:
    files = sorted(out.parent.glob(out.name + ".rank*"))
    assert len(files) == WORLD, f"expected {WORLD} rank files, got {[f.name for f in files]}\n{log}"
    recs = []
    for f in files:
        rec = json.loads(f.read_text())
        assert f.name == f"{out.name}.rank{rec['rank']}"  # each rank wrote its own file
        recs.append(rec)
    return sorted(recs, key=lambda r: r["rank"])


def _check_world(recs: list[dict], launcher: str) -> None:
    assert [r["rank"] for r in recs] == [0, 1, 2, 3]
    assert [r["dist_rank"] for r in recs] == [0, 1, 2, 3]
    for r in recs:
        assert r["world_size"] == WORLD and r["dist_world_size"] == WORLD
        assert r["launcher"] == launcher
        assert r["backend"] == "gloo"
        assert r["all_reduce"] == 10.0
        # One node: local rank is the global rank.
        assert (r["local_rank"], r["local_world_size"]) == (r["rank"], WORLD)


def _expected_threads() -> int:
    total = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0))
    return allowed if allowed < total else max(1, total // WORLD)


def test_torchrun(tmp_path):
    out = tmp_path / "torchrun.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD),
           "--master-port", str(free_port()), str(PROBE), str(out)]
    log = wait([start(cmd, clean_env())])
    recs = _records(out, log)
    _check_world(recs, "torchrun")
    # torchrun exports OMP_NUM_THREADS=1 for several workers; an explicit setting must win.
    assert [r["num_threads"] for r in recs] == [1] * WORLD


def test_mpiexec(tmp_path):
    out = tmp_path / "mpi.json"
    mpiexec = Path(sys.executable).parent / "mpiexec"
    assert mpiexec.exists(), f"{mpiexec} missing: pip install mpich"
    # "-launcher fork" keeps hydra on this host even when the tests run inside a Slurm job.
    # Hiding MPICH's MPI_LOCALRANKID/MPI_LOCALNRANKS makes the ranks find their node-local
    # rank through MPI's shared-memory communicator, the path other MPIs need.
    cmd = [str(mpiexec), "-launcher", "fork", "-n", str(WORLD), sys.executable, str(PROBE), str(out),
           "MPI_LOCALRANKID,MPI_LOCALNRANKS"]
    log = wait([start(cmd, clean_env())])
    recs = _records(out, log)
    _check_world(recs, "mpi")
    assert [r["num_threads"] for r in recs] == [_expected_threads()] * WORLD


def test_slurm_environment(tmp_path):
    """What srun exports, set by hand: the port comes from the job and step ids alone, the same on every rank."""
    out = tmp_path / "slurm.json"
    step = 2  # a second concurrent step of the job would derive another port
    job_id = next(job for job in range(7_000_000, 7_000_200)  # one whose derived port is free now
                  if _free(slurm_port(job, step)))
    procs = []
    for rank in range(WORLD):
        env = clean_env()
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(WORLD), SLURM_LOCALID=str(rank),
                   SLURM_NODEID="0", SLURM_STEP_TASKS_PER_NODE=str(WORLD),
                   SLURM_STEP_NODELIST="localhost", SLURM_JOB_ID=str(job_id), SLURM_STEP_ID=str(step))
        procs.append(start([sys.executable, str(PROBE), str(out)], env))
    log = wait(procs)
    recs = _records(out, log)
    _check_world(recs, "slurm")
    assert [r["master_port"] for r in recs] == [slurm_port(job_id, step)] * WORLD
    assert [r["num_threads"] for r in recs] == [_expected_threads()] * WORLD


def _free(port: int) -> bool:
    try:
        return free_port(within=(port, port + 1)) == port
    except RuntimeError:
        return False
