"""Stand-ins for `sbatch`, `srun` and `scontrol` on one machine, so a test can run the real
`launch/*.sbatch` scripts and the commands docs/first-run.md gives, on CPU ranks.

    python -m axon.testing.fake_slurm sbatch [--option=value ...] SCRIPT [ARGS...]
    python -m axon.testing.fake_slurm srun [--option=value ...] COMMAND [ARGS...]
    python -m axon.testing.fake_slurm scontrol requeue JOB_ID

`install(folder)` writes the three commands into FOLDER/bin (put it first on PATH); the state
(job counter, requeue requests, each job's exit codes) lives in `$FAKE_SLURM_DIR`.

* sbatch runs the script at once with bash (not queued: it returns when the job ends), the job's
  output in the file its `#SBATCH --output=%x-%j.out` names, and prints `Submitted batch job N`
  first as Slurm does. A job that asked `scontrol requeue` for itself runs again, with the same
  id and `SLURM_RESTART_COUNT` counting up, its output appended, as Slurm requeues it.
* srun ignores its options and starts `$FAKE_SLURM_TASKS` (default 2) tasks on this host with
  the variables Slurm gives a step's tasks (axon reads them: axon/spec/launcher.py), a free
  `MASTER_PORT`, this host's cores shared out (`OMP_NUM_THREADS`, as `--cpus-per-task` binds
  them on a node), and exits with the largest of their codes. With `$FAKE_SLURM_SIGNAL_AT_STEP=S`,
  on a job's first attempt it sends every task SIGUSR1 once rank 0 has printed step S's progress
  line: what `#SBATCH --signal=USR1@120` does before a time limit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

COMMANDS = ("sbatch", "srun", "scontrol")


def install(folder: Path) -> Path:
    """FOLDER/bin with sbatch, srun and scontrol that run this module; returns the bin folder."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\nexec {sys.executable} -m axon.testing.fake_slurm {name} \"$@\"\n")
        path.chmod(0o755)
    return bin_dir


def _state() -> Path:
    folder = Path(os.environ["FAKE_SLURM_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _split_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading `--key=value` / `--flag` options, then the command and its arguments."""
    options, i = {}, 0
    while i < len(argv) and argv[i].startswith("-"):
        key, _, value = argv[i].lstrip("-").partition("=")
        options[key] = value
        i += 1
    return options, argv[i:]


def _directive(script: str, key: str, default: str) -> str:
    found = re.search(rf"^#SBATCH\s+--{key}=(\S+)", script, re.M)
    return found.group(1) if found else default


def sbatch(argv: list[str]) -> int:
    options, command = _split_options(argv)
    if not command:
        print("sbatch: error: name a batch script", file=sys.stderr)
        return 1
    script_path, args = Path(command[0]), command[1:]
    script = script_path.read_text()
    state = _state()
    counter = state / "last_job_id"
    job = int(counter.read_text()) + 1 if counter.is_file() else 1001
    counter.write_text(str(job))
    name = options.get("job-name") or _directive(script, "job-name", "sbatch")
    output = Path((options.get("output") or _directive(script, "output", "slurm-%j.out"))
                  .replace("%x", name).replace("%j", str(job)))
    print(f"Submitted batch job {job}", flush=True)
    env = {**os.environ, "SLURM_JOB_ID": str(job), "SLURM_JOB_NAME": name,
           "SLURM_JOB_NUM_NODES": options.get("nodes", "1"), "SLURM_SUBMIT_DIR": os.getcwd()}
    codes, attempt = [], 0
    with open(output, "a") as log:
        while True:
            if attempt:
                env["SLURM_RESTART_COUNT"] = str(attempt)
            codes.append(subprocess.run(["bash", str(script_path), *args], env=env, stdout=log,
                                        stderr=subprocess.STDOUT).returncode)
            requeued = state / f"requeue_{job}"
            if not requeued.is_file():
                break
            requeued.unlink()  # one requeue per request, as Slurm's
            attempt += 1
    (state / f"job_{job}.codes").write_text(" ".join(map(str, codes)))
    return 0


def srun(argv: list[str]) -> int:
    from axon.runtime.bootstrap import free_port

    _, command = _split_options(argv)
    tasks = int(os.environ.get("FAKE_SLURM_TASKS", "2"))
    signal_at = os.environ.get("FAKE_SLURM_SIGNAL_AT_STEP", "")
    first_attempt = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
    base = {**os.environ, "SLURM_NTASKS": str(tasks), "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_NODEID": "0",
            "SLURM_STEP_TASKS_PER_NODE": str(tasks), "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_ID": "0",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
            # srun --cpus-per-task binds each task to its share of a node's cores; here the host is
            # the node, so a job script's OMP_NUM_THREADS (16 on Perlmutter) would oversubscribe it
            "OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // tasks))}
    procs = [subprocess.Popen(command, env={**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(tasks)]
    signalled, lock = [False], threading.Lock()

    def pump(proc, watch: bool) -> None:
        for line in proc.stdout:
            with lock:
                sys.stdout.write(line)
                sys.stdout.flush()
                if watch and signal_at and first_attempt and not signalled[0] and line.startswith(f"step {signal_at}/"):
                    signalled[0] = True
                    for p in procs:
                        p.send_signal(signal.SIGUSR1)

    threads = [threading.Thread(target=pump, args=(p, rank == 0)) for rank, p in enumerate(procs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(p.wait() for p in procs)


def scontrol(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "requeue":
        print(f"scontrol (fake): only `scontrol requeue JOB_ID`, got {argv}", file=sys.stderr)
        return 1
    (_state() / f"requeue_{argv[1]}").write_text("")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m axon.testing.fake_slurm {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return {"sbatch": sbatch, "srun": srun, "scontrol": scontrol}[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
