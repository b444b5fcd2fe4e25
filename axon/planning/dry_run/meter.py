"""Bytes of the meta tensors a step creates, by what they hold, over the step's lifetime.

Meta tensors have shapes and storages but no data, so "memory" here is what a device would
have allocated: every storage an op creates is recorded with its size, and it counts as
live until only this meter still references it (torch's storage use count drops to 1).
Each storage is classed by the last thing that happened to it: filled by a depth
all-gather (gathered weights), sent into or out of a reduce-scatter (gradient blocks in
flight: with the block it was cast or padded from, and the full-precision shard a narrow
reduction is widened into), or neither (activations and their gradients). Peaks are computed at the end, so a
storage that became a parameter's gradient during the step is counted as a gradient from
its birth (autograd creates those without saying so).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_GATHERS = {"c10d::_allgather_base_", "c10d::allgather_", "c10d::allgather_into_tensor_coalesced_"}
_SCATTERS = {"c10d::_reduce_scatter_base_", "c10d::reduce_scatter_", "c10d::reduce_scatter_tensor_coalesced_"}
# Ops whose output is a copy of their first argument (a cast, padding) or shaped like it.
_COPIES = {"aten::_to_copy", "aten::constant_pad_nd", "aten::empty_like"}
_use_count = torch._C._storage_Use_Count


def _scalar(tensor: torch.Tensor):
    """What `.item()` of a meta tensor reads: 1 (a loss, a gradient norm and a stop vote that
    keep the step on its normal path: finite, no clipping at grad_clip >= 1, no stop)."""
    if tensor.dtype == torch.bool:
        return False
    return 0 if not tensor.dtype.is_floating_point else 1.0


def _host_read(func, args, kwargs) -> torch.Tensor | None:
    """What a meta tensor copied to the host (`.tolist()`, `.cpu()`) reads: `_scalar` in every
    element; None for any other op."""
    if func is torch.ops.aten._to_copy.default and args[0].is_meta and kwargs.get("device") == torch.device("cpu"):
        meta = args[0]
        return torch.full(meta.shape, _scalar(meta), dtype=kwargs.get("dtype") or meta.dtype)
    return None


class ScalarsOnly(TorchDispatchMode):
    """Answers `.item()` and host copies of meta tensors (see `_scalar`) and records nothing."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            return _scalar(args[0])
        read = _host_read(func, args, kwargs)
        return read if read is not None else func(*args, **kwargs)


class LiveBytes(TorchDispatchMode):
    """Records every meta storage created while active: (serial, bytes, kind) and its lifetime
    in op counts. `kinds()` then gives each kind's peak live bytes."""

    def __init__(self):
        super().__init__()
        self.clock = 0  # ops dispatched so far
        self.live: dict[int, tuple[torch.UntypedStorage, int]] = {}  # storage key -> (storage, serial)
        self.born: list[int] = []  # per serial: clock at creation
        self.died: list[int | None] = []
        self.nbytes: list[int] = []
        self.kind: list[str] = []
        self.scalars = 0  # .item() calls answered
        self.excluded: set[int] = set()  # storages that existed before: never counted
        # Keys are StorageImpl addresses: holding the excluded storages keeps a freed one's
        # address from being reused by a new storage, which would then go uncounted.
        self._held: list[torch.UntypedStorage] = []
        self.weights: set[int] = set()  # the parameters' storages, among those
        self.gradients: set[int] = set()  # and their gradients' (the data-parallel buckets)
        self.copied_from: dict[int, int] = {}  # serial -> the serial it was cast or padded from

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            self.scalars += 1
            return _scalar(args[0])
        read = _host_read(func, args, kwargs)
        if read is not None:
            self.scalars += read.numel()
            return read
        out = func(*args, **kwargs)
        self.clock += 1
        serials = len(self.born)
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                self._track(tensor)
        name = func.name()
        if name in _GATHERS:
            self._tag(args[0], "gathered_weights")
        elif name == "aten::_to_copy" and args[0].is_meta and args[0].untyped_storage()._cdata in self.weights:
            self._tag(out, "gathered_weights")  # a parameter cast to the compute dtype: a weight copy
        elif name == "aten::_to_copy" and args[0].is_meta and args[0].untyped_storage()._cdata in self.gradients:
            self._tag(out, "gradient_blocks")  # a gradient bucket's narrow copy for its data all-reduce
        elif name in _SCATTERS:
            self._tag(args[0], "gradient_blocks")
            self._tag(args[1], "gradient_blocks", through_copies=True)  # the block sent
        elif name in _COPIES and args[0].is_meta:
            source, copy = self._serial(args[0]), self._serial(out)
            if source is not None and copy is not None and copy != source:
                self.copied_from[copy] = source
                if name == "aten::empty_like" and self.kind[source] == "gradient_blocks":
                    self.kind[copy] = "gradient_blocks"  # the full-precision shard a narrow reduction widens into
        if len(self.born) > serials:
            self._sweep()
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live or key in self.excluded:
            return
        self.live[key] = (storage, len(self.born))
        self.born.append(self.clock)
        self.died.append(None)
        self.nbytes.append(storage.nbytes())
        self.kind.append("activations")

    def _serial(self, tensor) -> int | None:
        entry = self.live.get(tensor.untyped_storage()._cdata) if isinstance(tensor, torch.Tensor) else None
        return None if entry is None else entry[1]

    def _tag(self, tensors, kind: str, through_copies: bool = False) -> None:
        """Class `tensors`' storages as `kind`; `through_copies`: also the storages they were
        cast or padded from (a weight gradient's full-precision block before its narrow wire copy)."""
        for tensor in tree_leaves(tensors):
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                serial = self._serial(tensor)
                while serial is not None:
                    self.kind[serial] = kind
                    serial = self.copied_from.get(serial) if through_copies else None

    def _sweep(self) -> None:
        """Mark the storages only this meter still holds as died now. Run after an op that
        created storages, not after every op (each sweep asks every live storage its use count,
        and most ops create none): between two such ops the live set only shrinks, so the
        states a sweep skips are never above the one before them, and a death marked at the
        next creating op instead of earlier changes no kind's peak nor `together`."""
        dead = [key for key in self.live if _use_count(key) <= 1]
        for key in dead:
            _, serial = self.live.pop(key)
            self.died[serial] = self.clock

    def reclass(self, tensors, kind: str) -> None:
        """Class the live storages of `tensors` as `kind` for their whole life (e.g. gradients)."""
        self._tag(tensors, kind)

    def exclude(self, tensors, weights: bool = False, gradients: bool = False) -> None:
        """Storages that existed before the measured stretch (parameters, gradient buckets,
        optimizer state): views of them made here are not new memory. A cast of a weight
        (`weights`) is a gathered weight, one of a gradient (`gradients`) a gradient block on
        its way through a narrow data-parallel all-reduce."""
        storages = [t.untyped_storage() for t in tree_leaves(tensors) if isinstance(t, torch.Tensor) and t.is_meta]
        self._held += storages
        keys = {storage._cdata for storage in storages}
        self.excluded |= keys
        if weights:
            self.weights |= keys
        if gradients:
            self.gradients |= keys

    def peaks(self) -> dict[str, int]:
        """Each kind's largest live total over the stretch, and "together": the largest sum."""
        deltas: dict[int, Counter] = {}
        for serial, kind in enumerate(self.kind):
            deltas.setdefault(self.born[serial], Counter())[kind] += self.nbytes[serial]
            end = self.died[serial] if self.died[serial] is not None else self.clock + 1
            deltas.setdefault(end, Counter())[kind] -= self.nbytes[serial]
        current, peak, together = Counter(), Counter(), 0
        for clock in sorted(deltas):
            current.update(deltas[clock])
            for kind, value in current.items():
                peak[kind] = max(peak[kind], value)
            together = max(together, sum(current.values()))
        return {**{k: peak.get(k, 0) for k in ("activations", "gathered_weights", "gradient_blocks")},
                "together": together}
