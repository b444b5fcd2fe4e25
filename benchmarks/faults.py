"""The fault table: real faults on gloo ranks, and what survived each.

Every row starts real processes (2 ranks, depth 2, a tiny model, a checkpoint every 2 steps,
each rank started the way srun starts a task: its own process, with the job's SLURM_JOB_ID),
injects the fault for real (SIGKILL at a point of a save through AXON_FAULT, a second job, a
forged store value, flipped bytes, ...), then does what a user would do next (resume with
train.resume=latest) and counts:

* steps lost: steps completed before the fault that the next run has to do again (the promise:
  at most train.checkpoint_every);
* files lost: checkpoints that were complete and verified before the fault, kept by the
  pruning policy, and no longer verify (in place or moved aside) after it (the promise: none).

    .venv/bin/python -m benchmarks.faults [--rows kill-shards,second-run,...] [--json PATH]

Prints the table and writes benchmarks/results/faults.json. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from axon.checkpoint import CheckpointReader
from axon.checkpoint.reader import checkpoint_step
from axon.runtime.exit_codes import PREEMPTED
from axon.runtime.metrics import read_metrics
from axon.testing.processes import REPO, clean_env, free_port

RESULTS = REPO / "benchmarks" / "results" / "faults.json"
CHECKPOINT_EVERY = 2
FAULT_STEP = 4  # the save a kill interrupts (the one after step 4)
TIMEOUT_S = 180


def write_config(folder: Path, steps: int, keep: int = 10) -> Path:
    config = {"model": {"preset": "tiny", "seq_len": 16}, "layout": {"depth": 2},
              "train": {"steps": steps, "global_batch": 8, "lr": 1e-3, "seed": 3, "schedule": "constant",
                        "peak_tflops": 1.0, "checkpoint_every": CHECKPOINT_EVERY, "keep_checkpoints": keep,
                        "peer_timeout_s": 5, "collective_timeout_s": 30},
              "data": {"source": "synthetic"}, "out_dir": str(folder / "out")}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Job:
    """A job's ranks, in one process group (so a signal reaches all of them, as from srun)."""

    def __init__(self, config: Path, *args: str, job_id: int, fault: str = "", world: int = 2):
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        for rank in range(world):
            env = clean_env()
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(self.port), OMP_NUM_THREADS="1",
                       SLURM_JOB_ID=str(job_id), SLURM_STEP_ID="0", **({"AXON_FAULT": fault} if fault else {}))
            group = 0 if rank == 0 else self.procs[0].pid
            self.procs.append(subprocess.Popen([sys.executable, "-m", "axon", "train", str(config), *args], env=env,
                                               cwd=REPO, text=True, process_group=group,
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT))

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def signal(self, sig: int) -> None:
        os.killpg(self.procs[0].pid, sig)

    def finish(self, timeout_s: float = TIMEOUT_S) -> tuple[list[int], str]:
        try:
            outs = [p.communicate(timeout=timeout_s)[0] for p in self.procs]
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            raise RuntimeError(f"job on port {self.port} still running after {timeout_s} s") from None
        return [p.returncode for p in self.procs], "\n".join(outs)


def run(config: Path, *args: str, job_id: int, fault: str = "") -> tuple[list[int], str]:
    return Job(config, *args, job_id=job_id, fault=fault).finish()


def verified(out: Path) -> dict[str, bool]:
    """Every complete checkpoint under OUT_DIR/checkpoints (moved-aside ones too), by step
    folder name, and whether all its files match their recorded sha256."""
    found = {}
    for meta in sorted((out / "checkpoints").rglob("meta.json")):
        folder = meta.parent
        if checkpoint_step(folder) is None or folder.name.endswith((".partial", ".pruned")):
            continue
        try:
            reader = CheckpointReader(folder)
            reader.check_files()
            reader.verify()
            found[str(folder.relative_to(out))] = True
        except Exception:  # any failure to read counts as not verified
            found[str(folder.relative_to(out))] = False
    return found


def lost_files(before: dict[str, bool], after: dict[str, bool], pruned_by_policy=()) -> list[str]:
    """Checkpoints that verified before and verify nowhere after (by step, wherever they moved)."""
    def steps(table):
        return {checkpoint_step(Path(name)) for name, ok in table.items() if ok}
    return sorted(f"step {s}" for s in steps(before) - steps(after) - set(pruned_by_policy))


def metrics_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def resumed_step(output: str) -> int | None:
    marker = " at step "
    for line in output.splitlines():
        if line.startswith("axon: resumed from ") and marker in line:
            return int(line.split(marker)[1].split()[0])
    return None


def row(fault: str, did: str, steps_lost: int | None, files_lost: list[str], ok: bool) -> dict:
    return {"fault": fault, "what the run did": did, "steps lost": steps_lost, "files lost": len(files_lost),
            "lost": files_lost, "ok": ok}


# ------------------------------------------------------------------------------------------- rows


def kill_at_save(folder: Path, at: str, rank: int, fault_step: int = FAULT_STEP) -> dict:
    """SIGKILL one rank at a point of the save after `fault_step`, then resume: latest. A first
    job writes the checkpoint of step 2; the faulty job resumes from it and saves every 2 steps."""
    keep = 1 if at == "prune" else 10
    total = fault_step + 2 * CHECKPOINT_EVERY
    config = write_config(folder, steps=total, keep=keep)
    out = folder / "out"
    codes, output = run(config, "--set", f"train.steps={CHECKPOINT_EVERY}", job_id=1)
    if codes != [0, 0]:
        raise RuntimeError(f"the first job exited {codes}: {output[-2000:]}")
    before = verified(out)  # the checkpoints complete before the faulty job
    codes, output = run(config, "--set", "train.resume=latest", job_id=2, fault=f"die:rank={rank}:step={fault_step}:at={at}")
    killed = [c for c in codes if c != 0]
    # What the fault destroyed, read before anything else runs. keep_checkpoints 1 may remove what the
    # faulty job wrote before the fault (never the one it resumed from).
    lost = lost_files(before, verified(out), pruned_by_policy=range(CHECKPOINT_EVERY + 1, fault_step))
    codes2, output2 = run(config, "--set", "train.resume=latest", job_id=3)
    start = resumed_step(output2)
    steps = metrics_steps(out)
    did = (f"job ended (exit codes {codes}); resume: latest resumed at step {start} and finished; "
           f"metrics.jsonl steps 1..{steps[-1]} once each" if steps == list(range(1, len(steps) + 1))
           else f"metrics.jsonl steps {steps}")
    steps_lost = None if start is None else fault_step - start
    ok = (bool(killed) and codes2 == [0, 0] and steps_lost is not None and steps_lost <= CHECKPOINT_EVERY
          and not lost and steps == list(range(1, total + 1)))
    where = {"shards": "while writing shards (its shard file written, meta.json not)", "meta":
             "after meta.json, before the rename", "renamed": "between the rename and the prune",
             "prune": "during a prune (keep_checkpoints 1: after it removed the one before)"}[at]
    return row(f"SIGKILL rank {rank} {where}", did, steps_lost, lost, ok)


def second_run_in_used_dir(folder: Path) -> dict:
    config = write_config(folder, steps=4)
    out = folder / "out"
    assert run(config, job_id=1)[0] == [0, 0]
    snapshot = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    codes, output = run(config, "--set", "train.steps=2", job_id=2)
    same = snapshot == {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    sentence = next((line[line.index("holds an earlier run"):] for line in output.splitlines()
                     if "holds an earlier run" in line), "")
    return row("a second run started in a used run directory (no resume, no --overwrite)",
               f"refused on every rank (exit codes {codes}), one sentence: \"out_dir ... {sentence[:100]}...\"; "
               f"files byte-identical: {same}", 0, [] if same else ["changed"], codes == [2, 2] and same)


def requeue_while_running(folder: Path) -> dict:
    config = write_config(folder, steps=100_000)
    out = folder / "out"
    old = Job(config, "--set", "train.resume=latest", job_id=10)
    deadline = time.time() + 90
    while not ((out / "metrics.jsonl").exists() and len(read_metrics(out / "metrics.jsonl")) >= 5):
        if time.time() > deadline or not old.running():
            old.signal(signal.SIGKILL)
            raise RuntimeError("the first job did not start")
        time.sleep(0.2)
    codes, output = run(config, "--set", "train.resume=latest", job_id=11)
    still = old.running()
    old.signal(signal.SIGTERM)  # the scheduler ends the old job: it checkpoints at the next step boundary
    old_codes, old_output = old.finish()
    stopped = next(int(line.split("stopped after step ")[1].split(",")[0]) for line in old_output.splitlines()
                   if "stopped after step" in line)
    codes2, output2 = run(config, "--set", "train.resume=latest", "--set", f"train.steps={stopped + 2}", job_id=12)
    start = resumed_step(output2)
    holder = "in use by job 10.0 on host" in output
    return row("a requeue while the old job still runs",
               f"the new job was refused naming the holder (exit codes {codes}); the old one kept running "
               f"({still}), then stopped on SIGTERM after step {stopped} with a checkpoint; the requeue resumed "
               f"at step {start}", None if start is None else stopped - start, [],
               holder and still and codes == [2, 2] and old_codes == [PREEMPTED] * 2 and start == stopped and codes2 == [0, 0])


def rollback(folder: Path) -> dict:
    config = write_config(folder, steps=6, keep=2)
    out = folder / "out"
    assert run(config, job_id=1)[0] == [0, 0]
    before = verified(out)  # steps 4 and 6 (keep 2)
    codes, output = run(config, "--set", f"train.resume={out / 'checkpoints' / 'step_00000004'}",
                        "--set", "train.steps=5", job_id=2)
    after = verified(out)
    lost = lost_files(before, after)
    steps = metrics_steps(out)
    moved = "moved the later checkpoints" in output
    return row("a rollback: resume by name from an older step (4 of 6)",
               f"step 6 moved to checkpoints/abandoned-*/ ({moved}); steps 5.. retrained; metrics.jsonl steps {steps}",
               0, lost, codes == [0, 0] and moved and not lost and steps == [1, 2, 3, 4, 5])


def forged_verdicts(folder: Path) -> dict:
    import torch.distributed as dist

    config = write_config(folder, steps=40)
    job = Job(config, job_id=1)
    deadline = time.time() + 60
    while not (folder / "out" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    store = dist.TCPStore("127.0.0.1", job.port, is_master=False, timeout=__import__("datetime").timedelta(seconds=10))
    forged = json.dumps({"kind": "lost", "by": 0, "ranks": [1]})
    keys = ["axon/health/verdict", "axon/health/0/verdict", "axon/health/0/0/verdict"]
    for key in keys:
        store.set(key, forged)
        store.set(key + "x", "{not json")
    for key in keys:
        store.set(key, "\x00garbage{")
    codes, output = job.finish()
    steps = metrics_steps(folder / "out")
    return row("a forged and a malformed verdict posted to the job's store (every key an outsider can name)",
               f"ignored: the job finished all {len(steps)} steps (exit codes {codes}); the real keys carry a "
               "per-job token sent over the process group", 0, [], codes == [0, 0] and steps == list(range(1, 41)))


def corrupt_newest(folder: Path) -> dict:
    config = write_config(folder, steps=6)
    out = folder / "out"
    assert run(config, job_id=1)[0] == [0, 0]
    newest = out / "checkpoints" / "step_00000006" / "ranks_0000" / "rank_00001.safetensors"
    data = bytearray(newest.read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])  # same size: only the checksum can tell
    newest.write_bytes(bytes(data))
    before = {k: v for k, v in verified(out).items() if v}
    codes, output = run(config, "--set", "train.resume=latest", "--set", "train.steps=8", job_id=2)
    start = resumed_step(output)
    lost = lost_files(before, verified(out))
    passed = "passes over a checkpoint" in output
    return row("a corrupt newest checkpoint (bytes of one shard flipped, same size)",
               f"resume: latest verified it, passed it over ({passed}) and resumed at step {start}",
               None if start is None else 6 - start, lost, codes == [0, 0] and passed and start == 4 and not lost)


def convert_into_full_dir(folder: Path) -> dict:
    config = write_config(folder, steps=2)
    assert run(config, job_id=1)[0] == [0, 0]
    checkpoint = folder / "out" / "checkpoints" / "step_00000002"
    hf = folder / "hf"
    python = [sys.executable, "-m", "axon", "convert"]
    subprocess.run(python + ["--from", str(checkpoint), "--to-hf", str(hf)], cwd=REPO, env=clean_env(), check=True,
                   capture_output=True)
    full = folder / "mine"
    full.mkdir()
    (full / "thesis.tex").write_text("years of work\n")
    done = subprocess.run(python + ["--from-hf", str(hf), "--to", str(full)], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True)
    dot = subprocess.run(python + ["--from-hf", str(hf), "--to", "."], cwd=full, env=clean_env(),
                         capture_output=True, text=True)
    kept = sorted(p.name for p in full.iterdir()) == ["thesis.tex"]
    return row("convert --to into a full directory (and --to .)",
               f"refused (exit codes {done.returncode}, {dot.returncode}), one sentence each; the folder holds only "
               f"what it held ({kept})", 0, [] if kept else ["thesis.tex"],
               done.returncode == 2 and dot.returncode == 2 and kept)


def hostile_study(folder: Path) -> dict:
    study = {"name": "s$(touch PWNED)", "kind": "weak", "machine": "frontier", "seq_len": 2048, "batch_per_gpu": 1,
             "steps": 3, "model": "8B", "points": [{"gpus": 8, "name": "p`touch PWNED`"}],
             "slurm": {"account": "ABC\nid > PWNED", "partition": "batch;touch PWNED", "qos": "$(touch PWNED)",
                       "time": "00:30:00\ntouch PWNED", "constraint": "x'y", "template": "/etc/passwd"}}
    # Each field alone, so every one is checked (a study stops at its first mistake).
    fields = [("name", study["name"]), ("points", study["points"])] + [
        ("slurm", {key: value}) for key, value in study["slurm"].items()]
    clean = {**study, "name": "ok", "points": [{"gpus": 8}], "slurm": {}}

    def submit(raw: dict, index: int) -> int:
        path = folder / f"study_{index}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return subprocess.run([sys.executable, "-m", "axon", "scaling", "submit", str(path), "--launcher", "slurm",
                               "--dir", str(folder / f"dir_{index}")], cwd=folder, env=clean_env(),
                              capture_output=True, text=True).returncode

    folder.mkdir(parents=True, exist_ok=True)
    control = submit(clean, 0) == 0 and len(list((folder / "dir_0").rglob("job.sbatch"))) == 1  # the same, clean
    refused = [key for i, (key, value) in enumerate(fields, 1) if submit({**clean, key: value}, i) == 2]
    scripts = [p for p in folder.rglob("*.sbatch") if not p.is_relative_to(folder / "dir_0")]
    pwned = list(folder.rglob("PWNED")) + list(REPO.glob("PWNED"))
    return row("a study with shell metacharacters in every field (name, point, account, partition, qos, time, "
               "constraint, template)",
               f"{len(refused)} of {len(fields)} fields refused with one sentence (the same study without them: a job "
               f"script, {control}); job scripts written: {len(scripts)}; commands run: {len(pwned)}", 0, [],
               control and len(refused) == len(fields) and not scripts and not pwned)


ROWS = {
    "kill-shards": lambda d: kill_at_save(d, "shards", 1),
    "kill-meta": lambda d: kill_at_save(d, "meta", 0),
    "kill-renamed": lambda d: kill_at_save(d, "renamed", 0),
    "kill-prune": lambda d: kill_at_save(d, "prune", 0, fault_step=FAULT_STEP + CHECKPOINT_EVERY),
    "second-run": second_run_in_used_dir,
    "requeue": requeue_while_running,
    "rollback": rollback,
    "verdicts": forged_verdicts,
    "corrupt-newest": corrupt_newest,
    "convert-full-dir": convert_into_full_dir,
    "hostile-study": hostile_study,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = args.rows.split(",")
    unknown = set(names) - set(ROWS)
    if unknown:
        parser.error(f"--rows names {', '.join(sorted(unknown))}; known: {', '.join(ROWS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="axon-faults-") as tmp:
        for name in names:
            started = time.perf_counter()
            try:
                result = ROWS[name](Path(tmp) / name)
            except Exception as err:  # a row that breaks is a failed row, not a lost table
                result = row(name, f"the row itself failed: {type(err).__name__}: {err}", None, [], False)
            result["seconds"] = round(time.perf_counter() - started, 1)
            results.append(result)
            print(f"{'ok  ' if result['ok'] else 'FAIL'} {result['fault']}: {result['what the run did']} | steps "
                  f"lost {result['steps lost']} | files lost {result['files lost']} ({result['seconds']} s)", flush=True)
    print()
    print("| fault | what the run did | steps lost | files lost |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['fault']} | {r['what the run did']} | {r['steps lost']} | {r['files lost']} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"checkpoint_every": CHECKPOINT_EVERY, "rows": results}, indent=1) + "\n")
    print(f"\n{sum(r['ok'] for r in results)} of {len(results)} rows kept their promise; written {args.json}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
