"""docs/running.md's configuration table names every key the schema accepts, no other, and
each key's default as the schema has it."""

from __future__ import annotations

import dataclasses
import re

import yaml

from axon.config.schema import TOP_LEVEL_KEYS, DataConfig, GoldfishSection, OverlapSection, TrainConfig
from axon.spec.layout import Layout
from axon.spec.shapes import SIZES, ModelShape
from axon.testing.processes import REPO

SECTIONS = {"train": TrainConfig(), "data": DataConfig(), "overlap": OverlapSection(), "goldfish": GoldfishSection(),
            "layout": Layout()}
NOT_KEYS = {"layout: auto"}  # a row about a value, not a key


def schema_defaults() -> dict[str, object]:
    """Every key a run config accepts -> its default (None: no single default)."""
    keys: dict[str, object] = {"model": "tiny", "model.preset": None, "model.init_from": "", "out_dir": "runs/default",
                               "layout_machine": ""}
    for section, values in SECTIONS.items():
        for f in dataclasses.fields(values):
            keys[f"{section}.{f.name}"] = getattr(values, f.name)
    keys["layout.order"] = ",".join(Layout().order)  # written as text in a config
    for f in dataclasses.fields(ModelShape):
        keys[f"model.{f.name}"] = None if f.name in SIZES else f.default
    assert {key.split(".")[0] for key in keys} == set(TOP_LEVEL_KEYS)
    return keys


def documented() -> dict[str, str]:
    """Key -> its default cell, from the table under `## Configuration`."""
    text = (REPO / "docs" / "running.md").read_text()
    table = text.split("## Configuration", 1)[1].split("\n\n", 2)[2].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        key_cell, default_cell = (cell.strip() for cell in line.split("|")[1:3])
        keys = [k for k in re.findall(r"`([^`]+)`", key_cell) if k not in NOT_KEYS]
        defaults = [d.strip() for d in default_cell.split(",")] if len(keys) > 1 else [default_cell]
        for i, key in enumerate(keys):
            rows[key] = defaults[i] if len(defaults) == len(keys) else default_cell
    return rows


def value(cell: str):
    cell = cell.strip("`")
    if cell.startswith('""'):
        return ""
    parsed = yaml.safe_load(cell)
    try:
        return float(parsed) if isinstance(parsed, str) else parsed
    except ValueError:
        return parsed


def test_every_config_key_is_documented_with_its_default():
    schema, docs = schema_defaults(), documented()
    assert sorted(set(schema) - set(docs)) == [], "keys missing from docs/running.md"
    assert sorted(set(docs) - set(schema)) == [], "documented keys the schema does not accept"
    for key, default in schema.items():
        if default is None:
            continue
        want = list(default) if isinstance(default, tuple) else default
        assert value(docs[key]) == want, (key, docs[key], default)
