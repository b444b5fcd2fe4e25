"""The training loop: build the model on a grid, then step AdamW on the local shards."""

from __future__ import annotations

import math
import os
import resource
import time
from pathlib import Path

import torch

from axon.config import RunConfig, micro_batch_plan
from axon.data.batches import token_source
from axon.data.input_ahead import InputAhead
from axon.data.goldfish import GoldfishMask
from axon.kernels.gemm import fp32_output_gemm_missing
from axon.kernels.peak import failed_peak, mfu
from axon.runtime.metrics import MetricsLog
from axon.runtime.step_clock import StepClock
from axon.model import Llama, initialize_parameters
from axon.model.stages import stage_layers
from axon.spec.parameters import whole_model_parameters
from axon.parallel.comm import all_reduce, world_max_with_rank
from axon.parallel.data_parallel import GradientBuckets
from axon.parallel.grads import clip_grad_norm
from axon.parallel.overlap import enable_overlap
from axon.parallel.pipeline import PipelineStep
from axon.parallel.prefetch import forget_casts
from axon.parallel.trace import summarize, write_chrome_trace
from axon.parallel.sharding import named_shardings
from axon.spec.flops import flops_per_token
from axon.spec.schedules import bubble_fraction, idle_fraction


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm stopped being finite; raised on every rank at the same step."""


class Preempted(Exception):
    """A stop signal arrived; a checkpoint was saved at the step boundary."""

    def __init__(self, step: int, path):
        super().__init__(f"stopped after step {step}; checkpoint {path}")
        self.step, self.path = step, path


def build_optimizer(model, config: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW on the local shards; weight decay on matrices (depth-sharded weights) only. On a
    GPU the fused kernel (one launch for all parameters instead of a dozen per tensor)."""
    decay, no_decay = [], []
    for _, param, sharding in named_shardings(model):
        (decay if sharding.depth_sharded else no_decay).append(param)
    t = config.train
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, eps=1e-8, fused=device.type == "cuda" or None)


def learning_rate(config: RunConfig, step: int) -> float:
    """Linear warm-up over train.warmup_steps, then constant or cosine down to min_lr_ratio x lr."""
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return t.lr
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    floor = t.lr * t.min_lr_ratio
    return floor + 0.5 * (t.lr - floor) * (1.0 + math.cos(math.pi * progress))


def gemm_tuning_enabled(train, device: torch.device) -> bool:
    """train.gemm_tuning as it applies on `device`: "auto" tunes on GPUs (CUDA and ROCm), where
    kernels differ by operand layout, and not on CPUs, where measured wins were within noise."""
    if train.gemm_tuning == "auto":
        return device.type == "cuda"
    return bool(train.gemm_tuning)


def compile_enabled(train, device: torch.device) -> bool:
    """train.compile as it applies on `device`: "auto" compiles on GPUs (CUDA and ROCm), where
    the eager step is bound by launching small kernels, and not on CPUs, where inductor's
    C++ build costs more start-up than the fusion saves on a short run."""
    if train.compile == "auto":
        return device.type == "cuda"
    return bool(train.compile)


# A bf16 run keeps each weight's bf16 copy for the step when all of them fit in this share of
# the device's memory; above it (large shards on a small device) it casts at every use instead.
CAST_COPY_SHARE = 0.1


def device_memory_bytes(device: torch.device) -> float:
    """The device's memory; unbounded for the dry run's meta device (it rehearses a GPU run,
    and perfmodel counts the kept copies)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "meta":
        return math.inf
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class Trainer:
    def __init__(self, config: RunConfig, grid, device: torch.device, peak_tflops: float = 0.0, source=None):
        self.config, self.grid, self.device = config, grid, device
        self.model = Llama(config.model, grid, compute_dtype=getattr(torch, config.train.dtype),
                           stage_counts=config.train.stage_layers).to(device)
        if config.init_from:
            from axon.checkpoint.huggingface import load_hf_weights

            load_hf_weights(self.model, grid, config.init_from.removeprefix("hf:"))
        else:
            initialize_parameters(self.model, grid, config.train.seed)
        self.model.recompute_blocks = config.train.recompute == "block"
        # Seconds spent compiling the local math before step 1 (None: train.compile off here).
        # A block with no collective inside (row, col and depth 1) is compiled whole.
        self.compiled_whole = all(grid.size(axis) == 1 for axis in ("row", "col", "depth"))
        self.compile_s = (self.model.compile_local_math(micro_batch_plan(config)[0], device, self.compiled_whole)
                          if compile_enabled(config.train, device) else None)
        self.pending, self.prefetcher = enable_overlap(self.model, config.overlap, grid.axis("depth"))
        self.gemm_tuner = self._attach_gemm_tuner() if gemm_tuning_enabled(config.train, device) else None
        self.cast_layers, self.cast_copy_bytes = self._keep_weight_casts()
        self.buckets = GradientBuckets(self.model, grid, config.overlap.bucket_mb, config.overlap.data_parallel,
                                       self.pending, config.train.grad_reduce_dtype)
        self.optimizer = build_optimizer(self.model, config, device)
        self.source = source if source is not None else token_source(config)
        g = config.goldfish
        self.goldfish = GoldfishMask(g.k, g.h, g.strategy) if config.train.loss == "goldfish" else None
        # Keep masks are hashed on the host from the token ids, ahead of their step, so every
        # device and layout drops the same tokens and no step waits for them.
        self.inputs = InputAhead(self.source, config, grid, device, None if self.goldfish is None else self.goldfish.keep)
        self.pipeline = PipelineStep(self.model, grid, self.model.compute_dtype) if grid.size("pipe") > 1 else None
        self.tokens_per_step = config.train.global_batch * config.model.seq_len
        self.flops_per_step = flops_per_token(config.model) * self.tokens_per_step
        self.peak_tflops = peak_tflops
        self.start_step, self.start_sequence = 0, 0
        self.resumed_from = None  # the checkpoint this run resumed from: pruning spares it
        self.validation_tokens = None  # data.validation_sequences' tokens, read at the first evaluation
        grid.trace.enabled = True  # a few clock reads per collective: cheap enough to keep on
        if device.type == "cuda":
            grid.trace.use_cuda_events()
        self.traced_events = []  # what goes into the Chrome trace (train.trace_steps)
        self.stop_signal = None  # set by fit: a StopSignal whose requests the step's reductions agree on
        self.stop_agreed = False  # some rank's stop signal was seen in the last step
        self.clock = StepClock(device.type == "cuda", lambda: torch.cuda.synchronize(device))

    def _attach_gemm_tuner(self):
        """One tuner for every linear layer of this rank (GEMMs are local: ranks may choose
        differently without changing any collective); rank 0 prints each choice once. Every
        rank reads the cache file; one rank per pipeline stage writes it, when `fit` flushes."""
        from axon.parallel.linear import TensorParallelLinear
        from axon.kernels import GemmTuner
        from axon.kernels.gemm_cache import stage_writer

        path = self.config.train.gemm_tuning_cache or str(Path(self.config.out_dir) / "gemm_tuning.json")
        report = (lambda choice: print(f"axon: {choice.describe()}", flush=True)) if self.grid.rank == 0 else None
        tuner = GemmTuner(cache_path=path, on_choice=report, writer=stage_writer(self.grid), write_each_key=False)
        for module in self.model.modules():
            if isinstance(module, TensorParallelLinear):
                module.gemm_tuner = tuner
        return tuner

    def _keep_weight_casts(self) -> tuple[list, int]:
        """(the linear layers keeping their compute-dtype weight copy for the step, the bytes the
        copies take): all of them when the copies fit CAST_COPY_SHARE of the device's memory,
        none in fp32 (nothing to cast) or when they do not fit."""
        from axon.parallel.linear import TensorParallelLinear

        layers = [m for m in self.model.modules() if isinstance(m, TensorParallelLinear)]
        dtype = self.model.compute_dtype
        copy_bytes = sum(m.weight.numel() for m in layers) * dtype.itemsize
        if dtype == torch.float32 or copy_bytes > CAST_COPY_SHARE * device_memory_bytes(self.device):
            return [], copy_bytes
        for layer in layers:
            layer.keep_cast = True
        return layers, copy_bytes

    def next_sequence(self, step: int) -> int:
        """Global index of the first sequence step `step` trains on."""
        return self.start_sequence + (step - self.start_step) * self.config.train.global_batch

    def data_identity(self) -> dict:
        """What decides the tokens of sequence g, recorded in a checkpoint (a resume on other data warns).
        The order's keys appear only when shuffled or split, so older checkpoints still match."""
        data = self.config.data
        identity = {"source": data.source, "seed": self.config.train.seed}
        if data.shuffle:
            identity.update(shuffle=True, data_seed=data.seed)
        if data.validation_sequences:
            identity["validation_sequences"] = data.validation_sequences
        return identity

    def validation_loss(self) -> float:
        """Mean next-token loss (nats) over the held-out validation sequences (data.validation_sequences),
        on any layout: each data x depth shard runs its rows forward only, and the sums meet over
        data and depth (the memorization experiments' evaluator). The same number on every rank."""
        from axon.memorize.evaluate import ShardedEval, validation_loss

        if self.validation_tokens is None:
            self.validation_tokens = self.source.validation()
        evaluator = ShardedEval(self.model, self.grid, self.device, micro_batch_plan(self.config)[0])
        loss = validation_loss(evaluator, self.validation_tokens)
        self.pause_clock()
        return loss

    def resume_from(self, reader) -> str | None:
        """Load a checkpoint of any layout; returns a warning if the data stream changed."""
        from axon import checkpoint

        checkpoint.load(self, reader)
        self.start_step, self.start_sequence = reader.step, reader.meta["next_sequence"]
        self.resumed_from = reader.path
        saved = reader.meta.get("data")
        if saved is not None and saved != self.data_identity():
            return (f"WARNING: the checkpoint was trained on data {saved}, this run reads {self.data_identity()}; "
                    f"training continues from sequence {self.start_sequence} of the new stream")
        return None

    def step(self, step: int) -> dict:
        """One optimizer step over the global batch; returns the step's metrics (same on every rank)."""
        self.clock.start()
        self.grid.trace.flight.begin_step(step + 1)  # the flight recorder's steps count from 1, as the log's
        lr = learning_rate(self.config, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Bucketed gradients are views of persistent buffers: zeroed in place; the rest set to None.
        self.buckets.zero_grad()
        self.grid.trace.take()  # start the step with an empty record
        loss_sum = torch.zeros((), device=self.device)
        batches, keeps, kept_here, input_wait_s = self.inputs.take(self.next_sequence(step))
        self.inputs.prepare(self.next_sequence(step + 1))  # assembled while this step computes
        kept_tokens = self.tokens_per_step
        if self.goldfish is not None:
            # The mean is over the kept tokens of the whole global batch: summed over data and
            # depth on the device and divided by there (read with the loss, not before).
            kept_tokens = all_reduce(torch.full((), float(kept_here), device=self.device),  # a fill: no copy
                                     self.grid.axis("data+depth")).clamp_(min=1.0)
        if self.prefetcher is not None:
            self.prefetcher.begin_step()
        try:
            if self.pipeline is not None:
                loss_sum = self.pipeline.run(batches, keeps, kept_tokens, self.buckets, self.device)
            else:
                for index, ((ids, targets), keep) in enumerate(zip(batches, keeps)):
                    self.buckets.final_micro_batch = index == len(batches) - 1  # DP buckets launch in this backward
                    # Sum of token losses over the global batch's (kept) token count: gradients summed
                    # over data and depth then give the exact mean-loss gradient.
                    token_losses = self.model.token_losses(ids, targets, keep)
                    (token_losses.sum() / kept_tokens).backward()
                    loss_sum += token_losses.detach().sum()
        finally:
            if self.prefetcher is not None:
                self.prefetcher.end_step()
        self.buckets.finish()  # every gradient is summed over data and depth from here on
        # A stop signal (preemption) is agreed on in the step's own reductions: summed with the
        # loss over data, depth and pipe, then with the clip norm over pipe, depth, row and col,
        # every rank's vote reaches every rank without a world-wide collective of its own.
        vote = 1.0 if self.stop_signal is not None and self.stop_signal.requested else 0.0
        sums = torch.stack([loss_sum, torch.full_like(loss_sum, vote)])  # a fill, not a copy from the host
        all_reduce(sums, self.grid.axis("data+depth"))
        all_reduce(sums, self.grid.axis("pipe"))  # only the last stage has a loss; the others add 0
        norm_and_votes = clip_grad_norm(self.model, self.grid, self.config.train.grad_clip, sums[1])
        # The step's one host read: the loss, the norm and the stop vote together, after clipping
        # was queued on the device (the finite check below must precede the update).
        read = [sums[:1].double(), norm_and_votes]
        if self.goldfish is not None:
            read.append(kept_tokens.double().view(1))
        loss_sum_value, grad_norm, votes, *kept = torch.cat(read).tolist()
        self.clock.read_done()
        kept_tokens = kept[0] if kept else kept_tokens
        loss = loss_sum_value / kept_tokens
        self.stop_agreed = votes > 0
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):  # the same on every rank: all stop here
            raise TrainingDiverged(f"step {step + 1}: loss {loss}, gradient norm {grad_norm}; "
                                   "stopped before applying the update")
        self.optimizer.step()
        forget_casts(self.cast_layers)
        step_time = self.clock.stop()  # no synchronize: a GPU's host goes on while the optimizer runs
        self.grid.trace.flight.end_step()
        if self.grid.trace.unwaited:
            raise RuntimeError(f"step {step + 1} ended with {self.grid.trace.unwaited} collective(s) never waited for")
        events = self.grid.trace.take()
        if 1 <= step - self.start_step <= self.config.train.trace_steps:  # skip the warm-up step
            self.traced_events += events
        tflops_per_rank = self.flops_per_step / step_time / self.grid.layout.world_size / 1e12
        return {
            "step": step + 1,
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": lr,
            "step_time_s": step_time,
            "tokens_per_s": self.tokens_per_step / step_time,
            "tflops_per_rank": tflops_per_rank,
            "mfu": mfu(tflops_per_rank, self.peak_tflops),
            "peak_memory_gb": peak_memory_gb(self.device),
            "kept_fraction": kept_tokens / self.tokens_per_step,
            "input_wait_s": input_wait_s,
            **summarize(events),
        }

    def save_gemm_choices(self) -> None:
        """Write the GEMM choices timed so far to the tuning cache (one rank per stage writes;
        between steps, never inside one)."""
        if self.gemm_tuner is not None and self.gemm_tuner.flush():
            self.pause_clock()

    def pause_clock(self) -> None:
        """Work outside the training steps came after the last one (a checkpoint, an evaluation):
        the next step's clock starts afresh instead of at the last step's read."""
        self.clock.pause()

    def slowest_rank(self, metrics: dict) -> dict:
        """Which rank computed longest this step (its time outside collective waits: a slow node
        makes every rank's step slow, but only its own busy time long), and the longest step.
        One world all-reduce of two numbers."""
        busy = metrics["step_time_s"] - metrics["exposed_comm_s"]
        started = time.perf_counter()
        (busy_s, busy_rank), (step_s, step_rank) = world_max_with_rank([busy, metrics["step_time_s"]], self.device)
        return {"slowest_rank": busy_rank, "slowest_rank_busy_s": busy_s,
                "slowest_step_time_s": step_s, "slowest_step_rank": step_rank,
                "straggler_check_s": time.perf_counter() - started}  # what finding them cost, outside the step

    def fit(self, log: MetricsLog | None = None, stop_signal=None, final_checkpoint: bool | None = None) -> list[dict]:
        """Train to train.steps, checkpointing every train.checkpoint_every steps, and after the last
        step with `final_checkpoint` (`axon train` passes train.final_checkpoint; None, for in-process
        callers: only when checkpointing every N steps). With a `stop_signal`, a
        requested stop saves a checkpoint at the next step boundary and raises Preempted. With
        data.validation_sequences, every train.eval_every steps and after the last the step's
        metrics carry `val_loss`."""
        from axon import checkpoint

        t = self.config.train
        history = []
        self.stop_signal = stop_signal
        evaluates = self.config.data.validation_sequences > 0
        final = bool(t.checkpoint_every) if final_checkpoint is None else final_checkpoint
        for step in range(self.start_step, t.steps):
            metrics = self.step(step)
            if step == self.start_step:
                self.save_gemm_choices()  # the first step timed nearly every GEMM key: written once, between steps
            if t.straggler_every and (step + 1) % t.straggler_every == 0:
                metrics.update(self.slowest_rank(metrics))
                self.pause_clock()
            if evaluates and (step + 1 == t.steps or (t.eval_every and (step + 1) % t.eval_every == 0)):
                metrics["val_loss"] = self.validation_loss()
            history.append(metrics)
            if log is not None:
                log.record(metrics)
            if t.trace_steps and step - self.start_step == t.trace_steps:
                path = Path(self.config.out_dir) / f"comm_trace_rank{self.grid.rank}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_chrome_trace(path, self.traced_events, self.grid.trace.origin, self.grid.rank)
            done = step + 1
            stop = self.stop_agreed
            periodic = t.checkpoint_every and done % t.checkpoint_every == 0
            if stop or periodic or (done == t.steps and final):
                started = time.perf_counter()
                self.grid.trace.flight.save_point(done, "save")  # AXON_FAULT=die:...:at=save (a testing aid)
                path = checkpoint.save(self, done, t.keep_checkpoints)
                self.pause_clock()
                if log is not None:
                    log.checkpoint(path, time.perf_counter() - started)
                if stop:
                    self.save_gemm_choices()  # the requeued job starts with every choice made
                    raise Preempted(done, path)
        self.save_gemm_choices()  # keys that appeared after the first step
        return history


def checkpoint_policy(t) -> str:
    """When `axon train` saves, in words (train.checkpoint_every, final_checkpoint, keep_checkpoints)."""
    when = [f"every {t.checkpoint_every} steps"] if t.checkpoint_every else []
    if t.final_checkpoint and not (t.checkpoint_every and t.steps % t.checkpoint_every == 0):
        when.append("after the last step")
    if not when:
        return ("only when stopped by a signal (train.checkpoint_every 0, train.final_checkpoint false): "
                "a finished run keeps no weights")
    return f"{' and '.join(when)} and when stopped by a signal, the newest {t.keep_checkpoints} kept"


def describe(config: RunConfig, trainer: Trainer, runtime, peak_source: str) -> str:
    """The start-up banner rank 0 prints."""
    shape = config.model
    params = sum(p.numel() for p in trainer.model.parameters())
    total = whole_model_parameters(shape)
    micro, count = micro_batch_plan(config)
    lines = [
        f"axon: world {runtime.world_size} via {runtime.launcher}, backend {runtime.backend}, device {runtime.device.type}",
        f"axon: layout {config.layout}",
        f"axon: model {config.model_name}: {shape.layers} layers, hidden {shape.hidden}, "
        f"{total / 1e6:.2f}M parameters ({params / 1e6:.2f}M on this rank)",
        f"axon: {config.train.global_batch} sequences x {shape.seq_len} tokens per step; "
        f"{count} micro-batch(es) of {micro} per data x depth shard",
    ]
    if hasattr(trainer.source, "describe"):  # a memorization sweep's stream describes itself elsewhere
        lines.append(trainer.source.describe(config.train.steps, config.train.global_batch))
    lines.append(f"axon: out_dir {config.out_dir}; checkpoints {checkpoint_policy(config.train)}")
    stages, chunks = config.layout.pipe, config.layout.virtual_stages
    if stages > 1:
        blocks = [len(r) for r in stage_layers(shape, stages, config.train.stage_layers, chunks)]
        how = "train.stage_layers" if config.train.stage_layers else "balanced by parameters"
        idle = idle_fraction(stages, count, chunks)
        what = (f"{stages} pipeline stages of {blocks} blocks ({how}), 1F1B" if chunks == 1 else
                f"{stages} pipeline stages of {chunks} chunks each, chunks of {blocks} blocks ({how}), interleaved 1F1B")
        lines.append(f"axon: {what} over {count} micro-batches: each stage idles about {idle:.0%} of a step "
                     f"(bubble (p-1)/(vm) = {bubble_fraction(stages, count, chunks):.2f})")
        if count < stages:
            lines.append(f"axon: warning: {count} micro-batch(es) for {stages} stages leave most stages idle; "
                         f"a smaller train.micro_batch or a larger train.global_batch gives more")
    why_eager = "auto: compiled on GPUs only" if config.train.compile == "auto" else "false"
    lines.append(f"axon: local math eager (train.compile {why_eager})" if trainer.compile_s is None else
                 f"axon: {'blocks compiled whole' if trainer.compiled_whole else 'local math compiled'} "
                 f"(torch.compile, inductor) in {trainer.compile_s:.1f} s")
    dtype = trainer.model.compute_dtype
    slow_gradients = fp32_output_gemm_missing(trainer.device, dtype)
    if slow_gradients:
        lines.append(f"axon: warning: {slow_gradients}")
    if dtype != torch.float32:
        name, copies = str(dtype).removeprefix("torch."), trainer.cast_copy_bytes / 2**30
        lines.append(f"axon: weights cast to {name} once per step ({copies:.2f} GiB of copies kept)" if trainer.cast_layers
                     else f"axon: weights cast to {name} at every use (kept copies would take {copies:.2f} GiB, over "
                          f"{CAST_COPY_SHARE:.0%} of the device's {device_memory_bytes(trainer.device) / 2**30:.0f} GiB)")
    peak = trainer.peak_tflops
    lines.append(f"axon: MFU unknown: the peak measured, {peak} TFLOP/s per rank ({peak_source}), is a failed "
                 "measurement; set train.peak_tflops to this device's peak" if failed_peak(peak) else
                 f"axon: MFU peak {peak:.4g} TFLOP/s per rank ({peak_source})")
    return "\n".join(lines)
