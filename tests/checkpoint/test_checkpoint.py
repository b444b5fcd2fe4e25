"""Checkpoints: exact resume, resharding across layouts, atomic saves, clear errors."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load as safetensors_load

from axon import checkpoint
from axon.checkpoint import reader as reader_module
from axon.checkpoint import writer as writer_module
from axon.config import ConfigError, build_config
from axon.parallel.grid import Grid
from axon.parallel.comm import broadcast_object, first_error
from axon.parallel.full_tensor import full_parameters
from axon.runtime.trainer import Trainer, learning_rate
from axon.spec.layout import Layout
from axon.testing.spawn import run_distributed

# hidden 96 = 16 heads x 6, 8 kv heads: every split up to 8 divides the model.
MODEL = {"layers": 2, "hidden": 96, "heads": 16, "kv_heads": 8, "ffn": 72, "vocab": 136, "seq_len": 16}
# Four blocks, so 1, 2 and 4 pipeline stages all have layers.
STAGED_MODEL = {**MODEL, "layers": 4}
SAVE_AT, TOTAL = 3, 6


def make_config(out_dir, layout: Layout, model=MODEL, **train):
    sizes = {axis: getattr(layout, axis) for axis in ("data", "pipe", "depth", "row", "col")}
    return build_config({"model": model, "layout": sizes, "out_dir": str(out_dir),
                         "train": {"steps": TOTAL, "global_batch": 8, "lr": 1e-3, "seed": 5,
                                   "warmup_steps": 2, **train}})


def run(config, rank, steps=None, resume=None):
    """Train (optionally from a checkpoint) to `steps`; return losses, full params, Adam moments."""
    grid = Grid(config.layout, rank)
    trainer = Trainer(config, grid, torch.device("cpu"))
    if resume is not None:
        trainer.resume_from(checkpoint.CheckpointReader(resume))
    loaded = full_parameters(trainer.model, grid)
    if steps is not None:
        config.train.steps = steps
    losses = [m["loss"] for m in trainer.fit()]
    saved = None
    if steps == SAVE_AT:
        saved = checkpoint.save(trainer, SAVE_AT, keep=5)
    grid.destroy()
    return losses, loaded, saved


def save_then_continue(rank, world, out_dir, layout, straight=False, model=MODEL):
    """At `layout`: train SAVE_AT steps and save, then continue from the checkpoint to TOTAL;
    with `straight`, also the uninterrupted run, in the same processes."""
    first, _, path = run(make_config(out_dir, layout, model), rank, steps=SAVE_AT)
    rest, loaded, _ = run(make_config(out_dir, layout, model), rank, resume=path)
    whole = run(make_config(Path(out_dir) / "straight", layout, model), rank)[0] if straight else None
    return first, rest, loaded, str(path), whole


def load_and_continue(rank, world, out_dir, layout, path, model=MODEL):
    rest, loaded, _ = run(make_config(out_dir, layout, model), rank, resume=Path(path))
    return rest, loaded


def test_resume_is_bitwise_exact_at_one_process(tmp_path):
    straight, _, _ = run(make_config(tmp_path / "a", Layout()), 0)
    first, rest, _, _, _ = save_then_continue(0, 1, tmp_path / "b", Layout())
    assert first + rest == straight  # bitwise: same floats, not approximately


@pytest.fixture(scope="module")
def saved_at_8(tmp_path_factory):
    """Saved at depth 2 x row 2 x col 2 (8 ranks); the continued losses there are the reference."""
    out = tmp_path_factory.mktemp("ckpt8")
    first, rest, loaded, path, straight = run_distributed(
        8, save_then_continue, out, Layout(depth=2, row=2, col=2), True)[0]
    return {"first": first, "rest": rest, "loaded": loaded, "path": path, "straight": straight}


def test_resume_is_bitwise_exact_on_eight_ranks(saved_at_8):
    assert saved_at_8["first"] + saved_at_8["rest"] == saved_at_8["straight"]


def _close(a, b, tol=1e-5):
    return all(abs(x - y) <= tol * abs(y) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.parametrize("world, layout", [
    (4, Layout(data=4)), (4, Layout(depth=4)), (2, Layout(col=2)), (1, Layout()),
])
def test_checkpoint_from_8_ranks_reshards_anywhere(saved_at_8, tmp_path, world, layout):
    if world == 1:
        rest, loaded = load_and_continue(0, 1, tmp_path, layout, saved_at_8["path"])
    else:
        rest, loaded = run_distributed(world, load_and_continue, tmp_path, layout, saved_at_8["path"])[0]
    for name, tensor in saved_at_8["loaded"].items():
        assert torch.equal(loaded[name], tensor), name  # parameters move across layouts bit for bit
    assert _close(rest, saved_at_8["rest"]), (rest, saved_at_8["rest"])


def test_one_process_checkpoint_loads_on_eight_ranks(tmp_path):
    first, rest, loaded, path, _ = save_then_continue(0, 1, tmp_path / "one", Layout())
    rest8, loaded8 = run_distributed(8, load_and_continue, tmp_path / "eight", Layout(data=2, depth=2, row=2), path)[0]
    for name, tensor in loaded.items():
        assert torch.equal(loaded8[name], tensor), name
    assert _close(rest8, rest)


@pytest.fixture(scope="module")
def saved_at_pipe2(tmp_path_factory):
    """Saved at pipe 2 x depth 2 (4 ranks) with a 4-block model: each stage writes its own blocks."""
    out = tmp_path_factory.mktemp("ckpt_pipe2")
    first, rest, loaded, path, straight = run_distributed(
        4, save_then_continue, out, Layout(pipe=2, depth=2), True, STAGED_MODEL)[0]
    return {"first": first, "rest": rest, "loaded": loaded, "path": path, "straight": straight}


def test_resume_is_bitwise_exact_with_pipeline_stages(saved_at_pipe2):
    assert saved_at_pipe2["first"] + saved_at_pipe2["rest"] == saved_at_pipe2["straight"]


@pytest.mark.parametrize("world, layout", [(1, Layout()), (4, Layout(pipe=4)), (4, Layout(pipe=2, row=2))])
def test_pipe_checkpoint_reshards_to_other_stage_counts(saved_at_pipe2, tmp_path, world, layout):
    args = (tmp_path, layout, saved_at_pipe2["path"], STAGED_MODEL)
    rest, loaded = load_and_continue(0, 1, *args) if world == 1 else run_distributed(world, load_and_continue, *args)[0]
    assert loaded.keys() == saved_at_pipe2["loaded"].keys()
    for name, tensor in saved_at_pipe2["loaded"].items():
        assert torch.equal(loaded[name], tensor), name
    assert _close(rest, saved_at_pipe2["rest"]), (rest, saved_at_pipe2["rest"])


def test_checkpoints_without_and_with_four_stages_load_at_two(tmp_path):
    """pipe=1 -> pipe=2 and pipe=4 -> pipe=2: the other directions."""
    _, rest1, loaded1, path1, _ = save_then_continue(0, 1, tmp_path / "one", Layout(), model=STAGED_MODEL)
    _, rest4, loaded4, path4, _ = run_distributed(
        4, save_then_continue, tmp_path / "four", Layout(pipe=4), False, STAGED_MODEL)[0]
    for path, rest, loaded in ((path1, rest1, loaded1), (path4, rest4, loaded4)):
        rest2, loaded2 = run_distributed(2, load_and_continue, tmp_path / "two", Layout(pipe=2), path,
                                         STAGED_MODEL)[0]
        for name, tensor in loaded.items():
            assert torch.equal(loaded2[name], tensor), name
        assert _close(rest2, rest)


def test_a_killed_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    config = make_config(tmp_path, Layout(), checkpoint_every=2, keep_checkpoints=2)
    Trainer(config, Grid(config.layout, 0), torch.device("cpu")).fit()
    root = checkpoint.checkpoint_root(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004", "step_00000006"]  # keep 2
    # A save killed half-way: the rank files exist, meta.json was never written, no rename.
    partial = root / "step_00000008.partial"
    partial.mkdir()
    (partial / "ranks_0000").mkdir()
    (partial / "ranks_0000" / "rank_00000.safetensors").write_bytes(b"half a file")
    latest = checkpoint.resolve_resume(str(tmp_path), "latest")
    assert latest.name == "step_00000006"
    reader = checkpoint.CheckpointReader(latest)
    reader.check_files()
    assert reader.step == 6 and reader.meta["next_sequence"] == 6 * 8


def test_corrupt_and_truncated_shards_name_the_file(tmp_path):
    config = make_config(tmp_path, Layout(), checkpoint_every=TOTAL)
    Trainer(config, Grid(config.layout, 0), torch.device("cpu")).fit()
    path = checkpoint.checkpoint_root(tmp_path) / f"step_{TOTAL:08d}"
    shard = path / "ranks_0000" / "rank_00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF  # same size, one flipped byte
    shard.write_bytes(bytes(data))
    reader = checkpoint.CheckpointReader(path)
    reader.check_files()  # sizes still match...
    trainer = Trainer(config, Grid(config.layout, 0), torch.device("cpu"))
    with pytest.raises(ConfigError, match="rank_00000.safetensors.*is corrupt"):
        trainer.resume_from(reader)  # ...the checksum does not
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(ConfigError, match=r"rank_00000.safetensors.*truncated.*\d+ bytes on disk, \d+ written"):
        checkpoint.CheckpointReader(path).check_files()
    (path / "meta.json").unlink()
    with pytest.raises(ConfigError, match="no meta.json"):
        checkpoint.CheckpointReader(path)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    config = make_config(tmp_path, Layout(), checkpoint_every=TOTAL)
    Trainer(config, Grid(config.layout, 0), torch.device("cpu")).fit()
    reader = checkpoint.CheckpointReader(checkpoint.checkpoint_root(tmp_path) / f"step_{TOTAL:08d}")
    other = build_config({"model": {**MODEL, "ffn": 80}}).model
    with pytest.raises(ConfigError, match="model.ffn=72 but the config has model.ffn=80"):
        reader.check_model(other)


def test_streamed_shard_file_is_safetensors_and_round_trips_bitwise(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "COPY_BYTES", 24)  # many slices per tensor, some ragged
    tensors = {"rng/torch": torch.get_rng_state(), "model/w": torch.randn(7, 5),
               "half": torch.randn(3, 3).to(torch.bfloat16), "scalar": torch.tensor(3, dtype=torch.int64),
               "mask": torch.tensor([True, False, True]), "none": torch.empty(0, 4)}
    path = tmp_path / "rank_00000.safetensors"
    size, sha256 = writer_module.write_safetensors(path, tensors)
    data = path.read_bytes()
    assert size == len(data) and sha256 == hashlib.sha256(data).hexdigest()
    header_bytes = int.from_bytes(data[:8], "little")
    assert (8 + header_bytes) % 8 == 0 and json.loads(data[8:8 + header_bytes])["model/w"]["shape"] == [7, 5]
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(tensors)
        for name, tensor in tensors.items():
            read = f.get_tensor(name)
            assert read.dtype == tensor.dtype and torch.equal(read, tensor), name
        assert torch.equal(f.get_slice("model/w")[2:4], tensors["model/w"][2:4])
    for name, tensor in safetensors_load(data).items():  # the library's in-memory parser agrees
        assert torch.equal(tensor, tensors[name]), name


class CountingSha256:
    """hashlib.sha256 that records the size of every chunk it hashes (in this process)."""

    chunks: list[int] = []

    def __init__(self):
        self._digest = hashlib.sha256()

    def update(self, data) -> None:
        CountingSha256.chunks.append(len(data))
        self._digest.update(data)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def count_hashing(chunk_bytes: int) -> None:
    reader_module.hashlib = types.SimpleNamespace(sha256=CountingSha256)
    reader_module.HASH_CHUNK_BYTES = chunk_bytes


def save_recording_the_gathers(rank, world, out_dir):
    """Train at pipe 2 x depth 2 and save; return what each rank received from the stages'
    metadata gather (absent: it took no part) and the full parameters saved. A world-wide
    gather or object collective fails the save."""
    config = make_config(out_dir, Layout(pipe=2, depth=2), STAGED_MODEL)
    config.train.steps = SAVE_AT
    trainer = Trainer(config, Grid(config.layout, rank), torch.device("cpu"))
    trainer.fit()
    saved = full_parameters(trainer.model, trainer.grid)
    received = {}

    def recording(key, gather):
        def gather_and_record(*args):
            received[key] = result = gather(*args)
            return result
        return gather_and_record

    def refused(name):
        def call(*args, **kwargs):
            raise AssertionError(f"a save must not call dist.{name} over the world")
        return call

    writer_module.gather_objects_to_rank0 = recording("stages", writer_module.gather_objects_to_rank0)
    dist.all_gather_object, dist.gather = refused("all_gather_object"), refused("gather")
    path = checkpoint.save(trainer, SAVE_AT, keep=1)
    trainer.grid.destroy()
    return str(path), received, saved


@pytest.fixture(scope="module")
def saved_at_pipe2_depth2(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt_gathers")
    results = run_distributed(4, save_recording_the_gathers, out)
    return {"path": Path(results[0][0]), "received": [r[1] for r in results], "saved": results[0][2]}


def test_rank_0_records_every_shard_file_in_its_folders_index(saved_at_pipe2_depth2):
    path, received = saved_at_pipe2_depth2["path"], saved_at_pipe2_depth2["received"]
    files = sorted(path.glob("ranks_*/rank_*.safetensors"))
    assert [f.relative_to(path).as_posix() for f in files] == [f"ranks_0000/rank_{r:05d}.safetensors" for r in range(4)]
    index = json.loads((path / "ranks_0000" / "files.json").read_text())
    assert index == {f.name: {"bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
                     for f in files}
    # Tensor descriptions come from each stage's first rank (ranks 0 and 2), to rank 0 only.
    assert len(received[0]["stages"]) == 2 and all(received[0]["stages"])
    assert {info["stage"] for stage in received[0]["stages"] for info in stage.values()} == {0, 1}
    assert received[2]["stages"] is None and "stages" not in received[1] and "stages" not in received[3]
    meta = json.loads((path / "meta.json").read_text())
    assert set(meta["tensors"]) == set(saved_at_pipe2_depth2["saved"]) and "files" not in meta


def load_counting_hashed_bytes(rank, world, out_dir, path, chunk_bytes):
    """Load at depth 4; return (chunks hashed, shard files read, full parameters) or the error."""
    count_hashing(chunk_bytes)
    config = make_config(out_dir, Layout(depth=4), STAGED_MODEL)
    trainer = Trainer(config, Grid(config.layout, rank), torch.device("cpu"))
    reader = checkpoint.CheckpointReader(path)
    try:
        trainer.resume_from(reader)
    except ConfigError as err:
        trainer.grid.destroy()
        return {"refused": str(err), "chunks": CountingSha256.chunks}
    loaded = full_parameters(trainer.model, trainer.grid)
    trainer.grid.destroy()
    return {"chunks": CountingSha256.chunks, "read": sorted(reader.files_read), "loaded": loaded}


@pytest.fixture(scope="module")
def loaded_at_depth4(saved_at_pipe2_depth2, tmp_path_factory):
    return run_distributed(4, load_counting_hashed_bytes, tmp_path_factory.mktemp("depth4"),
                           saved_at_pipe2_depth2["path"], 4096)


def test_a_load_hashes_every_shard_byte_exactly_once_over_the_ranks(saved_at_pipe2_depth2, loaded_at_depth4):
    path, results = saved_at_pipe2_depth2["path"], loaded_at_depth4
    sizes = [(path / "ranks_0000" / f"rank_{i:05d}.safetensors").stat().st_size for i in range(4)]
    assert sum(sum(r["chunks"]) for r in results) == sum(sizes)
    for rank, r in enumerate(results):
        assert sum(r["chunks"]) == sizes[rank]  # four files, four ranks: rank r hashes file r
        assert max(r["chunks"]) <= 4096 and len(r["chunks"]) == math.ceil(sizes[rank] / 4096)
        for name, tensor in saved_at_pipe2_depth2["saved"].items():
            assert torch.equal(r["loaded"][name], tensor), name


def test_a_corrupt_shard_is_named_on_every_rank_when_its_verifier_does_not_read_it(
        saved_at_pipe2_depth2, loaded_at_depth4, tmp_path):
    # Saved at depth 2, loaded at depth 4: ranks 2 and 3 read file 1; rank 1, which hashes it, does not.
    assert [1 in r["read"] for r in loaded_at_depth4] == [False, False, True, True]
    path = tmp_path / "corrupt"
    path.mkdir()
    shutil.copytree(saved_at_pipe2_depth2["path"], path, dirs_exist_ok=True)
    shard = path / "ranks_0000" / "rank_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    results = run_distributed(4, load_counting_hashed_bytes, tmp_path, path, 4096)
    expected = (f"checkpoint shard {str(shard)!r} is corrupt: its sha256 does not match the one recorded at its save")
    assert [r.get("refused") for r in results] == [expected] * 4


def test_one_process_reader_hashes_every_file_in_chunks(saved_at_pipe2_depth2, monkeypatch):
    monkeypatch.setattr(reader_module, "hashlib", types.SimpleNamespace(sha256=CountingSha256))
    monkeypatch.setattr(reader_module, "HASH_CHUNK_BYTES", 4096)
    monkeypatch.setattr(CountingSha256, "chunks", [])
    monkeypatch.setattr(reader_module, "MAPPED_BYTES", 1)  # files closed after every read: the copies must outlive them
    path = saved_at_pipe2_depth2["path"]
    _, tensors = checkpoint.read_full_model(path)
    assert sum(CountingSha256.chunks) == sum(f.stat().st_size for f in path.glob("ranks_*/rank_*.safetensors"))
    assert max(CountingSha256.chunks) <= 4096
    for name, tensor in saved_at_pipe2_depth2["saved"].items():
        assert torch.equal(tensors[name], tensor), name


def agree_on_errors(rank, world):
    cpu = torch.device("cpu")
    some_fail = first_error(f"rank {rank} found a problem" if rank in (3, 1) else None, cpu)
    return some_fail, first_error(None, cpu), broadcast_object({"from": rank}, src=2)


def test_every_rank_gets_the_lowest_failing_ranks_message():
    results = run_distributed(4, agree_on_errors)
    assert results == [("rank 1 found a problem", None, {"from": 2})] * 4


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    whole, _, _ = run(make_config(tmp_path, Layout()), 0)
    accumulated, _, _ = run(make_config(tmp_path, Layout(), micro_batch=1), 0)
    assert _close(accumulated, whole, 1e-6)


def test_learning_rate_schedule_by_hand():
    config = build_config({"train": {"steps": 12, "lr": 1.0, "warmup_steps": 2, "min_lr_ratio": 0.1}})
    assert learning_rate(config, 0) == 0.5 and learning_rate(config, 1) == 1.0
    assert learning_rate(config, 2) == pytest.approx(1.0)  # cosine starts at the peak
    assert learning_rate(config, 7) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(config, 11) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.9)))
    constant = build_config({"train": {"lr": 0.3, "schedule": "constant"}})
    assert learning_rate(constant, 50) == 0.3


def names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_a_rollback_sets_the_abandoned_checkpoints_aside_and_prunes_only_its_own_run(tmp_path):
    """Train to 6 keeping 2, 4 and 6; resume by name from 2 keeping 1. The abandoned 4 and 6 are
    moved aside byte for byte, the new run's newest save is kept, the checkpoint it resumed
    from is spared, and `latest` is the new run's (before: pruning by name deleted the new
    saves and the resumed-from one, and `latest` went back to the abandoned 6)."""
    Trainer(make_config(tmp_path, Layout(), checkpoint_every=2, keep_checkpoints=3),
            Grid(Layout(), 0), torch.device("cpu")).fit()
    root = checkpoint.checkpoint_root(tmp_path)
    assert names(root) == ["step_00000002", "step_00000004", "step_00000006"]
    before = {name: (root / name / "ranks_0000" / "rank_00000.safetensors").read_bytes()
              for name in ("step_00000004", "step_00000006")}

    folder, moved = checkpoint.set_aside_later(tmp_path, 2)
    assert moved == ["step_00000004", "step_00000006"] and folder.parent == root
    assert {name: (folder / name / "ranks_0000" / "rank_00000.safetensors").read_bytes() for name in moved} == before

    config = make_config(tmp_path, Layout(), checkpoint_every=2, keep_checkpoints=1, steps=5, lr=2e-3)
    trainer = Trainer(config, Grid(Layout(), 0), torch.device("cpu"))
    trainer.resume_from(checkpoint.CheckpointReader(root / "step_00000002"))
    trainer.fit()
    # saves at 4 and at the end, 5, keeping 1: 4 is pruned, 5 kept, 2 (resumed from) spared
    assert names(root) == [folder.name, "step_00000002", "step_00000005"]
    assert checkpoint.resolve_resume(str(tmp_path), "latest") == root / "step_00000005"
    assert (folder / "step_00000006" / "meta.json").is_file()  # nothing of the abandoned run deleted
    assert checkpoint.set_aside_later(tmp_path, 9) is None  # nothing later: nothing moved


def test_pruning_counts_complete_checkpoints_only_and_spares_the_protected(tmp_path):
    root = tmp_path / "checkpoints"
    for step, complete in ((4000, True), (4100, True), (4200, True), (5000, False)):
        (root / f"step_{step:08d}").mkdir(parents=True)
        if complete:
            (root / f"step_{step:08d}" / "meta.json").write_text("{}")
    spare = (root / "step_00004200", root / "step_00004000")
    writer_module.prune_checkpoints(root, keep=1, spare=spare)
    # 4100 goes; 4000 is spared; 5000 has no meta.json: not a checkpoint, neither counted nor removed
    assert names(root) == ["step_00004000", "step_00004200", "step_00005000"]
    writer_module.prune_checkpoints(root, keep=1, spare=(root / "step_00004200",))
    assert names(root) == ["step_00004200", "step_00005000"]


@pytest.mark.parametrize("damage", ["truncated shard", "garbled meta.json", "meta.json without tensors"])
def test_latest_falls_back_to_the_newest_checkpoint_that_reads_whole(tmp_path, damage):
    Trainer(make_config(tmp_path, Layout(), checkpoint_every=2, keep_checkpoints=3),
            Grid(Layout(), 0), torch.device("cpu")).fit()
    newest = checkpoint.checkpoint_root(tmp_path) / "step_00000006"
    if damage == "truncated shard":
        shard = newest / "ranks_0000" / "rank_00000.safetensors"
        shard.write_bytes(shard.read_bytes()[:100])
    elif damage == "garbled meta.json":
        (newest / "meta.json").write_text("{not json")
    else:
        meta = json.loads((newest / "meta.json").read_text())
        del meta["tensors"]
        (newest / "meta.json").write_text(json.dumps(meta))
    passed_over: list[str] = []
    latest = checkpoint.resolve_resume(str(tmp_path), "latest", passed_over)
    assert latest.name == "step_00000004"
    assert len(passed_over) == 1 and "step_00000006" in passed_over[0]
    reader = checkpoint.CheckpointReader(latest)
    reader.check_files()
    assert reader.step == 4


def test_a_re_save_keeps_the_old_copy_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    """Saving a step that exists moves the old copy aside, puts the new one in place, then drops
    the old; a save killed between the two leaves the old copy whole beside the new files."""
    config = make_config(tmp_path, Layout(), checkpoint_every=TOTAL)
    trainer = Trainer(config, Grid(config.layout, 0), torch.device("cpu"))
    trainer.fit()
    root = checkpoint.checkpoint_root(tmp_path)
    final = root / f"step_{TOTAL:08d}"
    old_meta = (final / "meta.json").read_text()
    assert checkpoint.save(trainer, TOTAL, keep=2) == final  # re-save: same place, no leftover
    assert names(root) == [final.name]

    real_replace = os.replace

    def killed_after_moving_the_old_copy(src, dst):
        if str(src).endswith(".partial"):
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(writer_module.os, "replace", killed_after_moving_the_old_copy)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(trainer, TOTAL, keep=2)
    kept = root / f"{final.name}.replaced"
    assert (kept / "meta.json").read_text() == old_meta
    reader = checkpoint.CheckpointReader(kept)
    reader.check_files()
