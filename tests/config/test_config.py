"""Config contract: defaults, overrides, unknown keys and every layout rule, in-process."""

from __future__ import annotations

import pytest

from axon.config import ConfigError, build_config, check_layout, load_config, micro_batch_plan


def test_defaults_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: tiny\nlayout: {col: 2}\ntrain: {steps: 3}\n")
    config = load_config(path, ["train.lr=1e-3", "model.layers=5", "layout.order=col,row,depth,pipe,data"])
    assert config.train.lr == 1e-3 and config.train.steps == 3 and config.train.global_batch == 16
    assert config.model.layers == 5 and config.model.hidden == 64  # preset refined, rest kept
    assert config.layout.col == 2 and config.layout.data == 1
    assert config.layout.order == ("col", "row", "depth", "pipe", "data")
    assert config.data.source == "" and config.out_dir == "runs/default"  # unset: `axon train` refuses it


@pytest.mark.parametrize("raw, words", [
    ({"trian": {}}, ["'trian'"]),
    ({"train": {"stepz": 3}}, ["'train.stepz'"]),
    ({"layout": {"tensor": 2}}, ["'layout.tensor'"]),
    ({"model": {"preset": "tiny", "dropout": 0.1}}, ["'model.dropout'"]),
    ({"model": "7B"}, ["'7B'", "known presets"]),
    ({"train": {"steps": 0}}, ["train.steps", "0"]),
    ({"train": {"lr": -1.0}}, ["train.lr", "-1.0"]),
    ({"train": {"steps": "ten"}}, ["train.steps", "'ten'"]),
    ({"layout": {"data": 0}}, ["layout.data", "0"]),
    ({"layout": {"order": "data,row,col"}}, ["layout.order"]),
    ({"model": {"preset": "tiny", "heads": 5}}, ["model.hidden=64", "model.heads=5"]),
    ({"train": {"dtype": "float16"}}, ["train.dtype", "float16"]),
    ({"overlap": {"prefetch_distance": 0}}, ["overlap.prefetch_distance", "0"]),
    ({"overlap": {"bucket_mb": -1}}, ["overlap.bucket_mb", "-1"]),
    ({"overlap": {"all_gather": "yes"}}, ["overlap.all_gather", "'yes'"]),
    ({"train": {"eval_every": 10}}, ["train.eval_every=10", "data.validation_sequences=0"]),
    ({"data": {"validation_sequences": -1}}, ["data.validation_sequences", "-1"]),
    ({"data": {"shuffle": "yes"}}, ["data.shuffle", "'yes'"]),
])
def test_bad_keys_and_values_name_the_key(raw, words):
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("layout, model, train, world, words", [
    ({"data": 2, "col": 2}, {}, {}, 8, ["has 4 ranks", "world size 8"]),
    ({"col": 3}, {"hidden": 64}, {}, 3, ["model.hidden=64", "layout.col=3"]),
    ({"row": 8}, {}, {}, 8, ["model.heads=4", "layout.row=8"]),
    ({"row": 4}, {}, {}, 4, ["model.kv_heads=2", "layout.row=4"]),
    ({"row": 2}, {"ffn": 191}, {}, 2, ["model.ffn=191", "layout.row=2"]),
    ({"row": 2}, {"vocab": 255}, {}, 2, ["model.vocab=255", "layout.row=2"]),
    ({"data": 3}, {}, {"global_batch": 16}, 3, ["train.global_batch=16", "3 x 1 = 3"]),
    ({"depth": 2}, {}, {"global_batch": 16, "micro_batch": 3}, 2, ["train.micro_batch=3", "8 sequences"]),
    ({"pipe": 4}, {"layers": 3}, {}, 4, ["layout.pipe=4", "model.layers=3"]),
    ({"pipe": 2}, {"layers": 4}, {"stage_layers": [3, 2]}, 2, ["train.stage_layers=[3, 2]", "model.layers=4"]),
    ({"pipe": 2}, {"layers": 4}, {"stage_layers": [4]}, 2, ["train.stage_layers=[4]", "layout.pipe"]),
    ({"pipe": 2}, {"layers": 4}, {"stage_layers": [4, 0]}, 2, ["train.stage_layers=[4, 0]"]),
])
def test_layout_rules(layout, model, train, world, words):
    config = build_config({"model": {"preset": "tiny", **model}, "layout": layout, "train": train})
    with pytest.raises(ConfigError) as err:
        check_layout(config, world)
    for word in words:
        assert word in str(err.value)


def test_micro_batch_plan_covers_the_global_batch():
    config = build_config({"layout": {"data": 2, "depth": 2}, "train": {"global_batch": 16, "micro_batch": 2}})
    check_layout(config, 4)
    micro, count = micro_batch_plan(config)
    assert (micro, count) == (2, 2) and micro * count * 4 == 16
    auto = build_config({"layout": {"data": 2}, "train": {"global_batch": 16}})
    assert micro_batch_plan(auto) == (8, 1)


@pytest.mark.parametrize("key, value, words", [
    ("train.lr", float("nan"), "train.lr must be a finite number, got nan"),
    ("train.grad_clip", float("inf"), "train.grad_clip must be a finite number, got inf"),
    ("train.weight_decay", float("nan"), "train.weight_decay must be a finite number, got nan"),
    ("model.rope_theta", 0.0, "model.rope_theta must be a positive finite number, got 0.0"),
    ("model.norm_eps", float("nan"), "model.norm_eps must be a positive finite number, got nan"),
])
def test_non_finite_and_non_positive_numbers_are_named(key, value, words):
    section, name = key.split(".")
    shape = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 192, "vocab": 256, "seq_len": 64}
    raw = {"model": shape if section == "train" else {**shape, name: value}}
    if section == "train":
        raw["train"] = {name: value}
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    assert words in str(err.value)
