"""Read an axon checkpoint at any layout: every global tensor region is served from the
shard files that hold it, so a rank reads only what its own shards need.

Before anything is read, `verify` checks each shard file's sha256 once over the whole
world (rank r hashes the r-th, (r + world)-th, ... file; every rank learns the first bad one),
reading it in chunks: no file is held in memory to hash it, and a load hashes each byte once,
not once per rank that needs it. A rank reads meta.json and only the files.json records of the
files it hashes or reads (axon/checkpoint/files.py has the layout on disk).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from axon.checkpoint.files import malformed_records, read_index, shard_path, shard_ranks
from axon.config import ConfigError
from axon.parallel.comm import world_min
from axon.spec.layout import AXES, Layout
from axon.spec.shapes import ModelShape

FORMAT_VERSION = 2  # what a save writes
READABLE_FORMATS = (1, 2)  # 1: every rank's file flat in the folder, every record in meta.json
META = "meta.json"
HASH_CHUNK_BYTES = 8 * 2**20  # hashing reads a file this much at a time
# safetensors maps a file; the pages a read touches stay in this process's RSS until the file
# is closed, so the open files are closed after every this many bytes read through them.
MAPPED_BYTES = 64 * 2**20


class CorruptCheckpoint(ConfigError):
    """A shard file's bytes do not match the sha256 meta.json records (the verdict every rank
    agrees on in CheckpointReader.verify)."""


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read HASH_CHUNK_BYTES at a time into one reused buffer."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(HASH_CHUNK_BYTES))
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(buffer):
            digest.update(buffer[:count])
    return digest.hexdigest()


def _malformed_fields(meta: dict) -> str | None:
    """What in a parsed meta.json has the wrong type (the reader indexes these blindly), or None."""
    step = meta["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"step is {step!r}, not a whole number >= 0"
    for key in ("layout", "model", "tensors") + (("files",) if meta["format"] == 1 else ()):
        if not isinstance(meta[key], dict):
            return f"{key} is {type(meta[key]).__name__}, not an object"
    if meta["format"] == 1 and (malformed := malformed_records(meta["files"])):
        return malformed
    for name, info in meta["tensors"].items():
        if not isinstance(info, dict) or not isinstance(info.get("global_shape"), list):
            return f"tensors[{name!r}] is {info!r}, not a description with a global_shape"
    if not isinstance(meta["optimizer_step"], (int, float)):
        return f"optimizer_step is {meta['optimizer_step']!r}, not a number"
    return None


class CheckpointReader:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / META
        if not meta_path.is_file():
            raise ConfigError(f"checkpoint {str(self.path)!r} has no {META}: not a complete axon checkpoint")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"checkpoint file {str(meta_path)!r} is corrupt: {err}") from None
        if not isinstance(self.meta, dict):
            raise ConfigError(f"checkpoint file {str(meta_path)!r} is corrupt: it holds a "
                              f"{type(self.meta).__name__}, not an object")
        self.format = self.meta.get("format")
        if self.format not in READABLE_FORMATS:
            raise ConfigError(f"checkpoint {str(self.path)!r} has format {self.format!r}; "
                              f"this axon reads formats {' and '.join(map(str, READABLE_FORMATS))}")
        missing = [key for key in ("step", "layout", "model", "tensors", "optimizer_step")
                   + (("files",) if self.format == 1 else ()) if key not in self.meta]
        if missing:
            raise ConfigError(f"checkpoint file {str(meta_path)!r} lacks {', '.join(missing)}: "
                              "not a complete axon checkpoint")
        malformed = _malformed_fields(self.meta)
        if malformed:
            raise ConfigError(f"checkpoint file {str(meta_path)!r} is corrupt: {malformed}")
        try:  # virtual_stages is absent from checkpoints written before interleaving: 1
            self.layout = Layout.from_mapping(self.meta["layout"], where=f"{meta_path}: layout")
            self.shape = ModelShape(**self.meta["model"])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"checkpoint {str(self.path)!r} records an impossible layout or model: {err}") from None
        self.tensors = self.meta["tensors"]
        # {shard file path: {bytes, sha256}}: format 1's all from meta.json; format 2's one folder's
        # files.json at a time, as they are needed
        self._records: dict[str, dict] = dict(self.meta["files"]) if self.format == 1 else {}
        self._indexed: set[str] = set()
        self.files_read: set[int] = set()  # the ranks whose shard files this reader has read from
        self.bytes_read = 0  # from storage: shard bytes hashed and tensor bytes read
        self._open: dict[int, object] = {}
        self._mapped_bytes = 0
        self._verified = False

    @property
    def step(self) -> int:
        return self.meta["step"]

    def shard_files(self) -> list[str]:
        """Every shard file's path relative to the checkpoint folder, in rank order."""
        if self.format == 1:
            return sorted(self.meta["files"])
        return [shard_path(rank) for rank in shard_ranks(self.layout)]

    def record(self, name: str) -> dict:
        """A shard file's {bytes, sha256} as the save recorded it."""
        folder = name.rpartition("/")[0]
        if folder and folder not in self._indexed:
            self._records.update({f"{folder}/{file}": record
                                  for file, record in read_index(self.path / folder).items()})
            self._indexed.add(folder)
        if name not in self._records:
            raise ConfigError(f"checkpoint {str(self.path)!r} records no size or sha256 for its shard {name}")
        return self._records[name]

    def check_files(self) -> None:
        """Every shard file is present at its recorded size: one stat per file, so one rank runs
        it (the one that checks a checkpoint before a resume) and shares the verdict."""
        for name in self.shard_files():
            record = self.record(name)
            file = self.path / name
            try:
                size = file.stat().st_size
            except FileNotFoundError:
                raise ConfigError(f"checkpoint shard {str(file)!r} is missing") from None
            if size != record["bytes"]:
                raise ConfigError(f"checkpoint shard {str(file)!r} is truncated or altered: "
                                  f"{size} bytes on disk, {record['bytes']} written")

    def check_model(self, shape: ModelShape) -> None:
        for key, mine in vars(shape).items():
            if key == "max_positions":  # the context an export writes: metadata, not the weights' shape
                continue
            theirs = getattr(self.shape, key)  # the rebuilt shape: fields newer than the checkpoint take defaults
            if theirs != mine:
                raise ConfigError(f"checkpoint {str(self.path)!r} holds a model with model.{key}={theirs} "
                                  f"but the config has model.{key}={mine}")

    def verify(self, rank: int = 0, world: int = 1, device=None) -> None:
        """Check every shard file's sha256 against the recorded one, each file on one rank: rank
        `rank` of `world` hashes files rank, rank + world, ... Collective when world > 1 (one
        all-reduce on `device`): every rank raises the same error, naming the first bad file."""
        names = self.shard_files()
        first_bad = next((i for i in range(rank, len(names), world) if not self._intact(names[i])), len(names))
        if world > 1:
            first_bad = world_min(first_bad, device)
        if first_bad < len(names):
            raise CorruptCheckpoint(f"checkpoint shard {str(self.path / names[first_bad])!r} is corrupt: "
                                    "its sha256 does not match the one recorded at its save")
        self._verified = True

    def _intact(self, name: str) -> bool:
        try:
            record = self.record(name)
            self.bytes_read += record["bytes"]
            return file_sha256(self.path / name) == record["sha256"]
        except (OSError, ConfigError):  # unreadable counts as corrupt: the verdict must still reach the other ranks
            return False

    def _read(self, rank: int, key: str, lo: int | None = None, hi: int | None = None) -> torch.Tensor:
        """A copy of elements [lo, hi) of a tensor of a rank's shard file (verify() has checked
        its checksum); at most MAPPED_BYTES of the files read stay mapped."""
        if not self._verified:
            raise RuntimeError(f"checkpoint {str(self.path)!r}: call verify() before reading shards")
        self.files_read.add(rank)
        if rank not in self._open:
            self._open[rank] = safe_open(str(self.path / shard_path(rank, self.format)), framework="pt")
        f = self._open[rank]
        tensor = f.get_tensor(key) if lo is None else f.get_slice(key)[lo:hi]
        self._mapped_bytes += tensor.numel() * tensor.element_size()
        self.bytes_read += tensor.numel() * tensor.element_size()
        if self._mapped_bytes > MAPPED_BYTES:
            self._open.clear()  # closing unmaps the pages read so far
            self._mapped_bytes = 0
        return tensor

    def region(self, key: str, name: str, rows: slice, cols: slice) -> torch.Tensor:
        """Rows x cols of the global tensor `name` (1-D seen as one row); `key` picks
        the stored quantity: "model", "exp_avg" or "exp_avg_sq"."""
        info = self.tensors[name]
        shape, axes = list(info["global_shape"]), list(info["dim_axes"])
        if len(shape) == 1:
            shape, axes = [1] + shape, [None] + axes
        parts = [self.layout.sizes()[a] if a else 1 for a in axes]
        height, width = shape[0] // parts[0], shape[1] // parts[1]  # one source block
        out = torch.empty(rows.stop - rows.start, cols.stop - cols.start)
        for i in range(rows.start // height, (rows.stop - 1) // height + 1):
            r0, r1 = max(rows.start, i * height), min(rows.stop, (i + 1) * height)
            for j in range(cols.start // width, (cols.stop - 1) // width + 1):
                c0, c1 = max(cols.start, j * width), min(cols.stop, (j + 1) * width)
                coords = {a: 0 for a in AXES}
                coords["pipe"] = info.get("stage", 0)  # checkpoints from before pipe have no "stage"
                coords.update({a: k for a, k in zip(axes, (i, j)) if a})
                block_rows = self._block_rows(f"{key}/{name}", info, coords, r0 - i * height, r1 - i * height,
                                              height * width, width)
                out[r0 - rows.start:r1 - rows.start, c0 - cols.start:c1 - cols.start] = \
                    block_rows[:, c0 - j * width:c1 - j * width]
        return out

    def _block_rows(self, key, info, coords, r0, r1, block_numel, width) -> torch.Tensor:
        """Rows [r0, r1) of one source block, from the depth shards that hold them."""
        lo, hi = r0 * width, r1 * width
        depth = self.layout.depth if info["depth_sharded"] else 1
        per_shard = -(-block_numel // depth)
        pieces = []
        for d in range(lo // per_shard, (hi - 1) // per_shard + 1):
            rank = self.layout.rank_of({**coords, "depth": d})
            start = d * per_shard
            pieces.append(self._read(rank, key, max(lo, start) - start, min(hi, start + per_shard) - start))
        return torch.cat(pieces).view(r1 - r0, width).float()

    def full(self, key: str, name: str) -> torch.Tensor:
        shape = self.tensors[name]["global_shape"]
        rows = shape[0] if len(shape) == 2 else 1
        return self.region(key, name, slice(0, rows), slice(0, shape[-1])).view(shape)

    def shard(self, rank: int, key: str) -> torch.Tensor:
        """A stored tensor whole, as rank `rank` wrote it ("model/NAME", "exp_avg/NAME", ...)."""
        return self._read(rank, key)

    def rng_states(self, rank: int) -> torch.Tensor:
        """The RNG states a shard file holds: one row per data coordinate of the ranks whose
        states travel with `rank`'s (format 1: `rank`'s alone, one row)."""
        states = self._read(rank, "rng/torch")
        return states.view(1, -1) if states.dim() == 1 else states


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint folder `step_<digits>` (or of a killed save's `step_<digits>.partial`)."""
    match = re.fullmatch(r"step_(\d+)(\.partial)?", path.name)
    return int(match.group(1)) if match else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Every complete checkpoint (its meta.json written, which a save does last) under
    OUT_DIR/checkpoints, oldest step first."""
    return sorted((p for p in root.glob("step_*") if p.is_dir() and (p / META).is_file() and p.name[5:].isdigit()),
                  key=checkpoint_step)


def find_latest(root: Path) -> Path | None:
    """The newest complete checkpoint under OUT_DIR/checkpoints."""
    done = complete_checkpoints(root)
    return done[-1] if done else None


def find_latest_intact(root: Path, below: int | None = None) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint (of a step below `below`, if given) whose metadata reads
    and whose shard files are all there at their recorded sizes (cheap, before any collective;
    the checksums are verified at load), and why each newer one was passed over."""
    passed_over = []
    for path in reversed(complete_checkpoints(root)):
        if below is not None and checkpoint_step(path) >= below:
            continue
        try:
            CheckpointReader(path).check_files()
        except ConfigError as err:
            passed_over.append(str(err))
            continue
        return path, passed_over
    return None, passed_over
