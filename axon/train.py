"""The training loop: build the model on a grid, then step AdamW on the local shards."""

from __future__ import annotations

import time

import torch

from axon.config import RunConfig, micro_batch_plan
from axon.data import shard_micro_batches, token_source
from axon.metrics import MetricsLog
from axon.model import Llama, initialize_parameters
from axon.parallel.comm import all_reduce
from axon.parallel.grads import clip_grad_norm, sync_gradients
from axon.parallel.sharding import named_shardings
from perfmodel.flops import flops_per_token


def build_optimizer(model, config: RunConfig) -> torch.optim.Optimizer:
    """AdamW on the local shards; weight decay on matrices (depth-sharded weights) only."""
    decay, no_decay = [], []
    for _, param, sharding in named_shardings(model):
        (decay if sharding.depth_sharded else no_decay).append(param)
    t = config.train
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, eps=1e-8)


class Trainer:
    def __init__(self, config: RunConfig, grid, device: torch.device, peak_tflops: float = 0.0, source=None):
        self.config, self.grid, self.device = config, grid, device
        self.model = Llama(config.model, grid).to(device)
        initialize_parameters(self.model, grid, config.train.seed)
        self.optimizer = build_optimizer(self.model, config)
        self.source = source if source is not None else token_source(config)
        self.tokens_per_step = config.train.global_batch * config.model.seq_len
        self.flops_per_step = flops_per_token(config.model) * self.tokens_per_step
        self.peak_tflops = peak_tflops

    def step(self, step: int) -> dict:
        """One optimizer step over the global batch; returns the step's metrics (same on every rank)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for ids, targets in shard_micro_batches(self.source, self.config, self.grid, step, self.device):
            # Sum of token losses over the global batch's token count: gradients summed over
            # data and depth then give the exact mean-loss gradient.
            token_losses = self.model.token_losses(ids, targets)
            (token_losses.sum() / self.tokens_per_step).backward()
            loss_sum += token_losses.detach().sum()
        sync_gradients(self.model, self.grid)
        grad_norm = clip_grad_norm(self.model, self.grid, self.config.train.grad_clip)
        self.optimizer.step()
        for axis in ("depth", "data"):
            all_reduce(loss_sum, self.grid.group(axis))
        loss = loss_sum.item() / self.tokens_per_step
        step_time = time.perf_counter() - start
        tflops_per_rank = self.flops_per_step / step_time / self.grid.layout.world_size / 1e12
        return {
            "step": step + 1,
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": self.optimizer.param_groups[0]["lr"],
            "step_time_s": step_time,
            "tokens_per_s": self.tokens_per_step / step_time,
            "tflops_per_rank": tflops_per_rank,
            "mfu": tflops_per_rank / self.peak_tflops if self.peak_tflops > 0 else 0.0,
        }

    def fit(self, log: MetricsLog | None = None) -> list[dict]:
        history = []
        for step in range(self.config.train.steps):
            metrics = self.step(step)
            history.append(metrics)
            if log is not None:
                log.record(metrics)
        return history


def describe(config: RunConfig, trainer: Trainer, runtime, peak_source: str) -> str:
    """The start-up banner rank 0 prints."""
    params = sum(p.numel() for p in trainer.model.parameters())
    total = sum(torch.Size(s.global_shape).numel() for _, _, s in named_shardings(trainer.model))
    micro, count = micro_batch_plan(config)
    return "\n".join([
        f"axon: world {runtime.world_size} via {runtime.launcher}, backend {runtime.backend}, device {runtime.device.type}",
        f"axon: layout {config.layout}",
        f"axon: model {config.model_name}: {config.model.layers} layers, hidden {config.model.hidden}, "
        f"{total / 1e6:.2f}M parameters ({params / 1e6:.2f}M on this rank)",
        f"axon: {config.train.global_batch} sequences x {config.model.seq_len} tokens per step; "
        f"{count} micro-batch(es) of {micro} per data x depth shard",
        f"axon: MFU peak {trainer.peak_tflops:.3f} TFLOP/s per rank ({peak_source})",
    ])
