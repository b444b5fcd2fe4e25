"""Strict NCCL: what NCCL would refuse, or hang on, checked on the dry run's fake world.

Torch's fake process group accepts any collective; NCCL does not. While a rank is built and
stepped, `StrictNccl` (a dispatch mode) sees every c10d operation the engine issues, from
comm.py, p2p.py or anywhere else, and flags:

* a collective on a host tensor: the dry run's meta tensors stand for the GPU, and NCCL
  fails on a CPU tensor (object collectives and barriers excepted: torch moves those to the
  device itself under NCCL);
* point-to-point (send, recv) outside `batch_isend_irecv`: unbatched, a send completes only
  with its receive, and two stages that each send first deadlock (DESIGN.md section 10);
* `gather`/`scatter` and every `*_object` collective over more than `SMALL_GROUP` ranks:
  NCCL runs a gather as one send per member into the root, and object collectives pickle
  on the host and read sizes back, both growing with the group at world scale.

It also records, per process group, the sequence of collectives this rank issued on it
(op, dtype and shape of each tensor; point-to-point is left to axon.spec.deadlock_check).
`compare_groups` then checks that the sampled ranks which share a group issued the same
sequence on it: a member that issues a different collective hangs everyone (section 10).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# The largest group a gather, a scatter or an object collective may span: a node's GPUs (8 on
# most machines, 8 GCDs on Frontier), where a root's one message per member stays cheap.
SMALL_GROUP = 8

OBJECT_COLLECTIVES = ("all_gather_object", "gather_object", "broadcast_object_list", "scatter_object_list",
                      "send_object_list", "recv_object_list")
ROOTED = {"gather", "scatter"}  # one message per member, into or out of the root
P2P = {"send", "recv", "recv_any_source"}
NO_TENSOR_DEVICE = {"barrier", "monitored_barrier"}  # torch picks the tensor's device itself

# c10d op names -> the names the engine's trace uses
_NAMES = {"allreduce_": "all_reduce", "allreduce_coalesced_": "all_reduce", "_allgather_base_": "all_gather",
          "allgather_": "all_gather", "allgather_coalesced_": "all_gather",
          "allgather_into_tensor_coalesced_": "all_gather", "_reduce_scatter_base_": "reduce_scatter",
          "reduce_scatter_": "reduce_scatter", "reduce_scatter_tensor_coalesced_": "reduce_scatter",
          "broadcast_": "broadcast", "reduce_": "reduce", "gather_": "gather", "scatter_": "scatter",
          "alltoall_": "all_to_all", "alltoall_base_": "all_to_all", "barrier": "barrier",
          "monitored_barrier_": "monitored_barrier", "send": "send", "recv_": "recv",
          "recv_any_source_": "recv_any_source"}

_TORCH_DIR = os.path.dirname(torch.__file__)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_DRY_RUN = os.path.dirname(os.path.abspath(__file__))
_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.float64: "f64",
           torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8", torch.bool: "bool"}


def _tensor_text(t: torch.Tensor) -> str:
    return f"{_DTYPES.get(t.dtype, str(t.dtype).removeprefix('torch.'))}[{','.join(map(str, t.shape))}]"


def _where(depth: int = 2) -> str:
    """The innermost `depth` frames outside torch and the dry run: who issued the collective."""
    frames, frame = [], sys._getframe(1)
    while frame is not None and len(frames) < depth:
        path = frame.f_code.co_filename
        if not path.startswith((_TORCH_DIR, _DRY_RUN)) and "/contextlib.py" not in path:
            shown = os.path.relpath(path, _ROOT) if path.startswith(_ROOT) else os.path.basename(path)
            frames.append(f"{shown}:{frame.f_lineno} {frame.f_code.co_name}")
        frame = frame.f_back
    return " <- ".join(frames) or "?"


def _in_batch() -> bool:
    """Whether the current c10d op was issued by torch's batch_isend_irecv."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "batch_isend_irecv" and frame.f_code.co_filename.startswith(_TORCH_DIR):
            return True
        frame = frame.f_back
    return False


class _Group:
    """A process group as the checks name it: its axis, size, members and a key that is the
    same in every process that rehearses one of its members."""

    def __init__(self, pg):
        desc = getattr(pg, "group_desc", "") or ""
        self.axis = ("world" if pg == dist.group.WORLD or desc == "default_pg"
                     else desc.removeprefix("axon_") or f"group {pg.group_name}")
        ranks = dist.get_process_group_ranks(pg)
        self.size = len(ranks)
        digest = hashlib.sha1(",".join(map(str, ranks)).encode()).hexdigest()[:10]
        self.key = f"{self.axis}:{','.join(map(str, ranks)) if self.size <= SMALL_GROUP else digest}"
        shown = ranks if self.size <= 4 else [*ranks[:3], "...", ranks[-1]]
        self.text = f"{self.axis} ({self.size} ranks: {', '.join(map(str, shown))})"


class StrictNccl(TorchDispatchMode):
    """Checks every c10d operation issued while active (see the module's docstring); `report()`
    gives the violations, one sentence each, and the sequence issued on each group."""

    def __init__(self):
        super().__init__()
        self.violations: Counter = Counter()  # sentence -> times
        self.sequences: dict[str, list[str]] = {}  # group key -> "op dtype[shape]..." in issue order
        self.groups: dict[str, _Group] = {}
        self.collectives = 0
        self._by_name: dict[str, _Group] = {}
        self._in_object = 0  # depth of object collectives being run (their inner ops are theirs)
        self._saved: list[tuple[object, str, object]] = []

    # Object collectives are Python functions over several c10d ops: wrapped where the engine
    # finds them (torch.distributed's attributes), so each is checked and recorded once.
    def __enter__(self):
        import torch.distributed.distributed_c10d as c10d

        for name in OBJECT_COLLECTIVES:
            original = getattr(c10d, name, None)
            if original is None:
                continue
            for module in (dist, c10d):
                if getattr(module, name, None) is original:
                    self._saved.append((module, name, original))
                    setattr(module, name, self._object_collective(name, original))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for module, name, original in reversed(self._saved):
                setattr(module, name, original)
            self._saved = []

    def _object_collective(self, name: str, original):
        import inspect

        signature = inspect.signature(original)

        def checked(*args, **kwargs):
            if self._in_object:
                return original(*args, **kwargs)
            bound = signature.bind_partial(*args, **kwargs)
            group = self._group(bound.arguments.get("group") or dist.group.WORLD)
            self._issue(name, group, "object")
            if group.size > SMALL_GROUP:
                self._flag(f"{name} over {group.text}: an object collective over more than {SMALL_GROUP} ranks "
                           f"(pickled on the host, sizes read back; use a device tensor collective)")
            self._in_object += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._in_object -= 1

        return checked

    def _group(self, pg) -> _Group:
        group = self._by_name.get(pg.group_name)
        if group is None:
            group = self._by_name[pg.group_name] = _Group(pg)
            self.groups[group.key] = group
        return group

    def _issue(self, op: str, group: _Group, tensors: str) -> None:
        self.collectives += 1
        self.sequences.setdefault(group.key, []).append(f"{op} {tensors}")

    def _flag(self, sentence: str) -> None:
        self.violations[f"{sentence}; at {_where()}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace != "c10d" or self._in_object:
            return func(*args, **kwargs)
        pg = next((a for a in args if isinstance(a, torch.ScriptObject)
                   and a._type().qualified_name().endswith(".ProcessGroup")), None)
        if pg is None:
            return func(*args, **kwargs)
        raw = func._overloadpacket.__name__
        op = _NAMES.get(raw, raw.strip("_"))
        group = self._group(dist.ProcessGroup.unbox(pg))
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        host = [t for t in tensors if t.device.type == "cpu"]
        if host and op not in NO_TENSOR_DEVICE:
            self._flag(f"{op} over {group.text} on a host tensor ({_tensor_text(host[0])} on cpu): NCCL "
                       f"runs collectives on device tensors only")
        if op in P2P:
            if not _in_batch():
                self._flag(f"unbatched {op} over {group.text}: point-to-point must go through "
                           f"batch_isend_irecv (a lone send waits for its receive and can deadlock)")
            return func(*args, **kwargs)
        if op in ROOTED and group.size > SMALL_GROUP:
            self._flag(f"{op} over {group.text}: a gather or scatter over more than {SMALL_GROUP} ranks "
                       f"(one message per member at the root)")
        # What the members agree on: a gather's outputs and a scatter's inputs exist on the root only.
        shown = tree_leaves(args[1] if op == "gather" else args[0]) if op in ROOTED else tensors
        self._issue(op, group, " ".join(_tensor_text(t) for t in shown if isinstance(t, torch.Tensor)))
        return func(*args, **kwargs)

    def report(self) -> dict:
        """{"collectives": how many were issued, "violations": one sentence each (with the times
        seen), "groups": {key: {"axis", "size", "ranks", "sequence"}}}."""
        return {"collectives": self.collectives,
                "violations": [s if n == 1 else f"{s} ({n} times)" for s, n in self.violations.items()],
                "groups": {key: {"axis": g.axis, "size": g.size, "ranks": g.text, "sequence": self.sequences[key]}
                           for key, g in self.groups.items() if key in self.sequences}}


def compare_groups(reports: dict[int, dict]) -> tuple[list[tuple[int, int, str]], int]:
    """(rank, rank, sentence) for each pair of sampled members of a group (rank ->
    `StrictNccl.report()`) that issued different sequences on it, naming the first position
    where they part; and how many groups had two or more sampled members."""
    members: dict[str, list[int]] = {}
    for rank in sorted(reports):
        for key in reports[rank]["groups"]:
            members.setdefault(key, []).append(rank)
    sentences, compared = [], 0
    for key, ranks in members.items():
        if len(ranks) < 2:
            continue
        compared += 1
        first = ranks[0]
        reference = reports[first]["groups"][key]
        for other in ranks[1:]:
            sequence = reports[other]["groups"][key]["sequence"]
            where = next((i for i, (a, b) in enumerate(zip(reference["sequence"], sequence)) if a != b), None)
            if where is not None:
                sentences.append((first, other, f"ranks {first} and {other} issued different collectives on "
                                 f"{reference['ranks']}: number {where + 1} is {reference['sequence'][where]} on rank {first} and "
                                 f"{sequence[where]} on rank {other} (a mismatched collective hangs the group)"))
            elif len(sequence) != len(reference["sequence"]):
                ours, theirs = (first, reference["sequence"]), (other, sequence)
                longer, shorter = (theirs, ours) if len(sequence) > len(ours[1]) else (ours, theirs)
                sentences.append((first, other, f"ranks {first} and {other} issued different collectives on "
                                 f"{reference['ranks']}: rank {longer[0]} issued {len(longer[1])}, rank {shorter[0]} {len(shorter[1])}; the "
                                 f"first extra is {longer[1][len(shorter[1])]} (a collective no peer joins hangs)"))
    return sentences, compared


def summary(report: dict) -> dict:
    """A rank's report as `--json` prints it: each group's sequence as its length and a digest."""
    groups = {key: {"axis": g["axis"], "size": g["size"], "ranks": g["ranks"], "collectives": len(g["sequence"]),
                    "digest": hashlib.sha1("\n".join(g["sequence"]).encode()).hexdigest()[:12]}
              for key, g in report["groups"].items()}
    return {**report, "groups": groups}
