"""The shared rules, each stated once in axon.spec: model shapes, layouts, presets, the training
setup, YAML sections and the pipeline bubble. Values by hand; every error is one sentence
naming the key and the numbers, the same from the config, a scaling study and perfmodel."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from axon.config import ConfigError, build_config, training_setup
from axon.planning.scaling.study import StudyError, load_study
from axon.spec.layout import Layout, layout_or_auto, parse_layout_text
from axon.spec.schedules import bubble_fraction, idle_fraction
from axon.spec.sections import FieldError, build_section
from axon.spec.shapes import PRESETS, ModelShape, preset
from axon.spec.training import TrainingSetup
from perfmodel.machine import ProfileError, load_machine, machine_from_dict, machine_to_dict

SHAPE = dict(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=64, seq_len=16)


def test_bubble_is_p_minus_1_over_v_m_of_the_busy_time():
    assert bubble_fraction(4, 8) == 3 / 8 and idle_fraction(4, 8) == 3 / 11  # 3 slots of 8 + 3
    assert bubble_fraction(4, 8, chunks=2) == 3 / 16 and idle_fraction(4, 8, chunks=2) == 3 / 19
    assert bubble_fraction(1, 5) == 0.0 and idle_fraction(1, 5) == 0.0
    b = bubble_fraction(8, 12, 3)  # idle = bubble / (1 + bubble): 7/36 of busy is 7/43 of the step
    assert b == 7 / 36 and idle_fraction(8, 12, 3) == pytest.approx(b / (1 + b), rel=1e-15)


@pytest.mark.parametrize("change, sentence", [
    ({"layers": 0}, "model.layers must be a positive integer, got 0"),
    ({"heads": 5}, "model.hidden=64 is not divisible by model.heads=5"),
    ({"hidden": 36}, "model.hidden / model.heads = 9 must be even for rotary embeddings"),
    ({"kv_heads": 3}, "model.heads=4 is not divisible by model.kv_heads=3"),
    ({"rope_scaling_factor": 0.0}, "model.rope_scaling_factor must be positive and, when not 1, "
                                   "model.rope_high_freq_factor (4.0) must exceed model.rope_low_freq_factor (1.0), "
                                   "got 0.0"),
    ({"rope_scaling_factor": 8.0, "rope_low_freq_factor": 4.0}, "model.rope_scaling_factor must be positive and, "
     "when not 1, model.rope_high_freq_factor (4.0) must exceed model.rope_low_freq_factor (4.0), got 8.0"),
])
def test_a_model_shape_checks_itself(change, sentence):
    with pytest.raises(ValueError, match=f"^{re.escape(sentence)}$"):
        ModelShape(**{**SHAPE, **change})
    with pytest.raises(ConfigError, match=f"^{re.escape(sentence)}$"):  # the config says the same
        build_config({"model": {**SHAPE, **change}})


def test_a_shape_s_sizes_are_integers():
    with pytest.raises(ValueError, match=r"^model\.vocab must be a positive integer, got True$"):
        ModelShape(**{**SHAPE, "vocab": True})
    with pytest.raises(ConfigError, match=r"^model\.vocab must be an integer, got True$"):  # the type, read first
        build_config({"model": {**SHAPE, "vocab": True}})


def test_every_preset_and_published_shape_still_builds():
    assert [shape.head_dim for shape in PRESETS.values()] == [16, 32, 40, 48, 72, 64, 64, 64, 128, 128, 128]
    # Megatron-LM 2021's GPTs (perfmodel's published comparisons) as full multi-head attention, up to 175B
    for layers, hidden, heads, ffn in ((24, 2304, 24, 6144), (30, 3072, 32, 8192), (36, 4096, 32, 10920),
                                       (96, 12288, 96, 32768)):
        shape = ModelShape(layers=layers, hidden=hidden, heads=heads, kv_heads=heads, ffn=ffn, vocab=51200,
                           seq_len=2048)
        assert shape.head_dim == hidden // heads
    llama32_3b = ModelShape(layers=28, hidden=3072, heads=24, kv_heads=8, ffn=8192, vocab=128256, seq_len=8192,
                            rope_scaling_factor=32.0)
    assert llama32_3b.head_dim == 128


def test_one_preset_lookup_names_its_key():
    assert preset("1M") is PRESETS["1M"]
    known = ", ".join(PRESETS)
    with pytest.raises(ValueError, match=f"^--model '7M' is not a preset; known presets are {known}$"):
        preset("7M", "--model")
    with pytest.raises(ConfigError, match=f"^model.preset '7M' is not a preset; known presets are {known}$"):
        build_config({"model": {"preset": "7M", "layers": 2}})


def test_one_layout_reader_for_mappings_and_the_command_line():
    expected = Layout(data=2, depth=4, col=8, order=("col", "row", "depth", "pipe", "data"), virtual_stages=2)
    assert Layout.from_mapping({"data": 2, "depth": 4, "col": 8, "order": "col, row,depth,pipe,data",
                                "virtual_stages": 2}) == expected
    assert Layout.from_mapping({"data": 2, "depth": 4, "col": 8, "order": ["col", "row", "depth", "pipe", "data"],
                                "virtual_stages": 2}) == expected
    assert parse_layout_text("data=2,depth=4,col=8,virtual_stages=2,order=col/row/depth/pipe/data") == expected
    assert layout_or_auto("auto") is None and layout_or_auto({}) == Layout()
    with pytest.raises(ValueError, match="^--layout part 'data=x' must be AXIS=N with AXIS one of data, pipe, "):
        parse_layout_text("data=x")
    assert build_config({"layout": {"data": 2, "depth": 4, "col": 8, "order": "col,row,depth,pipe,data",
                                    "virtual_stages": 2}}).layout == expected


@pytest.mark.parametrize("mapping, where, sentence", [
    ({"data": 0}, "layout", "layout.data must be a positive integer, got 0"),
    ({"virtual_stages": 1.5}, "points[1].layout", "points[1].layout.virtual_stages must be a positive integer, got 1.5"),
    ({"order": "data,row"}, "layout", "layout.order must name each of data, pipe, depth, row, col once, got data, row"),
    ({"tensor": 2}, "layout", "unknown key 'layout.tensor'; valid keys here are data, pipe, depth, row, col, order, "
                              "virtual_stages"),
])
def test_a_layout_mistake_names_where_it_is(mapping, where, sentence):
    with pytest.raises(ValueError, match=f"^{re.escape(sentence)}$"):
        Layout.from_mapping(mapping, where)


@pytest.mark.parametrize("change, field, key, rule", [
    ({"global_batch": 0}, "global_batch", "train.global_batch", "must be at least 1, got 0"),
    ({"micro_batch": -1}, "micro_batch", "train.micro_batch", "must be at least 1 (or 0 for automatic), got -1"),
    ({"dtype": "float16"}, "dtype", "train.dtype", "must be 'float32' or 'bfloat16', got 'float16'"),
    ({"grad_reduce_dtype": "fp8"}, "grad_reduce_dtype", "train.grad_reduce_dtype",
     "must be 'float32' or 'bfloat16', got 'fp8'"),
    ({"recompute": "all"}, "recompute", "train.recompute", "must be 'none' or 'block', got 'all'"),
    ({"prefetch_distance": 0}, "prefetch_distance", "overlap.prefetch_distance",
     "must be at least 1 (overlap.all_gather: false turns prefetching off), got 0"),
    ({"bucket_mb": -1.0}, "bucket_mb", "overlap.bucket_mb", "must be positive, got -1.0"),
])
def test_the_training_setup_is_the_rule_and_the_config_names_its_key(change, field, key, rule):
    with pytest.raises(FieldError) as err:
        TrainingSetup(**{"global_batch": 8, "seq_len": 16, **change})
    assert (err.value.field, err.value.rule, str(err.value)) == (field, rule, f"{field} {rule}")
    section = "overlap" if key.startswith("overlap") else "train"
    with pytest.raises(ConfigError, match=f"^{re.escape(key)} {re.escape(rule)}$"):
        build_config({section: change})


def _study(tmp_path, **body):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"kind": "strong", "machine": "dgx-h100", "seq_len": 64, "global_batch": 8,
                                    "steps": 3, "points": [{"gpus": 1}], **body}))
    return load_study(path)


def test_a_study_and_a_run_config_give_the_same_training_setup(tmp_path):
    study = _study(tmp_path, model="tiny", micro_batch=2, dtype="float32", recompute="block",
                   grad_reduce_dtype="bfloat16")
    config = build_config({"model": "tiny", "train": {"global_batch": 8, "micro_batch": 2, "dtype": "float32",
                                                      "recompute": "block", "grad_reduce_dtype": "bfloat16"}})
    assert study.setup(study.points[0]) == training_setup(config) == TrainingSetup(
        global_batch=8, seq_len=64, micro_batch=2, dtype="float32", recompute="block", grad_reduce_dtype="bfloat16")
    with pytest.raises(StudyError, match=r"^dtype must be 'float32' or 'bfloat16', got 'fp8'$"):
        _study(tmp_path, model="tiny", dtype="fp8")


def test_a_study_rejects_what_the_engine_cannot_run(tmp_path):
    odd = {"layers": 2, "hidden": 36, "heads": 4, "kv_heads": 2, "ffn": 64, "vocab": 64}  # head_dim 9
    with pytest.raises(StudyError, match=r"^models\.odd: model\.hidden / model\.heads = 9 must be even for rotary "
                                         r"embeddings$"):
        _study(tmp_path, models={"odd": odd}, model="odd")
    with pytest.raises(StudyError, match=r"^models\.odd: model\.heads=4 is not divisible by model\.kv_heads=3$"):
        _study(tmp_path, models={"odd": {**odd, "hidden": 64, "kv_heads": 3}}, model="odd")
    with pytest.raises(StudyError, match=r"^models\.odd\.layers must be an integer, got 'two'$"):
        _study(tmp_path, models={"odd": {**odd, "layers": "two"}}, model="odd")
    with pytest.raises(StudyError, match=r"^missing required key\(s\) models\.odd\.ffn, models\.odd\.vocab$"):
        _study(tmp_path, models={"odd": {k: v for k, v in odd.items() if k not in ("ffn", "vocab")}}, model="odd")
    with pytest.raises(StudyError, match=r"^points\[0\]\.layout\.data must be a positive integer, got 0$"):
        _study(tmp_path, model="tiny", points=[{"gpus": 1, "layout": {"data": 0}}])


@dataclasses.dataclass
class _Section:
    count: int
    rate: float = 1.0
    name: str = "x"
    sizes: tuple[int, ...] = ()


def test_one_section_validator_for_config_study_and_machine_profiles():
    assert build_section(_Section, {"count": 3, "rate": "1e-3", "sizes": [1, 2]}, "s") == _Section(3, 0.001, "x", (1, 2))
    for mapping, sentence in (({"count": 3, "rat": 1}, "unknown key 's.rat'; valid keys here are count, rate, name, "
                                                       "sizes"),
                              ({"rate": 2.0}, "missing required key(s) s.count"),
                              ({"count": 1.5}, "s.count must be an integer, got 1.5"),
                              ({"count": 1, "rate": "fast"}, "s.rate must be a number, got 'fast'"),
                              ({"count": 1, "sizes": [1, True]}, "s.sizes must be a list of integers, got [1, True]")):
        with pytest.raises(ValueError, match=f"^{re.escape(sentence)}$"):
            build_section(_Section, mapping, "s")
    # the same sentences from each reader, in its own error class
    with pytest.raises(ConfigError, match=r"^unknown key 'train\.stepz'; valid keys here are steps, "):
        build_config({"train": {"stepz": 3}})
    profile = machine_to_dict(load_machine("perlmutter"))
    with pytest.raises(ProfileError, match=r"^p\.yaml: unknown key 'nic'; valid keys here are name, devices_per_node, "):
        machine_from_dict({**profile, "nic": 1}, "p.yaml")
    with pytest.raises(ProfileError, match=r"^p\.yaml: missing required key\(s\) memory_gb, nics_per_node$"):
        machine_from_dict({k: v for k, v in profile.items() if k not in ("memory_gb", "nics_per_node")}, "p.yaml")
