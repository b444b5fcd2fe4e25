"""The run configuration: typed sections, YAML loading, `--set` overrides, validation.

Every check a user's input can fail is here and runs before any collective; each
failure is one `ConfigError` sentence naming the key and the numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from axon.spec.layout_rules import find_layout_problem
from axon.spec.layout import AXES, DEFAULT_ORDER, Layout
from axon.spec.shapes import ModelShape, PRESETS
from axon.spec.training import split_micro_batches


class ConfigError(ValueError):
    """A mistake in the user's config, layout or data, stated in one sentence."""


@dataclass
class TrainConfig:
    steps: int = 100
    global_batch: int = 16  # sequences per optimizer step, over the whole world
    micro_batch: int = 0  # sequences per micro-batch per data x depth shard; 0 = global_batch / (data x depth)
    lr: float = 3e-4
    weight_decay: float = 0.1  # applied to matrices only, never to norm weights
    betas: tuple[float, float] = (0.9, 0.95)
    seed: int = 1234
    dtype: str = "float32"  # compute dtype; "bfloat16" keeps fp32 master weights and optimizer state
    # dtype gradients travel in for the data all-reduces and depth reduce-scatters; "bfloat16" halves
    # those bytes (sums still land in fp32 gradients)
    grad_reduce_dtype: str = "float32"
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    log_every: int = 1  # progress line every N steps (metrics.jsonl gets every step)
    peak_tflops: float = 0.0  # per-rank peak for MFU; 0 = measure a large GEMM at start-up
    schedule: str = "cosine"  # "cosine" (after warm-up, down to min_lr_ratio x lr) or "constant"
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps to lr
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    checkpoint_every: int = 0  # steps between checkpoints (and one at the end); 0 = only on preemption
    keep_checkpoints: int = 2  # newest checkpoints kept under OUT_DIR/checkpoints
    trace_steps: int = 0  # write a Chrome trace of the collectives of steps 2..N+1 per rank (0 = none)
    recompute: str = "none"  # "block": keep only each block's input, recompute its activations in backward
    resume: str = ""  # "" = start fresh, "latest" = newest checkpoint in out_dir (if any), or a checkpoint path
    loss: str = "standard"  # "standard" cross-entropy or "goldfish" (the goldfish section says which tokens drop)
    # blocks per pipeline stage (per chunk, in virtual-stage order, with layout.virtual_stages); () = balanced by parameters
    stage_layers: tuple[int, ...] = ()
    collective_timeout_s: float = 0.0  # a collective waiting this long for a peer fails the job; 0 = $AXON_COLLECTIVE_TIMEOUT_S or 600
    peer_timeout_s: float = 30.0  # a rank whose heartbeat is this old is lost: every survivor stops, naming it
    straggler_every: int = 50  # every N steps rank 0 records the slowest rank's step (0 = never)
    # time each GEMM shape's operand layouts on first use and keep the fastest (axon/kernels/tune.py);
    # "auto" = on for GPUs, off on CPUs (wins there were within noise, and noisy choices differ between runs)
    gemm_tuning: bool | str = "auto"
    gemm_tuning_cache: str = ""  # JSON file of tuned choices, kept across restarts; "" = OUT_DIR/gemm_tuning.json


@dataclass
class GoldfishSection:
    k: int = 4  # drop about 1 target token in k
    h: int = 13  # hash the h token ids that end at each target
    strategy: str = "hash"  # "hash" (axon/data/goldfish.py), "static" (every k-th position), "hash-table" (the reference's)


@dataclass
class DataConfig:
    source: str = "synthetic"  # "synthetic", a .tok file (python -m axon data prepare), .npy, .bin (uint16) or .txt


@dataclass
class OverlapSection:
    all_reduce: bool = True  # OAR: backward all-reduce of dX overlaps the dW GEMM
    reduce_scatter: bool = True  # ORS: depth reduce-scatter of dW runs on through backward
    all_gather: bool = True  # OAG: depth all-gathers of upcoming weights are issued ahead
    prefetch_distance: int = 2  # OAG: how many gathers ahead of the one being used
    data_parallel: bool = True  # DP: gradient buckets are all-reduced over data while backward runs
    bucket_mb: float = 25.0  # DP: gradient bucket size in MiB (also used when data_parallel is off)


@dataclass
class RunConfig:
    model: ModelShape
    layout: Layout
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    overlap: OverlapSection = field(default_factory=OverlapSection)
    goldfish: GoldfishSection = field(default_factory=GoldfishSection)
    out_dir: str = "runs/default"
    model_name: str = "custom"
    init_from: str = ""  # model.init_from: "" (random init) or "hf:DIR" (Hugging Face Llama weights)
    # layout: auto -- perfmodel picks the layout at start-up (axon.planning.auto_layout); until then
    # `layout` is a 1-rank placeholder.
    layout_auto: bool = False
    layout_machine: str = ""  # profile name or YAML for layout: auto; "" = OUT_DIR/machine_profile.yaml or calibrate

    def to_dict(self) -> dict[str, Any]:
        layout = {axis: getattr(self.layout, axis) for axis in AXES}
        layout["order"] = ",".join(self.layout.order)
        layout["virtual_stages"] = self.layout.virtual_stages
        return {
            "model": {**dataclasses.asdict(self.model), **({"init_from": self.init_from} if self.init_from else {})},
            "layout": layout,
            "train": dataclasses.asdict(self.train),
            "data": dataclasses.asdict(self.data),
            "overlap": dataclasses.asdict(self.overlap),
            "goldfish": dataclasses.asdict(self.goldfish),
            "out_dir": self.out_dir,
        }  # after layout: auto, the layout chosen (so the saved config reruns exactly that)


TOP_LEVEL_KEYS = ("model", "layout", "train", "data", "overlap", "goldfish", "out_dir", "layout_machine")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (or start empty), apply `KEY=VALUE` overrides, build a RunConfig."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping, not {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    return build_config(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `--set a.b.c=value` (value parsed as YAML) to the raw mapping."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r} must look like KEY=VALUE, e.g. train.lr=1e-3")
    value = yaml.safe_load(text) if text else ""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str) and part == "model" and i == 0:
            child = dataclasses.asdict(_preset(child))  # refine a preset: --set model.layers=4
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} is {child!r}, not a mapping")
        node[part] = child
        node = child
    node[parts[-1]] = value


def build_config(raw: dict[str, Any]) -> RunConfig:
    reject_unknown(raw, TOP_LEVEL_KEYS, "")
    model_raw = raw.get("model", "tiny")
    init_from = ""
    if isinstance(model_raw, dict) and "init_from" in model_raw:
        model_raw = dict(model_raw)
        init_from = model_raw.pop("init_from")
        model_raw = _model_from_init(init_from, model_raw)
    model, model_name = _build_model(model_raw)
    layout_raw = raw.get("layout", {}) or {}
    layout_auto = layout_raw == "auto"
    layout = Layout() if layout_auto else _build_layout(layout_raw)
    layout_machine = raw.get("layout_machine", "")
    if not isinstance(layout_machine, str):
        raise ConfigError(f"layout_machine must be a profile name or a YAML path, got {layout_machine!r}")
    if layout_machine and not layout_auto:
        raise ConfigError(f"layout_machine={layout_machine!r} only applies to layout: auto, but the layout is given")
    train = build_section(TrainConfig, raw.get("train", {}) or {}, "train")
    data = build_section(DataConfig, raw.get("data", {}) or {}, "data")
    overlap = build_section(OverlapSection, raw.get("overlap", {}) or {}, "overlap")
    goldfish = build_section(GoldfishSection, raw.get("goldfish", {}) or {}, "goldfish")
    out_dir = raw.get("out_dir", "runs/default")
    if not isinstance(out_dir, str) or not out_dir:
        raise ConfigError(f"out_dir must be a non-empty path string, got {out_dir!r}")
    config = RunConfig(model=model, layout=layout, train=train, data=data, overlap=overlap, goldfish=goldfish,
                       out_dir=out_dir,
                       model_name=model_name, init_from=init_from, layout_auto=layout_auto,
                       layout_machine=layout_machine)
    _check_values(config)
    return config


def _model_from_init(init_from, model_raw: dict) -> dict:
    """model.init_from: hf:DIR takes the shape from DIR/config.json; other model keys must agree."""
    if not isinstance(init_from, str) or not init_from.startswith("hf:"):
        raise ConfigError(f"model.init_from must look like hf:DIR, got {init_from!r}")
    from axon.checkpoint.huggingface import shape_from_hf  # reads config.json only

    try:
        shape = dataclasses.asdict(shape_from_hf(init_from[3:]))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.init_from={init_from!r}: {err}") from None
    if "seq_len" in model_raw:  # train on shorter sequences than the model's context
        shape["seq_len"] = model_raw.pop("seq_len")
    for key, value in model_raw.items():
        if key != "preset" and shape.get(key) != value:
            raise ConfigError(f"model.{key}={value!r} disagrees with {init_from}/config.json ({shape.get(key)!r})")
    return shape


def _preset(name: str) -> ModelShape:
    if name not in PRESETS:
        raise ConfigError(f"model: unknown preset {name!r}; known presets are {', '.join(PRESETS)}")
    return PRESETS[name]


def _build_model(value: Any) -> tuple[ModelShape, str]:
    if isinstance(value, str):
        return _preset(value), value
    if not isinstance(value, dict):
        raise ConfigError(f"model must be a preset name or a mapping, got {value!r}")
    value = dict(value)
    base = value.pop("preset", None)
    if base is not None:
        merged = dataclasses.asdict(_preset(base))
        merged.update(value)
        value = merged
    shape = build_section(ModelShape, value, "model")
    return shape, base or "custom"


def _build_layout(value: Any) -> Layout:
    if not isinstance(value, dict):
        raise ConfigError(f"layout must be 'auto' or a mapping of {', '.join(AXES)}, got {value!r}")
    reject_unknown(value, AXES + ("order", "virtual_stages"), "layout")
    order = value.get("order", DEFAULT_ORDER)
    if isinstance(order, str):
        order = tuple(part.strip() for part in order.split(","))
    sizes = {}
    for axis in AXES + ("virtual_stages",):  # virtual_stages: interleaved 1F1B's chunks per stage
        size = value.get(axis, 1)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(f"layout.{axis} must be a positive integer, got {size!r}")
        sizes[axis] = size
    try:
        return Layout(**sizes, order=tuple(order))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def reject_unknown(mapping: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in known:
            name = f"{where}.{key}" if where else key
            raise ConfigError(f"unknown config key {name!r}; valid keys here are {', '.join(known)}")


def build_section(cls, mapping: dict[str, Any], where: str):
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping, got {mapping!r}")
    fields_by_name = {f.name: f for f in dataclasses.fields(cls)}
    reject_unknown(mapping, tuple(fields_by_name), where)
    missing = [name for name, f in fields_by_name.items()
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and name not in mapping]
    if missing:
        raise ConfigError(f"{where} is missing required key(s) {', '.join(missing)}")
    values = {}
    for name, value in mapping.items():
        values[name] = _coerce(value, fields_by_name[name], f"{where}.{name}")
    return cls(**values)


def _coerce(value: Any, f: dataclasses.Field, key: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if kind == "tuple[int, ...]":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
            raise ConfigError(f"{key} must be a list of integers, got {value!r}")
        return tuple(value)
    if kind.startswith("tuple"):
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of two numbers, got {value!r}")
        return tuple(float(v) for v in value)
    return value


def _check_values(config: RunConfig) -> None:
    """Range checks that need no knowledge of the layout."""
    m, t = config.model, config.train
    for name in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "seq_len"):
        if getattr(m, name) < 1:
            raise ConfigError(f"model.{name} must be at least 1, got {getattr(m, name)}")
    if m.hidden % m.heads:
        raise ConfigError(f"model.hidden={m.hidden} is not divisible by model.heads={m.heads}")
    if m.head_dim % 2:
        raise ConfigError(f"model.hidden / model.heads = {m.head_dim} must be even for rotary embeddings")
    if m.heads % m.kv_heads:
        raise ConfigError(f"model.heads={m.heads} is not divisible by model.kv_heads={m.kv_heads}")
    if m.rope_scaling_factor <= 0 or (m.rope_scaling_factor != 1.0 and m.rope_high_freq_factor <= m.rope_low_freq_factor):
        raise ConfigError(f"model.rope_scaling_factor must be positive and, when not 1, model.rope_high_freq_factor "
                          f"({m.rope_high_freq_factor}) must exceed model.rope_low_freq_factor ({m.rope_low_freq_factor})")
    if t.steps < 1:
        raise ConfigError(f"train.steps must be at least 1, got {t.steps}")
    if t.global_batch < 1:
        raise ConfigError(f"train.global_batch must be at least 1, got {t.global_batch}")
    if t.micro_batch < 0:
        raise ConfigError(f"train.micro_batch must be at least 1 (or 0 for automatic), got {t.micro_batch}")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be positive, got {t.lr}")
    if t.weight_decay < 0 or t.grad_clip < 0:
        raise ConfigError("train.weight_decay and train.grad_clip must be non-negative, "
                          f"got {t.weight_decay} and {t.grad_clip}")
    if t.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"train.dtype must be 'float32' or 'bfloat16', got {t.dtype!r}")
    if t.grad_reduce_dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"train.grad_reduce_dtype must be 'float32' or 'bfloat16', got {t.grad_reduce_dtype!r}")
    if t.gemm_tuning not in (True, False, "auto"):
        raise ConfigError(f"train.gemm_tuning must be true, false or 'auto', got {t.gemm_tuning!r}")
    if t.log_every < 1:
        raise ConfigError(f"train.log_every must be at least 1, got {t.log_every}")
    if t.trace_steps < 0:
        raise ConfigError(f"train.trace_steps must be >= 0, got {t.trace_steps}")
    if t.recompute not in ("none", "block"):
        raise ConfigError(f"train.recompute must be 'none' or 'block', got {t.recompute!r}")
    if t.schedule not in ("cosine", "constant"):
        raise ConfigError(f"train.schedule must be 'cosine' or 'constant', got {t.schedule!r}")
    if t.warmup_steps < 0 or not 0 <= t.min_lr_ratio <= 1:
        raise ConfigError(f"train.warmup_steps must be >= 0 and train.min_lr_ratio in [0, 1], "
                          f"got {t.warmup_steps} and {t.min_lr_ratio}")
    if config.overlap.prefetch_distance < 1:
        raise ConfigError(f"overlap.prefetch_distance must be at least 1 (overlap.all_gather: false turns "
                          f"prefetching off), got {config.overlap.prefetch_distance}")
    if config.overlap.bucket_mb <= 0:
        raise ConfigError(f"overlap.bucket_mb must be positive, got {config.overlap.bucket_mb}")
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
    if t.checkpoint_every < 0 or t.keep_checkpoints < 1:
        raise ConfigError(f"train.checkpoint_every must be >= 0 and train.keep_checkpoints >= 1, "
                          f"got {t.checkpoint_every} and {t.keep_checkpoints}")


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
