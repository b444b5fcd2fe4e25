"""One rank checks, every rank learns the verdict: through the job's c10d store, not a collective.

Checking a checkpoint costs one stat per shard file and a parse of its metadata. Done on every
rank that is world x files stats on one file system; done on rank 0 alone it is files stats, and
the other ranks each make one store read for the answer (O(1) store operations per rank).
The ranks have met (the store exists) but no collective has run, so an error found on rank 0
still ends every rank with the same sentence, never a hang.
"""

from __future__ import annotations

import json
import os


def share_from_rank0(runtime, topic: str, verdict: dict | None) -> dict:
    """Rank 0's `verdict` (a JSON-able dict; ignored on the other ranks), on every rank."""
    if runtime.world_size == 1:
        return verdict
    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()
    # torchrun's agent keeps its store across restarts: each attempt reads its own key.
    key = f"axon/verdict/{topic}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if runtime.rank == 0:
        store.set(key, json.dumps(verdict))
        return verdict
    return json.loads(store.get(key))  # waits for rank 0's set, up to the process group's timeout
