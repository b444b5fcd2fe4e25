"""Pipeline stages: one step's micro-batches under 1F1B, and the transfers between stages.

Stage s of p runs min(p - s - 1, m) forwards ahead, then alternates one forward and one
backward, then drains the remaining backwards, so at most p - s micro-batches' activations
are alive on a stage. Activations go to the next stage and their gradients come back over
the pipe group, to the rank with the same (data, depth, row, col) coordinates.

Why this cannot deadlock on NCCL: between two neighbours, operations run in issue order on
one stream and a send completes only with its receive. The schedule
(`perfmodel.pipeline.one_f_one_b_with_transfers`) issues each steady-state send in one batch
with the receive from the same neighbour that the neighbour issues in its own matching
batch (send forward beside receive backward, send backward beside receive forward), and
waits for each batch before going on; in warm-up and cool-down a stage only sends toward a
neighbour whose next operation is the matching receive. So every batch meets its partner
batches, for every p and m: `axon.parallel.rendezvous` replays the schedule under these
rules (tests, p <= 16, m <= 64) and the engine's recorded traces likewise.
"""

from __future__ import annotations

import time

import torch

from axon.parallel.comm import broadcast
from axon.parallel.p2p import exchange, join_group
from perfmodel.pipeline import Transfer, forward_only_with_transfers, one_f_one_b_with_transfers


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
        self.joined = False  # has the pipe group had its first, all-member collective

    def transfer(self, transfers: tuple[Transfer, ...], tensors: dict, new_buffer, device) -> None:
        """Run one batch of the schedule. Sends take their tensor out of `tensors[(kind, j)]`
        (kind "act" or "grad"); receives put theirs there, in a buffer from new_buffer(j)."""
        if not self.joined:
            join_group(self.axis, device)
            self.joined = True
        batch = []
        for t in transfers:
            key = (t.tensor, t.micro)
            if t.op == "recv":
                tensors[key] = new_buffer(t.micro)
            tensor = tensors.pop(key) if t.op == "send" else tensors[key]
            batch.append((t.op, tensor, self.next if t.toward > 0 else self.previous, f"{t.tensor} {t.micro}"))
        exchange(batch, self.axis)

    def activation_buffers(self, batches_ids, dtype: torch.dtype, device):
        """new_buffer for `transfer`: micro-batch j's residual stream [batch, seq, hidden/col]
        (its gradient has the same shape)."""
        return lambda j: torch.empty(*batches_ids[j].shape, self.hidden_local, dtype=dtype, device=device)

    def forward_only(self, stage_forward, ids: torch.Tensor, head, dtype: torch.dtype,
                     result_dtype: torch.dtype) -> torch.Tensor:
        """Evaluation through every stage in turn (no schedule: nothing runs backward): each stage
        receives the residual stream, runs its blocks and passes it on; the last applies
        head(logits) -> [batch, seq], which is broadcast so every stage returns it."""
        tensors, new_buffer = {("act", 0): ids}, self.activation_buffers([ids], dtype, ids.device)
        result = None
        for action in forward_only_with_transfers(self.stage, self.stages):
            if isinstance(action[0], Transfer):
                self.transfer(action, tensors, new_buffer, ids.device)
            else:
                out = stage_forward(tensors[("act", 0)])
                if self.next is None:
                    result = head(out).to(result_dtype).contiguous()
                tensors[("act", 0)] = out.contiguous()
        if result is None:
            result = torch.empty(ids.shape, dtype=result_dtype, device=ids.device)
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
        """Forward and backward every micro-batch; returns this stage's loss sum (0 unless last).

        `tensors` holds what crosses stages until it is sent or used, keyed (kind, j): "act" is
        micro-batch j's input to this stage coming in and its output going out, "grad" the
        gradient of either."""
        loss_sum = torch.zeros((), device=device)
        tensors, inputs, outputs = {}, {}, {}
        new_buffer = self.activation_buffers([ids for ids, _ in batches], self.dtype, device)
        record = {"start": self._now(device), "ops": []} if self.timeline is not None else None
        for action in one_f_one_b_with_transfers(self.stage, self.stages, len(batches)):
            if isinstance(action[0], Transfer):
                self.transfer(action, tensors, new_buffer, device)
                continue
            kind, j = action
            began = self._now(device) if record else 0.0
            if kind == "F":
                ids, targets = batches[j]
                x = ids if self.previous is None else tensors.pop(("act", j)).requires_grad_()
                out = self.model.stage_forward(x)
                if self.next is None:
                    losses = self.model.stage_losses(out, targets, keeps[j])
                    loss_sum += losses.detach().sum()
                    out = losses.sum() / kept_tokens
                else:
                    tensors[("act", j)] = out.detach().contiguous()  # the send's tensor
                inputs[j], outputs[j] = x, out
            else:
                buckets.final_micro_batch = j == len(batches) - 1  # DP buckets launch in this backward
                x, out = inputs.pop(j), outputs.pop(j)
                if self.next is None:
                    out.backward()
                else:
                    out.backward(tensors.pop(("grad", j)))
                if self.previous is not None:
                    tensors[("grad", j)] = x.grad.contiguous()  # the send's tensor
            if record:
                record["ops"].append((kind, j, began, self._now(device)))
        if record:
            record["end"] = self._now(device)
            self.timeline.append(record)
        return loss_sum
