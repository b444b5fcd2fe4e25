"""What a new user meets first, in-process: --version, presets, ${VAR} in configs, one error
style for every command, --json on data verify, data.source that must be named (diagnose
--json: tests/runtime/test_diagnose_p2p.py)."""

from __future__ import annotations

import json
import subprocess

import pytest

import axon
from axon.__main__ import main
from axon.config import ConfigError, check_data_source, load_config
from axon.testing.processes import REPO


def test_version_names_the_release_and_the_commit(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    printed = capsys.readouterr().out.strip()
    assert printed in (f"axon {axon.__version__} (commit {head})", f"axon {axon.__version__} (commit {head}+dirty)")


def test_presets_list_shapes_and_the_published_parameter_counts(capsys):
    assert main(["presets", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    # Meta's Llama 3.1 checkpoints hold these many parameters (their safetensors indexes' total_size / 2 bytes)
    assert rows["8B"]["parameters"] == 8_030_261_248
    assert rows["70B"]["parameters"] == 70_553_706_496
    assert rows["405B"]["parameters"] == 405_853_388_800
    # tiny by hand: embedding and head 2 x 256 x 64, final norm 64, per block 4 x 64 x 64 - 2 x 2 x 32 x 64
    # (kv heads 2 of 4) + 3 x 64 x 192 + 2 x 64
    block = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 64 * 192 + 2 * 64
    assert rows["tiny"]["parameters"] == 2 * 256 * 64 + 64 + 2 * block == 131_392
    assert (rows["8B"]["layers"], rows["8B"]["hidden"], rows["8B"]["kv_heads"]) == (32, 4096, 8)
    assert main(["presets"]) == 0
    assert "8,030,261,248 (8.03B)" in capsys.readouterr().out


def test_environment_variables_expand_in_a_training_config(tmp_path, monkeypatch):
    monkeypatch.setenv("AXON_TEST_SCRATCH", str(tmp_path))
    monkeypatch.delenv("AXON_TEST_UNSET", raising=False)
    path = tmp_path / "run.yaml"
    path.write_text("model: tiny\ndata:\n  source: ${AXON_TEST_SCRATCH}/corpus.tok\nout_dir: $AXON_TEST_SCRATCH/run\n")
    config = load_config(path)
    assert (config.data.source, config.out_dir) == (f"{tmp_path}/corpus.tok", f"{tmp_path}/run")
    path.write_text("model: tiny\ntrain: {resume: latest}\nout_dir: ${AXON_TEST_UNSET}/run\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == ("out_dir='${AXON_TEST_UNSET}/run' names environment variable $AXON_TEST_UNSET, "
                              "which is not set")


def test_an_unset_data_source_is_one_sentence():
    check_data_source(load_config(None, ["data.source=synthetic"]))  # written out: fine
    with pytest.raises(ConfigError) as err:
        check_data_source(load_config(None))
    assert str(err.value) == ("data.source is not set: name a token file (python -m axon data prepare DOCS --out "
                              "FILE.tok; also .npy, .bin, .txt), or write data.source: synthetic to train on a "
                              "generated Markov chain")


def test_every_command_states_a_user_error_in_one_style(tmp_path, capsys):
    """`axon COMMAND: error: SENTENCE`, exit 2, no traceback: a config that is not YAML under
    dry-run (a 60-line traceback before), a token file or an out_dir that is not there."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: 1M\nlayout: {col: 2\n")
    with pytest.raises(SystemExit) as done:
        main(["dry-run", str(broken), "--world", "2"])
    assert done.value.code == 2
    assert capsys.readouterr().err == (f"axon dry-run: error: config file '{broken}' is not valid YAML at line 3, "
                                       "column 1: expected ',' or '}', but got '<stream end>'\n")
    with pytest.raises(SystemExit) as done:
        main(["dry-run", str(REPO / "axon/configs/local.yaml"), "--world", "4", "--set", "train.lr=[1"])
    assert done.value.code == 2 and capsys.readouterr().err.startswith("axon dry-run: error: --set 'train.lr=[1': ")
    with pytest.raises(SystemExit) as done:
        main(["data", "verify", str(tmp_path / "none.tok")])
    assert done.value.code == 2 and capsys.readouterr().err.startswith("axon data: error: ")
    with pytest.raises(SystemExit) as done:
        main(["diagnose", str(tmp_path / "no_run")])
    assert done.value.code == 2
    assert capsys.readouterr().err == f"axon diagnose: error: {tmp_path / 'no_run'} is not a directory\n"


def test_data_verify_json(tmp_path, capsys):
    from axon.data.prepare import ByteTokenizer, prepare

    out = tmp_path / "two.tok"
    prepare(["héllo", "ab"], str(out), ByteTokenizer())
    assert main(["data", "verify", str(out), "--json"]) is None
    report = json.loads(capsys.readouterr().out)
    # "héllo" is 6 UTF-8 bytes, "ab" 2, each document ends with id 256
    assert report == {"ok": True, "file": str(out), "tokens": 6 + 1 + 2 + 1, "documents": 2, "vocab": 257,
                      "eos": 256, "tokenizer": "bytes", "crc32": report["crc32"]}
    data = bytearray(out.read_bytes())
    data[256 + 3] ^= 0x01  # one token byte: the checksum no longer matches
    out.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as done:
        main(["data", "verify", str(out), "--json"])
    captured = capsys.readouterr()
    assert done.value.code == 2 and json.loads(captured.out)["ok"] is False and "checksum" in captured.err
