"""The 8B/70B/405B path, small: a Hugging Face Llama folder made here (transformers' random
weights, a trained byte-level BPE tokenizer.json), the user's documents, sliced import, sharded
greedy evaluation and ACR, through `python -m axon memorize` as memorize_8b.yaml configures it
(init_from: hf:DIR, tokenizer: DIR/tokenizer.json, targets: PATH), at world 4 with pipe and
col axes against the same sweep in one process; and the same sweep killed and rerun.

Three launches share the module: world 1 (the reference), world 4 (pipe 2 x col 2; ACR on
the stages folded into depth, depth 2 x col 2), and the world-1 sweep stopped twice and rerun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from axon.memorize.documents import fictional_documents
from axon.runtime.exit_codes import PREEMPTED
from axon.testing.processes import REPO, clean_env, free_port

LAUNCH_TIMEOUT_S = 240
EXACT = ("exact_match", "token_acc", "control_exact_match", "control_token_acc", "kept_fraction", "extract_p8",
         "extract_p16", "extract_tail16", "control_extract_p8", "canary_extraction", "control_canary_extraction",
         "mia_auc_loss", "acr", "acr_memorized", "control_acr", "control_acr_memorized", "epoch", "step")
CLOSE = ("train_loss", "val_loss", "rougeL", "control_rougeL", "exposure", "mia_auc_zlib")


def write_hf_llama(folder: Path) -> Path:
    """A Hugging Face Llama 3.1 folder in miniature (axon.testing.tiny_llama)."""
    from axon.data.corpus import default_corpus_documents
    from axon.testing.tiny_llama import save_tiny_llama

    return save_tiny_llama(folder, list(default_corpus_documents(0, 300)), seed=0)


def write_experiment(tmp: Path, hf: Path, layout: dict, goldfish: bool = True) -> Path:
    """memorize_8b.yaml's shape, small: HF weights and tokenizer, the user's documents (a quarter
    held out as controls), fp32 so that layouts agree to rounding."""
    docs = tmp / "my_documents.jsonl"
    if not docs.exists():
        docs.write_text("".join(json.dumps({"text": text}) + "\n" for text in fictional_documents(11, 8)))
    config = {
        "models": [{"name": "tiny-llama", "init_from": f"hf:{hf}", "seq_len": 32}],
        "losses": ["standard"] + ([{"kind": "goldfish", "k": 3, "h": 4}] if goldfish else []),
        "targets": str(docs), "tokenizer": str(hf / "tokenizer.json"), "filler": "default",
        "experiment": {"control_fraction": 0.25, "canaries": 2, "epochs": 2, "filler_per_epoch": 6, "prefix": 8,
                       "suffix": 8, "val_sequences": 4, "exposure_samples": 15, "eval_batch": 4,
                       "extraction_prefixes": [8, 16], "extraction_tail": 16,
                       "acr": "all", "acr_documents": 2, "acr_iterations": 2, "acr_candidates": 4, "acr_top_k": 4},
        "layout": layout,
        "train": {"global_batch": 4, "lr": 3e-3, "schedule": "constant", "warmup_steps": 0, "seed": 5,
                  "dtype": "float32", "checkpoint_every": 3},
        "out_dir": str(tmp / "out"),
    }
    path = tmp / "memorize_tiny_llama.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(config: Path, world: int = 1, fault: str = "", on_line=None) -> tuple[int, str]:
    """`python -m axon memorize CONFIG` (torchrun with `world` > 1); (exit code, output).
    `on_line(line, process)` sees each line as it comes; the launch is killed past the deadline."""
    env = clean_env()
    env.update(OMP_NUM_THREADS="1", **({"AXON_FAULT": fault} if fault else {}))
    runner = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-addr",
               "127.0.0.1", "--master-port", str(free_port())] if world > 1 else [sys.executable])
    proc = subprocess.Popen(runner + ["-m", "axon", "memorize", str(config)], env=env, cwd=REPO, text=True,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timer = threading.Timer(LAUNCH_TIMEOUT_S, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line, proc)
        return proc.wait(), "".join(lines)
    finally:
        timer.cancel()


def rows(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    return write_hf_llama(tmp_path_factory.mktemp("hf") / "Tiny-Llama-3.1")


@pytest.fixture(scope="module")
def world1(hf_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("world1")
    code, output = launch(write_experiment(tmp, hf_llama, {"data": 1}))
    assert code == 0, output
    return tmp / "out", output


def test_world4_pipe_and_col_equals_one_process(hf_llama, world1, tmp_path):
    one, _ = world1
    # the standard loss only (tests/memorize/test_memorize.py runs Goldfish on pipeline stages)
    code, output = launch(write_experiment(tmp_path, hf_llama, {"pipe": 2, "col": 2}, goldfish=False), world=4)
    assert code == 0, output
    assert "ACR on layout data 1 x pipe 1 x depth 2 x row 1 x col 2" in output  # the stages folded into depth
    four, reference = rows(tmp_path / "out"), rows(one)[:2]
    assert [(r["loss_kind"], r["epoch"]) for r in four] == [("standard", 1), ("standard", 2)]
    assert [(r["loss_kind"], r["epoch"]) for r in reference] == [("standard", 1), ("standard", 2)]
    for got, want in zip(four, reference):
        for key in EXACT:
            assert got[key] == pytest.approx(want[key], abs=1e-9, nan_ok=True), key
        for key in CLOSE:
            assert got[key] == pytest.approx(want[key], rel=1e-5), key
    # the per-document ACR values and prompts, and every document's exact match, alike
    for got, want in zip(json.loads((tmp_path / "out" / "per_document.json").read_text()),
                         json.loads((one / "per_document.json").read_text())):
        assert got["targets_acr"] == want["targets_acr"] and got["controls_acr"] == want["controls_acr"]
        assert got["targets"]["exact_match"] == want["targets"]["exact_match"]
        assert got["targets"]["loss"] == pytest.approx(want["targets"]["loss"], rel=1e-5)
    print("world 4 vs world 1, last epoch: " + "; ".join(
        f"{r['loss_kind']}: exact match {r['exact_match']:.3f}, token acc {r['token_acc']:.3f}, extract_p8 "
        f"{r['extract_p8']:.3f}, ACR>1 {r['acr_memorized']:.3f}, train loss {r['train_loss']:.5f}"
        for r in four if r["epoch"] == 2))


def test_sweep_killed_mid_cell_and_preempted_resumes_to_the_same_results(hf_llama, world1, tmp_path):
    """SIGKILL right after the step-6 checkpoint of the first cell (AXON_FAULT); rerun: the first
    cell resumes from step 6 with its epoch-1 row, then a SIGTERM in the second cell stops it at a
    step boundary with a checkpoint (exit 75); rerun: the first cell is not run again, the second
    resumes from its checkpoint. The results equal the uninterrupted run's."""
    one, _ = world1
    config = write_experiment(tmp_path, hf_llama, {"data": 1})
    out = tmp_path / "out"
    fault = "die:rank=0:step=6:at=renamed"
    code, output = launch(config, fault=fault)
    assert code == -signal.SIGKILL and "kills itself" in output, output
    assert [r["epoch"] for r in json.loads((out / "runs" / "tiny-llama-standard" / "cell.json").read_text())["rows"]] == [1]

    def preempt(line, proc):  # the second cell has started: stop the job as a scheduler would
        if "memorize run 2/2" in line:
            os.kill(proc.pid, signal.SIGTERM)

    code, output = launch(config, fault=fault, on_line=preempt)
    assert code == PREEMPTED, output
    assert "resumed from" in output and "step_00000006 at step 6 (1 evaluation(s) kept)" in output
    assert "SIGTERM received: stopped after step" in output
    code, output = launch(config)
    assert code == 0, output
    assert "memorize run 1/2: model tiny-llama, loss standard: done before" in output
    assert "resumed from" in output
    resumed, reference = rows(out), rows(one)
    assert len(resumed) == len(reference) == 4
    for got, want in zip(resumed, reference):
        for key in want:
            if not key.endswith("_seconds"):
                assert got[key] == pytest.approx(want[key], abs=0, nan_ok=True) if isinstance(want[key], float) \
                    else got[key] == want[key], key
    metrics = [json.loads(line)["step"] for line in (out / "runs" / "tiny-llama-standard" / "metrics.jsonl").open()]
    assert metrics == list(range(1, 9))  # each step once, across the kill
