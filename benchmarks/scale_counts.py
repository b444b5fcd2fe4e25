"""The work one rank does on the paths issue 32 names, counted at 8, 4,096 and 32,768 ranks.

Each rank above 8 runs as rank R of torch's fake process group (its collectives return at
once, without data), building a tiny model at a layout of that world and saving and loading a
real checkpoint in a temporary folder. Counted per rank:

* health: the job store's operations in one steady beat and in a SIGTERM check
  (axon.testing.counting_store), the beat interval, and the whole job's store rate;
* save: file operations (axon.testing.file_ops: opens for writing, renames, stats, mkdirs,
  unlinks), for rank 0, a shard-writing rank (1) and a data replica (the last rank);
* load: file operations and bytes read from storage, for the writer and the replica (the fake
  world gathers no records: the writer's record is put into files.json by hand before it loads),
  and rank 0's completeness check, one stat per shard file (counted here as the files there are);
* groups: world-wide communicator splits a rank joins on NCCL (create_groups calls: one per
  axis with a group, one for the checkpoint axis).

"before" is the code at 2485b56 (the start of this work), read from the code, not run: every rank
wrote a file, rank 0 gathered a record from each rank, every rank statted every shard file and
parsed every record before a resume, and each data replica read its shards from storage.

    flock /tmp/axon-cpu.lock .venv/bin/python -m benchmarks.scale_counts [--out benchmarks/results/scale_counts.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import tempfile
from pathlib import Path

WORLDS = (8, 4096, 32768)
# Layouts of a tiny model at each world: data outermost, so rank 1 writes shards and the last rank is a replica.
LAYOUTS = {8: {"data": 2, "depth": 2, "col": 2},
           4096: {"data": 4, "depth": 16, "row": 8, "col": 8},
           32768: {"data": 8, "depth": 32, "row": 8, "col": 16}}
MODEL = {"layers": 2, "hidden": 256, "heads": 16, "kv_heads": 16, "ffn": 512, "vocab": 512, "seq_len": 16}
PEER_TIMEOUT_S = 30.0


def _config(world: int, out_dir: str):
    from axon.config import build_config

    return build_config({"model": MODEL, "layout": LAYOUTS[world], "out_dir": out_dir,
                         "train": {"steps": 1, "global_batch": 64, "micro_batch": 8, "lr": 1e-3}})


def _rank_job(world: int, rank: int, out_dir: str, phase: str, queue) -> None:
    """One rank in its own fake world: build the trainer, then save or load, counted."""
    import torch
    import torch.distributed as dist

    from axon import checkpoint
    from axon.parallel import groups
    from axon.parallel.grid import Grid
    from axon.planning.dry_run.rank import fake_world
    from axon.runtime.trainer import Trainer
    from axon.testing.file_ops import FileOps

    config = _config(world, out_dir)
    splits = []
    real_create = groups.create_groups

    def counted_create(*args, **kwargs):
        splits.append(kwargs.get("desc"))
        return real_create(*args, **kwargs)

    groups.create_groups = counted_create
    import axon.parallel.grid as grid_module
    grid_module.create_groups = counted_create
    with fake_world(rank, world):
        trainer = Trainer(config, Grid(config.layout, rank), torch.device("cpu"))
        result = {"rank": rank}
        if phase == "save":
            with FileOps(out_dir) as ops:
                path = checkpoint.save(trainer, 1, keep=1)
            result.update(ops=dict(ops.counts), splits=len(splits), path=str(path))
        else:
            path = checkpoint.checkpoint_root(out_dir) / "step_00000001"
            torch.set_rng_state = lambda state: None  # a replica's RNG state comes by a broadcast that carries no data here
            with FileOps(out_dir) as ops:
                reader = checkpoint.CheckpointReader(path)
                trainer.resume_from(reader)
            result.update(ops=dict(ops.counts), bytes_read=reader.bytes_read,
                          shard_files=len(reader.shard_files()), files_read=sorted(reader.files_read))
        dist.barrier()
    queue.put(result)


def _run(world: int, rank: int, out_dir: str, phase: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_rank_job, args=(world, rank, out_dir, phase, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"rank {rank} of {world} ({phase}) failed with exit code {process.exitcode}")
    return queue.get(timeout=10)


def _fix_records(path: Path, ranks: list[int]) -> None:
    """The fake world's all-gather carries no data: put these ranks' true records in files.json."""
    from axon.checkpoint.files import INDEX, rank_file, shard_dir

    for rank in ranks:
        index_path = path / shard_dir(rank) / INDEX
        index = json.loads(index_path.read_text())
        shard = path / shard_dir(rank) / rank_file(rank)
        index[rank_file(rank)] = {"bytes": shard.stat().st_size, "sha256": hashlib.sha256(shard.read_bytes()).hexdigest()}
        index_path.write_text(json.dumps(index))


def checkpoint_counts(world: int) -> dict:
    """Rank 0 saves first (the folders, its file, the metadata, the rename), then rank 1 and the
    last rank into the folders rank 0 makes before the save's first barrier; the writer's file
    is then moved where rank 0's rename would have taken it, and its record put in files.json."""
    from axon.checkpoint.files import shard_dir, shard_path

    last = world - 1
    with tempfile.TemporaryDirectory() as out_dir:
        saves = {0: _run(world, 0, out_dir, "save")}
        path = Path(saves[0]["path"])
        partial = path.with_name(path.name + ".partial")
        (partial / shard_dir(1)).mkdir(parents=True)
        for rank in (1, last):
            saves[rank] = _run(world, rank, out_dir, "save")
        (partial / shard_path(1)).rename(path / shard_path(1))
        _fix_records(path, [1])
        loads = {rank: _run(world, rank, out_dir, "load") for rank in (1, last)}
        folders = len(list(path.glob("ranks_*")))
    return {"saves": saves, "loads": loads, "shard_folders": folders}


def health_counts(world: int) -> dict:
    from axon.runtime.health import HealthMonitor, beat_interval
    from axon.testing.counting_store import CountingStore

    monitor = HealthMonitor(3, world, ("127.0.0.1", 0), tempfile.gettempdir(), peer_timeout_s=PEER_TIMEOUT_S,
                            collective_timeout_s=600.0, hosts_store=False)
    monitor.store = CountingStore(dead=set())
    monitor.store.set(monitor.prefix + "host/0", "node0")
    monitor._beat()
    for key in ("verdict", f"beat/{4 % world}"):
        monitor.store.compare_set(monitor.prefix + key, "", "")
    monitor._beat_once()  # the first beat also reads rank 0's host
    before = monitor.store.ops
    monitor._beat_once()
    beat_ops = monitor.store.ops - before
    interval = beat_interval(world, PEER_TIMEOUT_S)
    monitor.interval = 0.001  # the SIGTERM check sleeps whole beats
    before = monitor.store.ops
    monitor._successor_silent()
    return {"beat_ops": beat_ops, "interval_s": interval, "job_store_ops_per_s": world * beat_ops / interval,
            "sigterm_ops": monitor.store.ops - before}


def _table(rows: list[dict], worlds) -> str:
    lines = [f"{'what (per rank unless said)':50s} " + " ".join(f"{w:>24,d}" for w in worlds) + "   before (2485b56)"]
    for row in rows:
        lines.append(f"{row['what']:50s} " + " ".join(f"{row[w]:>24}" for w in worlds) + f"   {row['before']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/scale_counts.json")
    parser.add_argument("--worlds", default=",".join(map(str, WORLDS)), help="a subset of 8,4096,32768 (a quick look)")
    args = parser.parse_args(argv)
    worlds = tuple(int(w) for w in args.worlds.split(","))
    health = {w: health_counts(w) for w in worlds}
    ckpt = {}
    for world in worlds:
        print(f"checkpoint at {world} ranks ...", flush=True)
        ckpt[world] = checkpoint_counts(world)

    def ops(world, phase, rank):
        got = ckpt[world][phase][rank]["ops"]
        return " ".join(f"{k}{v}" for k, v in sorted(got.items())) or "-"

    def row(what, before, value):
        return {"what": what, "before": before, **{w: value(w) for w in worlds}}

    rows = [
        row("health: store ops in a steady beat", "5 (6 with a verdict)", lambda w: health[w]["beat_ops"]),
        row("health: beat interval, s", "1.0", lambda w: f"{health[w]['interval_s']:.2f}"),
        row("health: job-wide store ops/s", "5 x world", lambda w: f"{health[w]['job_store_ops_per_s']:,.0f}"),
        row("health: store ops of a SIGTERM check", "<= 10 (6 x world before 116cc8d)",
            lambda w: health[w]["sigterm_ops"]),
        row("save, rank 0: file ops", "1 write + meta; gather from world",
            lambda w: ops(w, "saves", 0)),
        row("save, rank 1 (writer): file ops", "1 write", lambda w: ops(w, "saves", 1)),
        row("save, last rank (data replica): file ops", "1 write (RNG only)", lambda w: ops(w, "saves", w - 1)),
        row("save: shard files in all / folders", "world / 1",
            lambda w: f"{w // LAYOUTS[w]['data']}/{ckpt[w]['shard_folders']}"),
        row("resume, rank 0: completeness stats (1 per file)", "world, on every rank",
            lambda w: ckpt[w]["loads"][1]["shard_files"]),
        row("load, rank 1 (writer): file ops", "world stats + meta of world records",
            lambda w: ops(w, "loads", 1)),
        row("load, last rank (replica): file ops", "world stats + meta of world records",
            lambda w: ops(w, "loads", w - 1)),
        row("load, rank 1: bytes read from storage", "its shards + hashing",
            lambda w: f"{ckpt[w]['loads'][1]['bytes_read']:,}"),
        row("load, last rank (replica): bytes read", "its shards again + hashing",
            lambda w: f"{ckpt[w]['loads'][w - 1]['bytes_read']:,}"),
        row("world-wide splits joined (NCCL), grid + save", "axes (+0)", lambda w: ckpt[w]["saves"][1]["splits"]),
    ]
    print(_table(rows, worlds))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"worlds": worlds, "layouts": LAYOUTS, "model": MODEL,
                                          "health": health, "checkpoint": ckpt, "table": rows}, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
