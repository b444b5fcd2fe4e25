"""detect_launch on hand-made environments, the Slurm string parsers, Slurm's derived port, and
start-up on one rank (and on a taken port)."""

import socket

import pytest
import torch
import torch.distributed as dist

from axon.runtime.bootstrap import (LaunchInfo, detect_launch, expand_hostlist, free_port, init_distributed,
                            parse_tasks_per_node, shutdown)
from axon.spec.launcher import SLURM_PORTS, slurm_port


# ---------------------------------------------------------------- Slurm strings

@pytest.mark.parametrize("text, hosts", [
    ("host", ["host"]),
    ("nid[001-003,010],login7", ["nid001", "nid002", "nid003", "nid010", "login7"]),
    ("x1000c0s[0-1]b0n0", ["x1000c0s0b0n0", "x1000c0s1b0n0"]),
    ("c[1-2]n[08-09]", ["c1n08", "c1n09", "c2n08", "c2n09"]),
    ("a[9-11],b[7]", ["a9", "a10", "a11", "b7"]),
    ("frontier[00098-00100]", ["frontier00098", "frontier00099", "frontier00100"]),
    ("n1,n2,gpu[3-4]-ib", ["n1", "n2", "gpu3-ib", "gpu4-ib"]),
])
def test_expand_hostlist(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["nid[001-003", "nid001]", "nid[a-b]", "nid[5-3]"])
def test_expand_hostlist_rejects_malformed(text):
    with pytest.raises(ValueError, match="hostlist"):
        expand_hostlist(text)


@pytest.mark.parametrize("text, counts", [
    ("4(x2),3", [4, 4, 3]),
    ("8", [8]),
    ("2,1(x3)", [2, 1, 1, 1]),
])
def test_parse_tasks_per_node(text, counts):
    assert parse_tasks_per_node(text) == counts


def test_parse_tasks_per_node_rejects_malformed():
    with pytest.raises(ValueError, match="4x2"):
        parse_tasks_per_node("4x2")


# ---------------------------------------------------------------- launchers

def test_single_process():
    assert detect_launch({"HOME": "/root"}) == LaunchInfo(0, 1, 0, 1, "single", None, None)


def test_torchrun():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
           "MASTER_ADDR": "node17", "MASTER_PORT": "29500"}
    assert detect_launch(env) == LaunchInfo(5, 8, 1, 4, "torchrun", "node17", 29500)


def test_torchrun_wins_over_slurm():
    env = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4",
           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_TASKS_PER_NODE": "1",
           "SLURM_JOB_NODELIST": "nid001", "SLURM_JOB_ID": "42"}
    info = detect_launch(env)
    assert (info.launcher, info.rank, info.world_size, info.master_addr) == ("torchrun", 2, 4, "10.0.0.1")


def _srun_env(**extra):
    # Rank 6 of 11 on a 3-node step laid out 4,4,3: node 1, local task 2.
    env = {"SLURM_PROCID": "6", "SLURM_NTASKS": "11", "SLURM_LOCALID": "2", "SLURM_NODEID": "1",
           "SLURM_STEP_TASKS_PER_NODE": "4(x2),3", "SLURM_TASKS_PER_NODE": "8(x3)",
           "SLURM_STEP_NODELIST": "nid[004-005,010]", "SLURM_JOB_NODELIST": "nid[001-010]",
           "SLURM_JOB_ID": "1234567"}
    env.update(extra)
    return env


def test_slurm():
    info = detect_launch(_srun_env())
    # The step's nodelist (not the job's) names rank 0's host; the port comes from job and step (absent: 0).
    assert info == LaunchInfo(6, 11, 2, 4, "slurm", "nid004", slurm_port(1234567, 0))
    assert info.master_port == 15000 + 2930783317 % 17768  # zlib.crc32(b"1234567.0"): fixed across processes
    assert detect_launch(_srun_env(SLURM_STEP_ID="3")).master_port == slurm_port(1234567, 3)


def test_slurm_port_separates_jobs_20000_apart_and_steps_of_one_job():
    # The old rule (20000 + job % 20000) gave these pairs one port.
    for job in (1234567, 1254567, 20000, 40000, 7):
        assert slurm_port(job, 0) != slurm_port(job + 20000, 0)
        assert slurm_port(job, 0) != slurm_port(job, 1)
    ports = [slurm_port(job, step) for job in range(1000, 1100) for step in range(3)]
    assert all(SLURM_PORTS[0] <= p < SLURM_PORTS[1] for p in ports)
    assert len(set(ports)) > 280  # 300 draws from 17768 ports: a handful of birthday collisions at most


def test_slurm_last_node_and_job_nodelist():
    env = _srun_env(SLURM_PROCID="9", SLURM_LOCALID="1", SLURM_NODEID="2")
    del env["SLURM_STEP_NODELIST"]
    info = detect_launch(env)
    assert (info.rank, info.local_rank, info.local_world_size, info.master_addr) == (9, 1, 3, "nid001")


def test_slurm_master_overrides():
    info = detect_launch(_srun_env(MASTER_ADDR="nid004-hsn0", MASTER_PORT="29511"))
    assert (info.master_addr, info.master_port) == ("nid004-hsn0", 29511)


def test_slurm_job_tasks_per_node_when_no_step_value():
    env = _srun_env(SLURM_NTASKS="24", SLURM_PROCID="20", SLURM_LOCALID="4", SLURM_NODEID="2")
    del env["SLURM_STEP_TASKS_PER_NODE"]
    info = detect_launch(env)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (20, 24, 4, 8)


def test_mpich_hydra():
    env = {"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}
    assert detect_launch(env) == LaunchInfo(3, 4, 1, 2, "mpi", None, None)


def test_open_mpi():
    env = {"OMPI_COMM_WORLD_RANK": "7", "OMPI_COMM_WORLD_SIZE": "16",
           "OMPI_COMM_WORLD_LOCAL_RANK": "3", "OMPI_COMM_WORLD_LOCAL_SIZE": "8", "PMIX_RANK": "7"}
    assert detect_launch(env) == LaunchInfo(7, 16, 3, 8, "mpi", None, None)


def test_mpi_without_local_rank_leaves_it_to_rendezvous():
    info = detect_launch({"PMI_RANK": "2", "PMI_SIZE": "6"})
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (2, 6, None, None)


def test_mpiexec_inside_slurm_allocation_is_mpi():
    # Hydra started by a batch script: its ranks inherit the batch step's SLURM_PROCID=0.
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_TASKS_PER_NODE": "1",
           "SLURM_JOB_NODELIST": "nid001", "SLURM_JOB_ID": "99",
           "PMI_RANK": "5", "PMI_SIZE": "8", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4"}
    assert detect_launch(env) == LaunchInfo(5, 8, 1, 4, "mpi", None, None)


def test_srun_with_pmi_is_slurm():
    # srun --mpi=pmi2 sets PMI_RANK too, agreeing with SLURM_PROCID.
    info = detect_launch(_srun_env(PMI_RANK="6", PMI_SIZE="11"))
    assert (info.launcher, info.rank, info.master_port) == ("slurm", 6, slurm_port(1234567, 0))


# ---------------------------------------------------------------- malformed environments

@pytest.mark.parametrize("env, words", [
    ({"RANK": "one", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, ["RANK", "'one'"]),
    ({"RANK": "4", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, ["RANK=4", "WORLD_SIZE=4"]),
    ({"RANK": "0", "WORLD_SIZE": "0"}, ["WORLD_SIZE=0"]),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2",
      "MASTER_ADDR": "h", "MASTER_PORT": "1"}, ["LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2"]),
    ({"RANK": "1", "WORLD_SIZE": "2"}, ["MASTER_ADDR"]),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "70000"}, ["MASTER_PORT=70000"]),
    (_srun_env(SLURM_PROCID="11"), ["SLURM_PROCID=11", "SLURM_NTASKS=11"]),
    (_srun_env(SLURM_LOCALID="3", SLURM_NODEID="2"), ["SLURM_LOCALID=3"]),
    (_srun_env(SLURM_JOB_ID="job"), ["SLURM_JOB_ID", "'job'"]),
    (_srun_env(SLURM_STEP_ID="batch"), ["SLURM_STEP_ID", "'batch'"]),
    ({"PMI_RANK": "0"}, ["PMI_RANK", "size"]),
    ({"PMI_RANK": "-1", "PMI_SIZE": "2"}, ["PMI_RANK=-1"]),
])
def test_malformed_environment(env, words):
    with pytest.raises(ValueError) as err:
        detect_launch(env)
    for word in words:
        assert word in str(err.value)


# ---------------------------------------------------------------- start-up without a launcher

def test_single_process_group():
    gpu = torch.cuda.is_available()
    rt = init_distributed(detect_launch({}))
    try:
        assert (rt.rank, rt.world_size, rt.local_rank, rt.local_world_size) == (0, 1, 0, 1)
        assert rt.launcher == "single"
        assert (rt.backend, rt.device.type) == (("nccl", "cuda") if gpu else ("gloo", "cpu"))
        assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
        x = torch.tensor([3.0], device=rt.device)
        dist.all_reduce(x)
        assert x.item() == 3.0
    finally:
        shutdown()
    assert not dist.is_initialized()
    shutdown()  # a second call is harmless


def test_explicit_backend():
    if torch.cuda.is_available():
        rt = init_distributed(detect_launch({}), backend="gloo")  # CPU collectives on a GPU machine
        shutdown()
        assert (rt.backend, rt.device) == ("gloo", torch.device("cpu"))
    else:
        with pytest.raises(ValueError, match="nccl"):
            init_distributed(detect_launch({}), backend="nccl")
    assert not dist.is_initialized()


def slurm_job_with_free_port(step: int = 0) -> tuple[int, int]:
    """A Slurm job id whose derived port (for `step`) no one listens on now, and that port."""
    for job in range(5_000_000, 5_000_200):
        try:
            return job, free_port(within=(slurm_port(job, step), slurm_port(job, step) + 1))
        except RuntimeError:
            continue
    raise AssertionError("200 job ids all derive a taken port")


def test_a_taken_port_is_one_sentence_naming_master_port(capfd):
    job, port = slurm_job_with_free_port()
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_TASKS_PER_NODE": "2", "SLURM_STEP_NODELIST": "localhost",
           "SLURM_JOB_ID": str(job)}
    with socket.socket() as taken:
        taken.bind(("", port))
        taken.listen()
        with pytest.raises(SystemExit) as stop:  # rank 0 of 2 hosts the store: it must bind the port
            init_distributed(detect_launch(env), backend="gloo", timeout_s=10)
    assert stop.value.code == 2 and not dist.is_initialized()
    assert capfd.readouterr().err == (
        f"axon train: error: rank 0: port {port} on host {socket.gethostname()} (derived from Slurm job {job} step 0 "
        "as MASTER_PORT is unset) is already in use; set MASTER_PORT to a free port.\n")
