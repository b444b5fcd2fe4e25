"""What a run config's values must satisfy, alone and against the job's world.

The rules on a model shape, a layout and a training setup are those of axon.spec (ModelShape,
Layout, TrainingSetup, find_layout_problem); here they are applied to a RunConfig and their
ValueErrors become ConfigErrors naming the config key. The rest (optimizer, schedule,
Goldfish, timeouts, checkpoints) are the engine's alone.
"""

from __future__ import annotations

import dataclasses
import math

from axon.config.errors import ConfigError
from axon.config.schema import RunConfig
from axon.spec.config_file import setup_from_sections, setup_sentence
from axon.spec.layout_rules import find_layout_problem
from axon.spec.sections import FieldError
from axon.spec.training import TrainingSetup, split_micro_batches

__all__ = ["check_data_source", "check_layout", "check_values", "micro_batch_plan", "setup_from_sections",
           "training_setup"]


def training_setup(config: RunConfig) -> TrainingSetup:
    """The training setup perfmodel prices for this run (layout: auto, the dry run's comparison)."""
    return setup_from_sections(config.train, config.overlap, config.model.seq_len)


def check_values(config: RunConfig) -> None:
    """Range checks that need no knowledge of the layout (the model shape checked itself)."""
    t = config.train
    if t.steps < 1:
        raise ConfigError(f"train.steps must be at least 1, got {t.steps}")
    try:
        training_setup(config)  # batch, micro-batch, dtypes, recompute, prefetch distance, bucket size
    except FieldError as err:
        raise ConfigError(setup_sentence(err)) from None
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be positive, got {t.lr}")
    if t.weight_decay < 0 or t.grad_clip < 0:
        raise ConfigError("train.weight_decay and train.grad_clip must be non-negative, "
                          f"got {t.weight_decay} and {t.grad_clip}")
    if t.gemm_tuning not in (True, False, "auto"):
        raise ConfigError(f"train.gemm_tuning must be true, false or 'auto', got {t.gemm_tuning!r}")
    if t.compile not in (True, False, "auto"):
        raise ConfigError(f"train.compile must be true, false or 'auto', got {t.compile!r}")
    if t.log_every < 1:
        raise ConfigError(f"train.log_every must be at least 1, got {t.log_every}")
    if t.trace_steps < 0:
        raise ConfigError(f"train.trace_steps must be >= 0, got {t.trace_steps}")
    if t.schedule not in ("cosine", "constant"):
        raise ConfigError(f"train.schedule must be 'cosine' or 'constant', got {t.schedule!r}")
    if t.warmup_steps < 0 or not 0 <= t.min_lr_ratio <= 1:
        raise ConfigError(f"train.warmup_steps must be >= 0 and train.min_lr_ratio in [0, 1], "
                          f"got {t.warmup_steps} and {t.min_lr_ratio}")
    g = config.goldfish
    if t.loss not in ("standard", "goldfish"):
        raise ConfigError(f"train.loss must be 'standard' or 'goldfish', got {t.loss!r}")
    if g.k < 2 or g.h < 1 or g.strategy not in ("hash", "static", "hash-table"):
        raise ConfigError(f"goldfish.k must be >= 2, goldfish.h >= 1 and goldfish.strategy 'hash', 'static' or "
                          f"'hash-table', "
                          f"got k={g.k}, h={g.h}, strategy={g.strategy!r}")
    if not 0 <= t.collective_timeout_s < float("inf"):
        raise ConfigError(f"train.collective_timeout_s must be a number of seconds > 0 (or 0 for the default), "
                          f"got {t.collective_timeout_s}")
    if not 1 <= t.peer_timeout_s < float("inf") or t.straggler_every < 0:
        raise ConfigError(f"train.peer_timeout_s must be a number of seconds >= 1 and train.straggler_every >= 0, "
                          f"got {t.peer_timeout_s} and {t.straggler_every}")
    if t.eval_every < 0 or config.data.validation_sequences < 0 or config.data.seed < 0:
        raise ConfigError(f"train.eval_every, data.validation_sequences and data.seed must be >= 0, "
                          f"got {t.eval_every}, {config.data.validation_sequences} and {config.data.seed}")
    if t.eval_every and not config.data.validation_sequences:
        raise ConfigError(f"train.eval_every={t.eval_every} evaluates the held-out windows, but "
                          "data.validation_sequences=0 holds out none; set it (e.g. 64) or drop train.eval_every")
    if t.checkpoint_every < 0 or t.keep_checkpoints < 1:
        raise ConfigError(f"train.checkpoint_every must be >= 0 and train.keep_checkpoints >= 1, "
                          f"got {t.checkpoint_every} and {t.keep_checkpoints}")
    # Last, so a key's own rule speaks first: NaN passes every comparison above, inf most of them.
    for section in ("train", "overlap", "goldfish", "data"):
        values = getattr(config, section)
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{field.name} must be a finite number, got {value}")


def check_data_source(config: RunConfig) -> None:
    """`axon train` reads no data it was not told to: an unset data.source is one sentence, not a
    run on generated tokens (in-process callers, tests and benchmarks, get the synthetic stream)."""
    if not config.data.source:
        raise ConfigError("data.source is not set: name a token file (python -m axon data prepare DOCS --out "
                          "FILE.tok; also .npy, .bin, .txt), or write data.source: synthetic to train on a "
                          "generated Markov chain")


def check_layout(config: RunConfig, world_size: int) -> None:
    """Everything the layout must satisfy for this model and world; raises ConfigError."""
    lay, m, t = config.layout, config.model, config.train
    if lay.world_size != world_size:
        raise ConfigError(
            f"layout {lay.data}x{lay.pipe}x{lay.depth}x{lay.row}x{lay.col} (data x pipe x depth x row x col) "
            f"has {lay.world_size} ranks but the job has world size {world_size}")
    problem = find_layout_problem(m, lay, t.global_batch, t.micro_batch)
    if problem:
        raise ConfigError(problem.sentence)
    if t.stage_layers:
        counts, chunks = t.stage_layers, lay.pipe * lay.virtual_stages
        if len(counts) != chunks or sum(counts) != m.layers or min(counts) < 1:
            what = (f"{lay.pipe} stage(s) (layout.pipe)" if lay.virtual_stages == 1 else
                    f"{chunks} chunks (layout.pipe x layout.virtual_stages = {lay.pipe} x {lay.virtual_stages})")
            raise ConfigError(f"train.stage_layers={list(counts)} must give {what} at "
                              f"least one block each, summing to model.layers={m.layers}")


def micro_batch_plan(config: RunConfig) -> tuple[int, int]:
    """(sequences per micro-batch, micro-batches per step) for each data x depth shard
    (check_layout has made sure the batch divides)."""
    lay = config.layout
    return split_micro_batches(config.train.global_batch, config.train.micro_batch, lay.data * lay.depth, lay.pipe)
