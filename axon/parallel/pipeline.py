"""Pipeline stages: one step's micro-batches under 1F1B (plain or interleaved), and the
transfers between stages.

Plain 1F1B: stage s of p runs min(p - s - 1, m) forwards ahead, then alternates one forward
and one backward, then drains the remaining backwards, so at most p - s micro-batches'
activations are alive on a stage. Interleaved (layout.virtual_stages v > 1): the stage holds
v chunks of layers and runs Megatron-LM's order (`axon.spec.schedules.pipeline_order`); the
stages form a ring, the last passing chunk c's output to the first's chunk c + 1.
Activations go to the next stage and their gradients come back over the pipe group, to the
rank with the same (data, depth, row, col) coordinates.

Why this cannot deadlock on NCCL: between two neighbours, operations run in issue order on
one stream and a send completes only with its receive. The schedule
(`axon.spec.schedules.one_f_one_b_with_transfers`) issues each send in one batch with the
receives it must run beside, which the neighbour issues in its own matching batch; a stage's
batches run one after another in issue order. `axon.spec.deadlock_check` replays the
schedule under these rules (tests: plain p <= 16, m <= 64; interleaved p <= 8, v <= 4,
m <= 8p), checks that every send meets the receive of the same tensor, and checks the
engine's recorded traces likewise.

Transfers overlap compute (axon.parallel.p2p): a batch is issued where the schedule places
it, but a received tensor is waited for only just before the forward or backward that reads
it, and a sent one when a later receive is waited for, or at the end of the step at the latest.
"""

from __future__ import annotations

import time

import torch

from axon.parallel.comm import broadcast
from axon.parallel.p2p import InFlight, join_group
from axon.spec.schedules import Transfer, forward_only_with_transfers, one_f_one_b_with_transfers


class StagePeers:
    """This rank's place in the pipe: its stage, its chunks, and the global ranks of the
    stages around it (same data, depth, row and col coordinates; a ring when interleaved)."""

    def __init__(self, grid, hidden: int):
        self.axis = grid.axis("pipe")
        self.stage, self.stages = grid.coord("pipe"), grid.size("pipe")
        self.chunks = grid.layout.virtual_stages
        stride = grid.layout.strides()["pipe"]
        first = grid.rank - self.stage * stride
        ring = self.chunks > 1  # the last stage's chunk c feeds the first stage's chunk c + 1
        self.previous = first + (self.stage - 1) % self.stages * stride if self.stage > 0 or ring else None
        self.next = first + (self.stage + 1) % self.stages * stride if self.stage < self.stages - 1 or ring else None
        self.last = first + (self.stages - 1) * stride
        self.hidden_local = hidden // grid.size("col")
        self.joined = False  # has the pipe group had its first, all-member collective
        self.in_flight = InFlight()  # batches issued and not yet waited for to the end
        self.arriving: dict = {}  # (kind, j, c) -> (its batch, its index there): receives not yet waited for

    def holds_input(self, chunk: int) -> bool:
        """Chunk `chunk` here starts the model: its input is the token ids."""
        return self.stage == 0 and chunk == 0

    def holds_loss(self, chunk: int) -> bool:
        """Chunk `chunk` here ends the model: its output is the logits."""
        return self.stage == self.stages - 1 and chunk == self.chunks - 1

    def transfer(self, transfers: tuple[Transfer, ...], tensors: dict, new_buffer, device) -> None:
        """Issue one batch of the schedule. Sends take their tensor out of `tensors[(kind, j, c)]`
        (kind "act" or "grad", chunk c; the batch holds it until waited for); receives put theirs
        there, in a buffer from new_buffer(j), to be read through `received`."""
        if not self.joined:
            join_group(self.axis, device)
            self.joined = True
        batch, receives = [], []
        for t in transfers:
            key = (t.tensor, t.micro, t.chunk)
            if t.op == "recv":
                tensors[key] = new_buffer(t.micro)
                receives.append((key, len(batch)))
            tensor = tensors.pop(key) if t.op == "send" else tensors[key]
            peer = self.next if t.toward > 0 else self.previous
            batch.append((t.op, tensor, peer, t.label(self.stage, self.stages)))
        issued = self.in_flight.issue(batch, self.axis)
        if issued is not None:
            for key, index in receives:
                self.arriving[key] = (issued, index)

    def received(self, tensors: dict, key) -> torch.Tensor:
        """`tensors[key]`, taken out, once its receive (if it came from another stage) is waited for."""
        pending = self.arriving.pop(key, None)
        if pending is not None:
            self.in_flight.wait(*pending)
        return tensors.pop(key)

    def finish_transfers(self) -> None:
        """Wait for every batch still in flight (the last sends): nothing crosses the step's end."""
        self.in_flight.finish()
        self.arriving.clear()

    def activation_buffers(self, batches_ids, dtype: torch.dtype, device):
        """new_buffer for `transfer`: micro-batch j's residual stream [batch, seq, hidden/col]
        (its gradient has the same shape)."""
        return lambda j: torch.empty(*batches_ids[j].shape, self.hidden_local, dtype=dtype, device=device)

    def forward_only(self, stage_forward, ids: torch.Tensor, head, dtype: torch.dtype,
                     result_dtype: torch.dtype) -> torch.Tensor:
        """Evaluation through every stage (and chunk) in turn (no schedule: nothing runs
        backward): each receives the residual stream, runs its blocks and passes it on; the
        last applies head(logits) -> [batch, seq], which is broadcast so every stage returns it."""
        tensors, new_buffer = {("act", 0, 0): ids}, self.activation_buffers([ids], dtype, ids.device)
        result = None
        for action in forward_only_with_transfers(self.stage, self.stages, self.chunks):
            if isinstance(action[0], Transfer):
                self.transfer(action, tensors, new_buffer, ids.device)
                continue
            _, _, chunk = action
            out = stage_forward(self.received(tensors, ("act", 0, chunk)), chunk)
            if self.holds_loss(chunk):
                result = head(out).to(result_dtype).contiguous()
            else:
                tensors[("act", 0, chunk)] = out.contiguous()  # the send's tensor
        self.finish_transfers()
        if result is None:
            result = torch.empty(ids.shape, dtype=result_dtype, device=ids.device)
        return broadcast(result, self.axis, self.last)


class PipelineStep(StagePeers):
    """Runs one step's micro-batches through this rank's stage under 1F1B."""

    def __init__(self, model, grid, dtype: torch.dtype):
        super().__init__(grid, model.shape.hidden)
        self.model, self.grid, self.dtype = model, grid, dtype
        # Set to a list to record each run's compute intervals (benchmarks.pipeline_bubble):
        # {"start", "end", "ops": [(kind, j, t0, t1, chunk)]} in perf_counter seconds. Off by
        # default: on a GPU every interval costs a synchronize.
        self.timeline: list | None = None

    def _now(self, device) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def run(self, batches, keeps, kept_tokens: float, buckets, device) -> torch.Tensor:
        """Forward and backward every micro-batch through every chunk; returns this stage's
        loss sum (0 unless it holds the loss).

        `tensors` holds what crosses stages until it is sent or used, keyed (kind, j, c): "act"
        is micro-batch j's input to chunk c coming in and its output going out, "grad" the
        gradient of either."""
        loss_sum = torch.zeros((), device=device)
        tensors, inputs, outputs = {}, {}, {}
        new_buffer = self.activation_buffers([ids for ids, _ in batches], self.dtype, device)
        record = {"start": self._now(device), "ops": []} if self.timeline is not None else None
        for action in one_f_one_b_with_transfers(self.stage, self.stages, len(batches), self.chunks):
            if isinstance(action[0], Transfer):
                self.transfer(action, tensors, new_buffer, device)
                continue
            kind, j, chunk = action
            # Its input from another stage (activations forward, their gradient backward), waited
            # for here, just before this op reads it: the transfer ran while earlier ops computed.
            if kind == "F":
                incoming = None if self.holds_input(chunk) else self.received(tensors, ("act", j, chunk))
            else:
                incoming = None if self.holds_loss(chunk) else self.received(tensors, ("grad", j, chunk))
            began = self._now(device) if record else 0.0
            if kind == "F":
                ids, targets = batches[j]
                x = ids if incoming is None else incoming.requires_grad_()
                out = self.model.stage_forward(x, chunk)
                if self.holds_loss(chunk):
                    losses = self.model.stage_losses(out, targets, keeps[j])
                    loss_sum += losses.detach().sum()
                    out = losses.sum() / kept_tokens
                else:
                    tensors[("act", j, chunk)] = out.detach().contiguous()  # the send's tensor
                inputs[j, chunk], outputs[j, chunk] = x, out
            else:
                # A chunk's parameters get gradients only in its own backwards, so its last
                # micro-batch's backward makes them final: DP buckets launch in it.
                buckets.final_micro_batch = j == len(batches) - 1
                x, out = inputs.pop((j, chunk)), outputs.pop((j, chunk))
                if incoming is None:
                    out.backward()
                else:
                    out.backward(incoming)
                if not self.holds_input(chunk):
                    tensors[("grad", j, chunk)] = x.grad.contiguous()  # the send's tensor
            if record:
                record["ops"].append((kind, j, began, self._now(device), chunk))
        self.finish_transfers()  # before the gradients are reduced and the optimizer runs
        if record:
            record["end"] = self._now(device)
            self.timeline.append(record)
        return loss_sum
