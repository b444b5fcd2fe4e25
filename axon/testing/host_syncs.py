"""Record the calls that make the host wait for the device (DESIGN section 10), on any device.

On a GPU each of these drains the queue: a value read on the host, or an output whose shape
depends on the data (nonzero, boolean-mask indexing). On a CPU they cost nothing, which is
why a test counts them there instead of timing them.

    with HostSyncs() as syncs:
        model.token_losses(ids, targets).sum().backward()
    assert syncs.calls == []

The ops are seen at the dispatcher, the one level autograd's backward also passes through
(a TorchFunctionMode is not active inside backward). Copies to the host that are no-ops on a
CPU tensor (.cpu(), .tolist(), .numpy()) never reach the dispatcher there, so they are seen
at the Python level instead: outside backward only.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops whose result the host reads: a scalar (.item(), bool(t), int(t), ...), or a size
# that depends on the data.
READ_BY_HOST = {"_local_scalar_dense": "item", "nonzero": "nonzero", "masked_select": "masked_select",
                "_unique2": "unique", "unique_dim": "unique", "unique_consecutive": "unique"}
BOOL_INDEXED = ("index", "index_put", "index_put_", "_index_put_impl_")
TO_HOST_ON_CPU = ("cpu", "tolist", "numpy")
# Tensors made from host values: on a GPU a copy from pageable memory, which PyTorch follows
# with a stream synchronize (torch.full and fill_ pass a scalar to a kernel instead).
FROM_HOST_VALUES = ("tensor", "as_tensor", "new_tensor")


def _has_bool_tensor(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


class _Dispatched(TorchDispatchMode):
    def __init__(self, owner: "HostSyncs"):
        super().__init__()
        self.owner, self.calls = owner, owner.calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        out = func(*args, **(kwargs or {}))
        if not self.owner.counting:
            pass
        elif name in READ_BY_HOST:
            self.calls.append(READ_BY_HOST[name])
        elif name in BOOL_INDEXED and _has_bool_tensor(args[1]):
            self.calls.append(f"{name}[bool]")
        elif name in ("_to_copy", "copy_") and isinstance(out, torch.Tensor) and out.device.type == "cpu" \
                and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args):
            self.calls.append("to cpu")
        return out


class _OnCpu(TorchFunctionMode):
    def __init__(self, owner: "HostSyncs"):
        super().__init__()
        self.owner, self.calls = owner, owner.calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.owner.counting and name in TO_HOST_ON_CPU and isinstance(args[0], torch.Tensor) \
                and args[0].device.type == "cpu":
            self.calls.append(name)
        elif self.owner.counting and name in FROM_HOST_VALUES and not (args and isinstance(args[-1], torch.Tensor)
                                                                       and name == "as_tensor"):
            self.calls.append(f"{name} from host values")
        return func(*args, **(kwargs or {}))


class HostSyncs:
    """A context whose `calls` lists, in order, the host-syncing torch calls made inside it."""

    def __init__(self):
        self.calls: list[str] = []
        self.counting = True
        self._modes = (_OnCpu(self), _Dispatched(self))

    @contextmanager
    def not_counting(self):
        """Leave out what runs inside (e.g. a library call whose host reads touch only host memory)."""
        self.counting = False
        try:
            yield
        finally:
            self.counting = True

    def __enter__(self) -> HostSyncs:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
