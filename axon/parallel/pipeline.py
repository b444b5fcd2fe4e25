"""Pipeline stages: one step's micro-batches under 1F1B, and the sends between stages.

Stage s of p runs min(p - s - 1, m) forwards ahead, then alternates one forward and one
backward, then drains the remaining backwards (`perfmodel.pipeline.one_f_one_b`), so at
most p - s micro-batches' activations are alive on a stage. Activations go to the next
stage and their gradients come back over the pipe group, to the rank with the same (data,
depth, row, col) coordinates. Sends are started and left in flight (waited for at the end
of the step); receives block, in micro-batch order, so the schedule cannot deadlock: every
receive's matching send was issued by a peer that waits on nothing from this rank first.
"""

from __future__ import annotations

import time

import torch

from axon.parallel.comm import broadcast, receive, send_start
from perfmodel.pipeline import one_f_one_b  # the schedule; the performance model replays the same one


class StagePeers:
    """This rank's place in the pipe: its stage, and the global ranks of the stages around it
    (same data, depth, row and col coordinates)."""

    def __init__(self, grid, hidden: int):
        self.axis = grid.axis("pipe")
        self.stage, self.stages = grid.coord("pipe"), grid.size("pipe")
        stride = grid.layout.strides()["pipe"]
        self.previous = grid.rank - stride if self.stage > 0 else None
        self.next = grid.rank + stride if self.stage < self.stages - 1 else None
        self.last = grid.rank + (self.stages - 1 - self.stage) * stride
        self.hidden_local = hidden // grid.size("col")

    def receive_activations(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The previous stage's residual stream for these ids: [batch, seq, hidden/col]."""
        buffer = torch.empty(*ids.shape, self.hidden_local, dtype=dtype, device=ids.device)
        return receive(buffer, self.axis, self.previous)

    def forward_only(self, stage_forward, ids: torch.Tensor, head, dtype: torch.dtype,
                     result_dtype: torch.dtype) -> torch.Tensor:
        """Evaluation through every stage in turn (no schedule: nothing runs backward): each stage
        receives the residual stream, runs its blocks and passes it on; the last applies
        head(logits) -> [batch, seq], which is broadcast so every stage returns it."""
        x = ids if self.previous is None else self.receive_activations(ids, dtype)
        out = stage_forward(x)
        if self.next is not None:
            send_start(out.contiguous(), self.axis, self.next).wait()
            result = torch.empty(ids.shape, dtype=result_dtype, device=ids.device)
        else:
            result = head(out).to(result_dtype).contiguous()
        return broadcast(result, self.axis, self.last)


class PipelineStep(StagePeers):
    """Runs one step's micro-batches through this rank's stage under 1F1B."""

    def __init__(self, model, grid, dtype: torch.dtype):
        super().__init__(grid, model.shape.hidden)
        self.model, self.grid, self.dtype = model, grid, dtype
        # Set to a list to record each run's compute intervals (benchmarks.pipeline_bubble):
        # {"start", "end", "ops": [(kind, j, t0, t1)]} in perf_counter seconds. Off by default:
        # on a GPU every interval costs a synchronize.
        self.timeline: list | None = None

    def _now(self, device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def run(self, batches, keeps, kept_tokens: float, buckets, device) -> torch.Tensor:
        """Forward and backward every micro-batch; returns this stage's loss sum (0 unless last)."""
        loss_sum = torch.zeros((), device=device)
        inputs, outputs, sends = {}, {}, []
        record = {"start": self._now(device), "ops": []} if self.timeline is not None else None
        for kind, j in one_f_one_b(self.stage, self.stages, len(batches)):
            ids, targets = batches[j]
            if kind == "F":
                x = ids if self.previous is None else self.receive_activations(ids, self.dtype).requires_grad_()
                began = self._now(device) if record else 0.0
                out = self.model.stage_forward(x)
                if self.next is None:
                    losses = self.model.stage_losses(out, targets, keeps[j])
                    loss_sum += losses.detach().sum()
                    out = losses.sum() / kept_tokens
                else:
                    sends.append(send_start(out.detach().contiguous(), self.axis, self.next))
                inputs[j], outputs[j] = x, out
            else:
                buckets.final_micro_batch = j == len(batches) - 1  # DP buckets launch in this backward
                x, out = inputs.pop(j), outputs.pop(j)
                if self.next is None:
                    began = self._now(device) if record else 0.0
                    out.backward()
                else:
                    grad = receive(torch.empty_like(out), self.axis, self.next)
                    began = self._now(device) if record else 0.0
                    out.backward(grad)
                if self.previous is not None:
                    sends.append(send_start(x.grad.contiguous(), self.axis, self.previous))
            if record:
                record["ops"].append((kind, j, began, self._now(device)))
        for work in sends:
            work.wait()
        if record:
            record["end"] = self._now(device)
            self.timeline.append(record)
        return loss_sum
