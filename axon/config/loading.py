"""Reading a run config: the YAML file, `--set KEY=VALUE` overrides, the sections built and checked.

Every mistake is one ConfigError sentence naming the key and the numbers; the rules a model
shape, a layout and a section's keys follow live in axon.spec (ModelShape, Layout,
axon.spec.sections), the rest in axon.config.checks. Reading the file, its `--set` overrides,
its environment variables (`${VAR}` or `$VAR` in any string; one not set is an error naming
the key) and the model section is axon.spec.config_file's, which `perfmodel plan --config`
reads a run with too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from axon.config.checks import check_values
from axon.config.errors import ConfigError, config_errors
from axon.config.schema import TOP_LEVEL_KEYS, DataConfig, GoldfishSection, OverlapSection, RunConfig, TrainConfig
from axon.spec import config_file, sections
from axon.spec.layout import Layout, layout_or_auto
from axon.spec.shapes import ModelShape


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (or start empty), apply `KEY=VALUE` overrides, build a RunConfig."""
    return build_config(read_mapping(path, overrides))


def read_mapping(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    """A YAML file's top-level mapping (empty without a file) with `KEY=VALUE` overrides applied:
    the raw form of a run config and of a memorization experiment (axon.spec.config_file)."""
    with config_errors():
        return config_file.read_mapping(path, overrides)


def expand_variables(value: Any, key: str = "") -> Any:
    """`value` with environment variables expanded in every string it holds; a variable that is
    not set is a ConfigError naming the key (axon.spec.config_file)."""
    with config_errors():
        return config_file.expand_variables(value, key)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `--set a.b.c=value` (value parsed as YAML) to the raw mapping."""
    with config_errors():
        config_file.apply_override(raw, item)


def reject_unknown(mapping: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    with config_errors():
        sections.reject_unknown(mapping, known, where)


def build_section(cls, mapping: dict[str, Any], where: str):
    """A config section (a dataclass) from its YAML mapping; its own rules included."""
    with config_errors():
        return sections.build_section(cls, mapping, where)


def build_config(raw: dict[str, Any]) -> RunConfig:
    reject_unknown(raw, TOP_LEVEL_KEYS, "")
    model_raw = raw.get("model", "tiny")
    init_from = ""
    if isinstance(model_raw, dict) and "init_from" in model_raw:
        model_raw = dict(model_raw)
        init_from = model_raw.pop("init_from")
        model_raw = _model_from_init(init_from, model_raw)
    model, model_name = _build_model(model_raw)
    with config_errors():
        layout = layout_or_auto(raw.get("layout", {}) or {})
    layout_auto = layout is None
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
    config = RunConfig(model=model, layout=Layout() if layout_auto else layout, train=train, data=data, overlap=overlap,
                       goldfish=goldfish, out_dir=out_dir,
                       model_name=model_name, init_from=init_from, layout_auto=layout_auto,
                       layout_machine=layout_machine)
    check_values(config)
    return config


def check_init_weights(config) -> None:
    """model.init_from's weights against the model, names and shapes (safetensors headers only):
    a ConfigError on every rank alike, for commands that load them to call before any collective."""
    if not config.init_from:
        return
    from axon.checkpoint.huggingface import check_hf_weights, read_hf_config

    hf_dir = config.init_from.removeprefix("hf:")
    try:
        check_hf_weights(hf_dir, *read_hf_config(hf_dir))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.init_from={config.init_from!r}: {err}") from None


def _model_from_init(init_from, model_raw: dict) -> dict:
    """model.init_from: hf:DIR's shape (axon.spec.config_file.model_from_init)."""
    with config_errors():
        return config_file.model_from_init(init_from, model_raw)


def _build_model(value: Any) -> tuple[ModelShape, str]:
    """The model section: a preset name, or a mapping of ModelShape's keys (refining `preset`)."""
    with config_errors():
        return config_file.model_section(value)
