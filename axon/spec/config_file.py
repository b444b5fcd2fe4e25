"""A run config file read without torch: its YAML, `--set KEY=VALUE` overrides, the model
section, and the training setup its train and overlap sections give.

`axon train` reads a run through here (axon.config.loading, which turns each ValueError into a
ConfigError with the same sentence), and so does `perfmodel plan --config` (`planned_run`):
the same model (`model.init_from: hf:DIR` from DIR/config.json), batch, length, dtype,
recompute and overlaps, with the schema's defaults (axon.spec.config_schema), whoever reads the file.

Every string in a config file may name environment variables, `${VAR}` or `$VAR`
(`init_from: hf:${LLAMA_8B_DIR}`, `out_dir: ${SCRATCH}/runs/8b`), so one file serves every
user of a machine; a variable that is not set is an error naming the key. This is the one
expansion, for training configs and memorization experiments alike.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from axon.spec import sections
from axon.spec.config_schema import TOP_LEVEL_KEYS, OverlapSection, TrainConfig
from axon.spec.hf_config import read_hf_config
from axon.spec.layout import Layout, layout_or_auto
from axon.spec.sections import FieldError
from axon.spec.shapes import ModelShape, preset
from axon.spec.training import OVERLAPS, TrainingSetup

# The config key of each TrainingSetup field (its FieldError names the field).
SETUP_KEYS = {"global_batch": "train.global_batch", "seq_len": "model.seq_len", "micro_batch": "train.micro_batch",
              "dtype": "train.dtype", "recompute": "train.recompute", "grad_reduce_dtype": "train.grad_reduce_dtype",
              "overlap": "overlap", "prefetch_distance": "overlap.prefetch_distance",
              "bucket_mb": "overlap.bucket_mb"}


def read_mapping(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    """A YAML file's top-level mapping (empty without a file) with `KEY=VALUE` overrides applied:
    the raw form of a run config and of a memorization experiment."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            raise ValueError(f"config file {str(path)!r} is not valid YAML{at}: "
                             f"{getattr(err, 'problem', None) or err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping, not {type(raw).__name__}")
        raw = expand_variables(raw)
    for item in overrides:
        apply_override(raw, item)
    return raw


def expand_variables(value: Any, key: str = "") -> Any:
    """`value` with environment variables expanded in every string it holds (`${VAR}` or `$VAR`,
    as os.path.expandvars reads them); a variable that is not set is a ValueError naming the key."""
    if isinstance(value, dict):
        return {k: expand_variables(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_variables(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value
    expanded = os.path.expandvars(value)
    missing = re.findall(r"\$\{?(\w+)", expanded)
    if missing:
        raise ValueError(f"{key}={value!r} names environment variable ${missing[0]}, which is not set")
    return expanded


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `--set a.b.c=value` (value parsed as YAML) to the raw mapping."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set {item!r} must look like KEY=VALUE, e.g. train.lr=1e-3")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        raise ValueError(f"--set {item!r}: {text!r} is not a YAML value (quote a string that holds ': ' or "
                         "starts with [, {, & or *)") from None
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str) and part == "model" and i == 0:
            child = dataclasses.asdict(preset(child))  # refine a preset: --set model.layers=4
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ValueError(f"--set {key}: {'.'.join(parts[:i + 1])} is {child!r}, not a mapping")
        node[part] = child
        node = child
    node[parts[-1]] = value


def model_section(value: Any) -> tuple[ModelShape, str]:
    """The model section without `init_from`: a preset name, or a mapping of ModelShape's keys
    (refining `preset`); the shape and its name."""
    if isinstance(value, str):
        return preset(value), value
    if not isinstance(value, dict):
        raise ValueError(f"model must be a preset name or a mapping, got {value!r}")
    value = dict(value)
    base = value.pop("preset", None)
    if base is not None:
        merged = dataclasses.asdict(preset(base, "model.preset"))
        merged.update(value)
        value = merged
    return sections.build_section(ModelShape, value, "model"), base or "custom"


def model_from_init(init_from: Any, model_raw: dict) -> dict:
    """model.init_from: hf:DIR takes the shape from DIR/config.json; other model keys must agree.
    (The weights themselves are checked by the commands that load them, before any collective:
    axon.config.check_init_weights; planning a model needs only its config.json.)"""
    if not isinstance(init_from, str) or not init_from.startswith("hf:"):
        raise ValueError(f"model.init_from must look like hf:DIR, got {init_from!r}")
    try:
        shape = dataclasses.asdict(read_hf_config(init_from[3:])[0])
    except (OSError, ValueError) as err:
        raise ValueError(f"model.init_from={init_from!r}: {err}") from None
    if "seq_len" not in model_raw:  # the model's context (131,072 for Llama 3.1) is rarely a length to train on
        raise ValueError(f"model.init_from={init_from!r} needs model.seq_len, the length to train on: "
                         f"{init_from[3:]}/config.json's max_position_embeddings={shape['seq_len']} is the "
                         f"model's context (kept as model.max_positions, which an export writes)")
    model_raw = dict(model_raw)
    shape["seq_len"] = model_raw.pop("seq_len")
    for key, value in model_raw.items():
        if key != "preset" and shape.get(key) != value:
            raise ValueError(f"model.{key}={value!r} disagrees with {init_from}/config.json ({shape.get(key)!r})")
    return shape


def setup_from_sections(train: TrainConfig, overlap: OverlapSection, seq_len: int) -> TrainingSetup:
    """The TrainingSetup perfmodel prices, from the train and overlap sections (a run's, or a
    scaling study's points); a FieldError names the TrainingSetup field (SETUP_KEYS: its key)."""
    return TrainingSetup(global_batch=train.global_batch, seq_len=seq_len, micro_batch=train.micro_batch,
                         dtype=train.dtype, recompute=train.recompute,
                         overlap=tuple(name for name in OVERLAPS if getattr(overlap, name)),
                         prefetch_distance=overlap.prefetch_distance, bucket_mb=overlap.bucket_mb,
                         grad_reduce_dtype=train.grad_reduce_dtype)


def setup_sentence(err: FieldError) -> str:
    """A TrainingSetup field's broken rule, naming its config key."""
    return f"{SETUP_KEYS[err.field]} {err.rule}"


@dataclass(frozen=True)
class PlannedRun:
    """What a run config says that perfmodel prices."""

    shape: ModelShape
    model_name: str
    layout: Layout | None  # None: layout: auto
    setup: TrainingSetup
    machine: str  # layout_machine ("": none named)


def planned_run(raw: dict[str, Any]) -> PlannedRun:
    """The model, layout, training setup and named machine of a raw run config (read_mapping's),
    read as axon train reads them (axon.config.loading.build_config), with the schema's defaults
    (`model.init_from` from its directory's config.json, as there)."""
    sections.reject_unknown(raw, TOP_LEVEL_KEYS, "")
    model_raw = raw.get("model", "tiny")
    if isinstance(model_raw, dict) and "init_from" in model_raw:
        model_raw = dict(model_raw)
        model_raw = model_from_init(model_raw.pop("init_from"), model_raw)
    shape, name = model_section(model_raw)
    layout = layout_or_auto(raw.get("layout", {}) or {})
    machine = raw.get("layout_machine", "")
    if not isinstance(machine, str):
        raise ValueError(f"layout_machine must be a profile name or a YAML path, got {machine!r}")
    train = sections.build_section(TrainConfig, raw.get("train", {}) or {}, "train")
    overlap = sections.build_section(OverlapSection, raw.get("overlap", {}) or {}, "overlap")
    try:
        setup = setup_from_sections(train, overlap, shape.seq_len)
    except FieldError as err:
        raise ValueError(setup_sentence(err)) from None
    return PlannedRun(shape, name, layout, setup, machine)
