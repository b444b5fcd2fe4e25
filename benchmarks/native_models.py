"""PyTorch's own parallelism applied to the plain Llama of axon/testing/reference_model.py:
what a user would pick instead of axon. Used by benchmarks/compare_native.py.

* DDP: `DistributedDataParallel` over the data ranks (bucketed, overlapped all-reduce).
* FSDP2: `fully_shard` on every block, then on the root (reshard after forward, the default).
* TP: `parallelize_module` with the Megatron plan, no sequence parallelism: ColwiseParallel on
  wq/wk/wv/w1/w3, RowwiseParallel on wo/w2 (one all-reduce forward and one backward per
  attention and per MLP); the embedding is vocab-parallel (RowwiseParallel, output all-reduced)
  and the LM head is vocab-parallel (ColwiseParallel, logits left sharded) with `loss_parallel`,
  so, like axon, no rank builds full logits. RMSNorm gains stay replicated plain tensors.
* FSDP2 + TP: the TP plan on the "tp" dimension of a 2-D mesh, then fully_shard on "dp".
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.experimental import implicit_replication
from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel, loss_parallel,
                                               parallelize_module)
from torch.nn.parallel import DistributedDataParallel

from axon.testing.reference_model import PlainLlama

KINDS = ("ddp", "fsdp", "tp", "fsdp_tp")


def tensor_parallel(model: PlainLlama, tp_mesh) -> None:
    tp = tp_mesh.size()
    parallelize_module(model, tp_mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        "output": ColwiseParallel(output_layouts=Shard(-1), use_local_output=False),
    })
    for block in model.layers:
        parallelize_module(block, tp_mesh, {
            "attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(), "attention.wo": RowwiseParallel(),
            "feed_forward.w1": ColwiseParallel(), "feed_forward.w3": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(),
        })
        # Attention reshapes the local projections with view(b, t, heads, d): local head counts.
        block.attention.heads //= tp
        block.attention.kv_heads //= tp


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """torch.nn.utils' clipping, with the total norm taken per DeviceMesh and then combined:
    with TP the norm gains are plain tensors, and under FSDP2 + TP they live on the dp mesh
    while the matrices live on the 2-D mesh; torch cannot stack norms across meshes
    (torchtitan groups them the same way)."""
    by_mesh: dict = {}
    for p in params:
        if p.grad is not None:
            by_mesh.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p)
    squares = []
    for group in by_mesh.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in group], foreach=True)
        squares.append((norm.full_tensor() if isinstance(norm, DTensor) else norm) ** 2)
    total = torch.stack(squares).sum().sqrt()
    for group in by_mesh.values():
        with implicit_replication():  # scale DTensor grads by a plain scalar tensor
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total, foreach=True)
    return total


class NativeStep:
    """One native training step: the same AdamW / clipping / loss as axon's Trainer.step.

    `kind` picks the wrapper; `full` are axon's gathered parameters (identical start), or
    None to keep the plain model's own initialization (memory runs).
    """

    def __init__(self, kind: str, shape, world: int, full: dict | None, train):
        # Without `full`, the sharded wrappers start on the meta device and materialize only
        # their shards (the FSDP2 recipe), so no rank holds the whole model; DDP needs it whole.
        meta = full is None and kind != "ddp"
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = PlainLlama(shape)
        if full is not None:
            model.load_state_dict(full)
        self.kind, self.loss_ctx, self.clip = kind, contextlib.nullcontext, train.grad_clip
        if kind == "ddp":
            self.dp_group = dist.group.WORLD
            model = DistributedDataParallel(model)
        elif kind == "fsdp":
            self.dp_group = dist.group.WORLD
            mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("dp",))
            for block in model.layers:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
        elif kind == "tp":
            self.dp_group = None
            tensor_parallel(model, init_device_mesh("cpu", (world,), mesh_dim_names=("tp",)))
            self.loss_ctx = loss_parallel
        elif kind == "fsdp_tp":
            mesh = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("dp", "tp"))
            self.dp_group = mesh["dp"].get_group()
            tensor_parallel(model, mesh["tp"])
            for block in model.layers:
                fully_shard(block, mesh=mesh["dp"])
            fully_shard(model, mesh=mesh["dp"])
            self.loss_ctx = loss_parallel
        else:
            raise ValueError(f"unknown native kind {kind!r}; choose from {KINDS}")
        if meta:
            model.to_empty(device="cpu")
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_(0.0, 0.02) if p.ndim == 2 else p.fill_(1.0)
        self.model = model
        params = list(model.parameters())
        decay = [p for p in params if p.ndim == 2]  # matrices and the embedding (DTensor ndim is global)
        no_decay = [p for p in params if p.ndim != 2]  # norm gains
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=train.lr, betas=train.betas, eps=1e-8)

    def step(self, batches, tokens_per_shard: int) -> float:
        """Forward/backward over this rank's micro-batches, clip, AdamW; returns the global mean loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros(())
        for ids, targets in batches:
            with self.loss_ctx():
                # Local mean weighted by the micro-batch's share; DDP/FSDP average over dp ranks.
                logits = self.model(ids)  # through the wrapper: DDP hooks in at forward
                loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(0, 1))
                loss = loss * (targets.numel() / tokens_per_shard)
                loss.backward()
            loss = loss.detach()
            loss_sum += loss.full_tensor() if isinstance(loss, DTensor) else loss
        if self.clip > 0:
            clip_grad_norm(list(self.model.parameters()), self.clip)
        self.optimizer.step()
        if self.dp_group is not None:  # the logged loss is the global mean, as axon's is
            dist.all_reduce(loss_sum, group=self.dp_group)
            loss_sum /= dist.get_world_size(self.dp_group)
        return loss_sum.item()
