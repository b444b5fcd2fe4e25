"""A scaling study file: what it may say, read and checked into a `Study`.

    name: frontier_weak           # optional; default the file's stem
    kind: weak                    # weak: the model grows with the GPUs; strong: one model
    machine: frontier             # perfmodel profile name or YAML (relative to this file)
    seq_len: 2048
    batch_per_gpu: 4              # weak: sequences per GPU per step (global = this x GPUs)
    global_batch: 2048            # strong: sequences per step at every point
    micro_batch: 0                # optional, train.micro_batch (0 = automatic)
    steps: 20                     # optimizer steps per point
    warmup_steps: 5               # steps left out of the report's medians
    dtype: bfloat16               # optional: recompute, grad_reduce_dtype, train (more train.* keys)
    models:                       # optional custom shapes, by name (a preset name needs none)
      gpt-5b: {layers: 24, hidden: 4096, heads: 32, kv_heads: 32, ffn: 11008, vocab: 51200}
    model: 8B                     # strong: the model of every point (weak: a default)
    layout: auto                  # or per point: layout: {data: 8, depth: 64, ...}
    points:
      - {model: gpt-5b, gpus: 512}            # optional: name, layout, machine
    slurm: {account: ABC123, partition: batch, time: "00:30:00", template: frontier}

Every mistake is one sentence naming the key (and the point) and the numbers. A study file may come
from someone else, so what reaches a job script is checked here to be a plain word (names, slurm
values; slurm.template only a launch/ script's stem): none can be read by a shell as code.
"""

from __future__ import annotations

import dataclasses
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from axon.config import OverlapSection, TrainConfig, setup_from_sections
from axon.spec import sections
from axon.spec.layout import Layout, layout_or_auto
from axon.spec.shapes import PRESETS, ModelShape, preset
from axon.spec.training import TrainingSetup

KINDS = ("weak", "strong")
STUDY_KEYS = ("name", "description", "kind", "machine", "seq_len", "batch_per_gpu", "global_batch", "micro_batch",
              "steps", "warmup_steps", "dtype", "recompute", "grad_reduce_dtype", "train", "data", "models",
              "model", "layout", "points", "slurm")
POINT_KEYS = ("name", "model", "gpus", "layout", "machine")
SLURM_KEYS = ("template", "account", "partition", "qos", "time", "constraint")
SHAPE_KEYS = ("preset", "layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "rope_theta")

# Point, model and study names also name directories, so no leading '.' (nor '-', an option's mark).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
WORD, WORD_RULE = re.compile(r"[A-Za-z0-9_.-]{1,64}"), "1 to 64 letters, digits, '_', '.' or '-'"
# #SBATCH lines cannot be shell-quoted, so each slurm value must be a plain word: (pattern, rule).
SLURM_RULES = {
    "account": (WORD, WORD_RULE), "partition": (WORD, WORD_RULE), "qos": (WORD, WORD_RULE),
    "constraint": (re.compile(r"[A-Za-z0-9_.&|-]{1,64}"), "1 to 64 letters, digits, '_', '.', '-', '&' or '|'"),
    "time": (re.compile(r"\d{1,6}(:\d{1,2}){0,2}|\d{1,3}-\d{1,2}(:\d{1,2}){0,2}"),
             "a quoted Slurm time: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"),
    "template": (re.compile(r"[A-Za-z0-9_-]{1,64}"),
                 "the stem of a launch/ script (such as frontier); give any other file with --template"),
}


class StudyError(ValueError):
    """A mistake in a study file, in one sentence."""


@dataclass(frozen=True)
class Point:
    name: str
    model_name: str
    shape: ModelShape
    gpus: int
    layout: Layout | None  # None: layout auto (perfmodel picks)
    machine: str  # profile name or resolved YAML path


@dataclass
class Study:
    name: str
    kind: str
    path: Path
    seq_len: int
    steps: int
    warmup_steps: int
    points: list[Point]
    batch_per_gpu: int = 0
    global_batch: int = 0
    micro_batch: int = 0
    dtype: str = "bfloat16"
    recompute: str = "none"
    grad_reduce_dtype: str = "float32"
    train: dict = field(default_factory=dict)  # more train.* keys for every point's run
    data: str = "synthetic"
    slurm: dict = field(default_factory=dict)
    description: str = ""

    def point_batch(self, point: Point) -> int:
        """Sequences per step at this point: per GPU x GPUs for weak, the global batch for strong."""
        return self.batch_per_gpu * point.gpus if self.kind == "weak" else self.global_batch

    def setup(self, point: Point) -> TrainingSetup:
        """What perfmodel prices at this point: the train section its run gets (axon.planning.scaling.
        submit.run_config), with the default overlap section, by the engine's own adapter."""
        train = TrainConfig(global_batch=self.point_batch(point), micro_batch=self.micro_batch, dtype=self.dtype,
                            recompute=self.recompute, grad_reduce_dtype=self.grad_reduce_dtype)
        return setup_from_sections(train, OverlapSection(), self.seq_len)


def load_study(path: str | Path) -> Study:
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {str(path)!r} does not exist")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise StudyError(f"study file {path} must hold a mapping of {', '.join(STUDY_KEYS)}")
    from axon.config import ConfigError
    from axon.config.loading import expand_variables

    try:  # ${VAR} as in a run config (one expansion for every config axon reads)
        raw = expand_variables(raw)
    except ConfigError as err:
        raise StudyError(str(err)) from None
    return study_from_dict(raw, path)


@contextmanager
def _study_errors(prefix: str = ""):
    """A shared rule's ValueError (axon.spec: keys, shapes, layouts, the training setup) as a
    StudyError with the same sentence."""
    try:
        yield
    except StudyError:
        raise
    except ValueError as err:
        raise StudyError(f"{prefix}{err}") from None


def _unknown(mapping: dict, known: tuple[str, ...], where: str) -> None:
    with _study_errors():
        sections.reject_unknown(mapping, known, where.rstrip("."))


def _word(value, pattern: re.Pattern, where: str, rule: str, ints: bool = True) -> str:
    """`value` as a string that `pattern` matches in full, else one sentence naming where it came from."""
    kinds = (str, int) if ints else str
    if isinstance(value, bool) or not isinstance(value, kinds) or not pattern.fullmatch(str(value)):
        raise StudyError(f"{where}={value!r} must be {rule}")
    return str(value)


def slurm_value(key: str, value, where: str) -> str:
    """A slurm value checked for a #SBATCH line; `where` is the study key or the command-line option.
    A time must be a string: YAML reads an unquoted 30:00 as the int 1800 (minutes to Slurm)."""
    pattern, rule = SLURM_RULES[key]
    return _word(value, pattern, where, rule, ints=key != "time")


def _positive(raw: dict, key: str, where: str = "", default=None, zero_ok=False) -> int:
    with _study_errors():
        if default is None:
            sections.require(raw, (key,), where.rstrip("."))
        return sections.integer(raw.get(key, default), f"{where}{key}", 0 if zero_ok else 1)


def study_from_dict(raw: dict, path: Path) -> Study:
    _unknown(raw, STUDY_KEYS, "")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise StudyError(f"study key kind must be weak or strong, got {kind!r}")
    seq_len = _positive(raw, "seq_len")
    batch_key = "batch_per_gpu" if kind == "weak" else "global_batch"
    other = "global_batch" if kind == "weak" else "batch_per_gpu"
    if other in raw:
        raise StudyError(f"a {kind} study gives {batch_key}, not {other} (={raw[other]!r})")
    batch = _positive(raw, batch_key)
    steps = _positive(raw, "steps")
    warmup = _positive(raw, "warmup_steps", default=min(2, steps - 1), zero_ok=True)
    if warmup >= steps:
        raise StudyError(f"study key warmup_steps={warmup} leaves no step to measure of steps={steps}")
    for key in ("train", "slurm", "models"):
        if not isinstance(raw.get(key, {}), dict):
            raise StudyError(f"study key {key} must be a mapping, got {raw[key]!r}")
    _unknown(raw.get("slurm", {}), SLURM_KEYS, "slurm.")
    slurm = {key: slurm_value(key, value, f"study key slurm.{key}") for key, value in raw.get("slurm", {}).items()}
    name = _word(raw.get("name", path.stem), NAME, "study key name" if "name" in raw else
                 "study key name (the file's stem when not given)", NAME_RULE)
    machine = raw.get("machine")
    if not isinstance(machine, str) or not machine:
        raise StudyError(f"study key machine must name a perfmodel profile or a YAML file, got {machine!r}")
    models = {name: _custom_shape(name, value, seq_len) for name, value in raw.get("models", {}).items()}
    points = _points(raw, path, kind, seq_len, models, machine)
    study = Study(name=name, kind=kind, path=path, seq_len=seq_len, steps=steps,
                  warmup_steps=warmup, points=points, micro_batch=_positive(raw, "micro_batch", default=0, zero_ok=True),
                  dtype=raw.get("dtype", "bfloat16"), recompute=raw.get("recompute", "none"),
                  grad_reduce_dtype=raw.get("grad_reduce_dtype", "float32"), train=dict(raw.get("train", {})),
                  data=str(raw.get("data", "synthetic")), slurm=slurm,
                  description=str(raw.get("description", "")), **{batch_key: batch})
    for reserved in ("steps", "global_batch", "micro_batch", "dtype", "recompute", "grad_reduce_dtype"):
        if reserved in study.train:
            raise StudyError(f"study key train.{reserved} is set by the study itself; give it at the top level")
    with _study_errors():  # dtype, recompute, grad_reduce_dtype (the FieldError names the study key)
        study.setup(points[0])
    return study


def _custom_shape(name: str, value, seq_len: int) -> ModelShape:
    """A shape of models: (a preset refined, or every size given); ModelShape checks it."""
    where = f"models.{name}"
    if not NAME.fullmatch(str(name)):
        raise StudyError(f"study key models names a model {name!r}; a model name must be {NAME_RULE}")
    if not isinstance(value, dict):
        raise StudyError(f"study key {where} must map {', '.join(SHAPE_KEYS)}, got {value!r}")
    with _study_errors():
        sections.reject_unknown(value, SHAPE_KEYS, where)
        values = dict(value)
        base = values.pop("preset", None)
        merged = dataclasses.asdict(preset(base, f"{where}.preset")) if base is not None else {}
        merged.update(values, seq_len=seq_len)
        merged = sections.section_values(ModelShape, merged, where)
    with _study_errors(f"{where}: "):
        return ModelShape(**merged)


def _shape(name, models: dict, seq_len: int, where: str) -> ModelShape:
    if name in models:
        return models[name]
    if name in PRESETS:
        return dataclasses.replace(preset(name), seq_len=seq_len)
    raise StudyError(f"study key {where}model={name!r} is neither in models ({', '.join(models) or 'none'}) "
                     f"nor a preset ({', '.join(PRESETS)})")


def _layout(value, where: str) -> Layout | None:
    """None (perfmodel picks) for no layout or 'auto'; else the engine's reading of a layout mapping."""
    if value is None:
        return None
    with _study_errors():
        return layout_or_auto(value, f"{where}layout")


def _machine(name: str, path: Path) -> str:
    """A profile name stays a name; a YAML path is read relative to the study file, then as given."""
    if not Path(name).suffix:
        return name
    beside = path.parent / name
    return str(beside if beside.is_file() else Path(name))


def _points(raw: dict, path: Path, kind: str, seq_len: int, models: dict, machine: str) -> list[Point]:
    points = raw.get("points")
    if not isinstance(points, list) or not points:
        raise StudyError("study key points must be a non-empty list of {gpus: N, ...} mappings")
    default_layout = _layout(raw.get("layout"), "")
    built, names = [], set()
    for i, value in enumerate(points):
        where = f"points[{i}]."
        if not isinstance(value, dict):
            raise StudyError(f"study key points[{i}] must be a mapping with gpus (and model, layout, name), got {value!r}")
        _unknown(value, POINT_KEYS, where)
        gpus = _positive(value, "gpus", where)
        model = value.get("model", raw.get("model"))
        if model is None:
            raise StudyError(f"study key {where}model is required (or a top-level model)")
        if kind == "strong" and "model" in value and value["model"] != raw.get("model", value["model"]):
            raise StudyError(f"a strong study keeps one model, but {where}model={value['model']!r} differs from "
                             f"model={raw['model']!r}")
        shape = _shape(model, models, seq_len, where)
        layout = _layout(value["layout"], where) if "layout" in value else default_layout
        if layout is not None and layout.world_size != gpus:
            raise StudyError(f"study key {where}layout has {layout.world_size} ranks, not gpus={gpus}")
        name = _word(value.get("name", f"{model}-{gpus}"), NAME, f"study key {where}name", NAME_RULE)
        if name in names:
            raise StudyError(f"study key {where}name={name!r} repeats an earlier point's name")
        names.add(name)
        built.append(Point(name, str(model), shape, gpus, layout, _machine(str(value.get("machine", machine)), path)))
    if kind == "strong" and len({p.shape for p in built}) > 1:
        raise StudyError("a strong study keeps one model: give it once as the top-level model")
    return built
