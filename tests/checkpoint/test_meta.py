"""A meta.json that parses but is not what a save writes: one sentence naming the file and
the field, never a traceback (and never a path outside the checkpoint read)."""

from __future__ import annotations

import json

import pytest

from axon.checkpoint import CheckpointReader
from axon.checkpoint.reader import FORMAT_VERSION
from axon.config import ConfigError

GOOD = {"format": FORMAT_VERSION, "step": 4, "optimizer_step": 4.0,
        "layout": {"data": 1, "pipe": 1, "depth": 1, "row": 1, "col": 1},
        "model": {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": 256, "seq_len": 16},
        "tensors": {"embed.weight": {"global_shape": [256, 64], "dim_axes": [], "depth_sharded": False, "stage": 0}}}
# Format 1 (still read) kept every shard file's record in meta.json.
GOOD_1 = {**GOOD, "format": 1, "files": {"rank_00000.safetensors": {"bytes": 10, "sha256": "0" * 64}}}

BAD = [
    ([1, 2], "it holds a list, not an object"),
    ({**GOOD, "step": "4"}, "step is '4', not a whole number >= 0"),
    ({**GOOD, "step": -1}, "step is -1, not a whole number >= 0"),
    ({**GOOD, "tensors": []}, "tensors is list, not an object"),
    ({**GOOD_1, "files": {"../../etc/passwd": {"bytes": 10, "sha256": "0" * 64}}},
     "files['../../etc/passwd'] is {'bytes': 10, 'sha256': '" + "0" * 64 + "'}, not {bytes, sha256} of a "
     "rank_RRRRR.safetensors file"),
    ({**GOOD_1, "files": {"rank_00000.safetensors": {"bytes": "10"}}},
     "files['rank_00000.safetensors'] is {'bytes': '10'}, not {bytes, sha256} of a rank_RRRRR.safetensors file"),
    ({**GOOD, "tensors": {"embed.weight": 3}}, "tensors['embed.weight'] is 3, not a description with a global_shape"),
    ({**GOOD, "optimizer_step": None}, "optimizer_step is None, not a number"),
]


@pytest.mark.parametrize("meta, why", BAD, ids=range(len(BAD)))
def test_a_malformed_meta_json_is_one_sentence(tmp_path, meta, why):
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as err:
        CheckpointReader(tmp_path)
    assert str(err.value) == f"checkpoint file {str(tmp_path / 'meta.json')!r} is corrupt: {why}"


def test_meta_json_of_bytes_that_are_not_text_is_one_sentence(tmp_path):
    (tmp_path / "meta.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ConfigError, match="is corrupt"):
        CheckpointReader(tmp_path)


def test_the_well_formed_meta_json_reads(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(GOOD))
    assert CheckpointReader(tmp_path).step == 4


@pytest.mark.parametrize("index, why", [
    ("[1, 2]", "it holds a list, not an object"),
    (json.dumps({"../x": {"bytes": 10, "sha256": "0" * 64}}),
     "files['../x'] is {'bytes': 10, 'sha256': '" + "0" * 64 + "'}, not {bytes, sha256} of a rank_RRRRR.safetensors file"),
])
def test_a_malformed_files_json_is_one_sentence(tmp_path, index, why):
    (tmp_path / "meta.json").write_text(json.dumps(GOOD))
    (tmp_path / "ranks_0000").mkdir()
    (tmp_path / "ranks_0000" / "files.json").write_text(index)
    with pytest.raises(ConfigError) as err:
        CheckpointReader(tmp_path).check_files()
    assert str(err.value) == f"checkpoint file {str(tmp_path / 'ranks_0000' / 'files.json')!r} is corrupt: {why}"


def test_a_missing_files_json_is_one_sentence(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(GOOD))
    with pytest.raises(ConfigError, match="ranks_0000/files.json' is missing: not a complete axon checkpoint"):
        CheckpointReader(tmp_path).check_files()


def test_format_1_meta_json_still_reads(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(GOOD_1))
    reader = CheckpointReader(tmp_path)
    assert reader.shard_files() == ["rank_00000.safetensors"] and reader.record("rank_00000.safetensors")["bytes"] == 10
