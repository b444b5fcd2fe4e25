"""Creating every group of one grid axis at once, with as few world-wide collectives as torch allows.

With a device bound in init_process_group (NCCL, as axon.runtime.bootstrap does), torch creates each
new_group by splitting the world's communicator: an ncclCommSplit that every rank of the world
joins, members or not. One `split_group` call creates all the groups of an axis in a single
such split, so a grid costs one world-wide collective per axis instead of one per group.
torch < 2.5 has no split_group: there create_groups refuses rather than split the world once
per group (tens of thousands of world-wide collectives at 32k ranks).

Without a bound device (gloo, the fake backend, NCCL without device_id) new_group only
communicates among the group's members; a non-member's call is local bookkeeping. There every
rank still calls new_group for every group, in the same order, because that keeps torch's
group names sequential and so never reused. (`use_local_synchronization=True` would let each
rank create only its own group, but torch 2.13 then names a group by its ranks and the number
of live groups: a grid destroyed and built again reuses the names, and gloo meets stale store
keys from the first grid and hangs.)
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist


def splits_world() -> bool:
    """True when torch makes each new group by splitting the world's communicator (the
    condition distributed_c10d's _new_process_group_helper uses to pick its split source)."""
    world = dist.group.WORLD
    device = world.bound_device_id
    return device is not None and world._get_backend(device).supports_splitting


def world_timeout() -> timedelta | None:
    """The timeout init_process_group was given, or None when the backend does not say.

    New groups get torch's backend-wide default (30 min on gloo, 10 on NCCL) unless told
    otherwise; a hang in a grid's group must fail as soon as one in the world group would."""
    world = dist.group.WORLD
    backend = world._get_backend(world.bound_device_id or world._device_types[0])
    options = getattr(backend, "options", None)
    return getattr(options, "_timeout", None)


def create_groups(groups: list[list[int]], rank: int, desc: str, timeout: timedelta | None = None) -> dist.ProcessGroup:
    """Create every group in `groups` (a partition of the world's ranks) on every rank;
    return the one that holds `rank`. Every rank must call this with the same `groups`.
    The groups time out as the world group does, unless given their own `timeout`."""
    timeout = timeout or world_timeout()
    if splits_world():
        # Decided from the world group and torch alone: every rank raises alike, before any split.
        if not hasattr(dist, "split_group"):  # torch 2.5 and newer
            raise RuntimeError(f"torch {torch.__version__} on NCCL creates each group by splitting the world "
                               "communicator; axon needs torch >= 2.5 (dist.split_group) for NCCL runs "
                               "(any torch >= 2.4 will do on gloo)")
        return dist.split_group(split_ranks=groups, timeout=timeout, group_desc=desc)
    mine = None
    for ranks in groups:
        group = dist.new_group(ranks, timeout=timeout, group_desc=desc)
        if rank in ranks:
            mine = group
    return mine
