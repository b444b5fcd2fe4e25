"""docs/first-run.md, run: every `bash` block of the page without a "not run" note, in order,
with bash, on a tiny Hugging Face Llama made here (axon/testing/tiny_llama.py) and Slurm's
commands played by axon/testing/fake_slurm.py, so the real launch/perlmutter.sbatch runs on 2
CPU ranks. The page and the test cannot drift: the commands are read from the page.

References: the job that was preempted and requeued must end with the losses of a run never
stopped, bit for bit (same layout, same code); the export, read by transformers, must give the
logits axon's model gives when it loads the final checkpoint through its own resume path (a
reshard from 2 ranks to 1), to 1e-5 in fp32.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from axon.testing import fake_slurm
from axon.testing.processes import REPO, clean_env
from axon.testing.tiny_llama import EOS, TINY_LLAMA, save_tiny_llama, write_documents

PAGE = REPO / "docs" / "first-run.md"
NOT_RUN = "<!-- not run by the test:"
# The blocks the test leaves out, and why (the page says it too).
EXPECTED_NOT_RUN = {"git clone": "installs packages", "export LLAMA_8B_DIR": "site paths",
                    "tensorboard": "a server that does not end"}
# What run.yaml gets after `cp`, to train on 2 CPU ranks in seconds (the page lists them).
CPU_EDITS = {("model", "seq_len"): 32, ("train", "global_batch"): 4, ("train", "steps"): 6,
             ("train", "warmup_steps"): 2, ("train", "checkpoint_every"): 2, ("train", "log_every"): 1,
             ("train", "eval_every"): 3, ("train", "peak_tflops"): 1.0, ("data", "validation_sequences"): 4}
PREEMPT_AT_STEP = 2  # the fake Slurm's "time limit": SIGUSR1 to every task after step 2's line (4 steps
# and a checkpoint before the end: the signal cannot arrive too late)
BLOCK_TIMEOUT_S = 150


def page_blocks() -> list[tuple[str, str | None]]:
    """(the block's text, why it is not run or None) for every ```bash block of the page, in order."""
    blocks, note, lines = [], None, PAGE.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(NOT_RUN):
            note = line[len(NOT_RUN):].removesuffix("-->").strip()
        elif line.strip() == "```bash":
            end = lines.index("```", i + 1)
            blocks.append(("\n".join(lines[i + 1:end]), note))
            note, i = None, end
        elif line.strip():
            note = None  # a note belongs to the block right below it
        i += 1
    return blocks


def test_the_page_runs_every_command_but_three_and_says_why():
    blocks = page_blocks()
    skipped = {next(key for key in EXPECTED_NOT_RUN if key in text): why for text, why in blocks if why}
    assert set(skipped) == set(EXPECTED_NOT_RUN)
    for key, why in skipped.items():
        assert why.startswith(EXPECTED_NOT_RUN[key]), (key, why)
    run = "\n".join(text for text, why in blocks if why is None)
    for command in ("python -m axon data prepare", "--tokenizer", "python -m perfmodel plan", "python -m axon dry-run",
                    "CONFIG=run.yaml sbatch", "launch/perlmutter.sbatch", "python -m axon convert", "--to-hf",
                    "from_pretrained"):
        assert command in run, command


def _run_block(text: str, env: dict, cwd: Path) -> str:
    """One block with bash -euo pipefail, in its own session (a time-out kills all it started)."""
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", text], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        raise AssertionError(f"this block of {PAGE.name} did not finish in {BLOCK_TIMEOUT_S} s:\n{text}")
    assert proc.returncode == 0, f"this block of {PAGE.name} exited {proc.returncode}:\n{text}\n--- output:\n{out}"
    return out


def _edit(path: Path, edits: dict) -> None:
    config = yaml.safe_load(path.read_text())
    for (section, key), value in edits.items():
        config[section][key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _losses(out_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    return [r["loss"] for r in rows]


def test_first_run_page_on_a_tiny_llama(tmp_path):
    # The stand-ins: the weights folder (tokenizer trained on the text), the text, Slurm.
    text = write_documents(tmp_path / "text" / "documents.jsonl", 48)
    texts = [json.loads(line)["text"] for line in text.read_text().splitlines()]
    assert 30_000 < sum(map(len, texts)) < 60_000  # the page says 40 KB
    llama = save_tiny_llama(tmp_path / "Llama-3.1-8B", texts)
    clone = tmp_path / "clone"  # the page's commands run from the clone's root
    clone.mkdir()
    for name in ("axon", "launch"):
        (clone / name).symlink_to(REPO / name)
    runs = tmp_path / "runs"
    env = {**clean_env(), "LLAMA_8B_DIR": str(llama), "TEXT": str(text.parent), "DATA": str(tmp_path / "text.tok"),
           "RUNS": str(runs), "ACCOUNT": "m0000", "FAKE_SLURM_DIR": str(tmp_path / "slurm"), "FAKE_SLURM_TASKS": "2",
           "PATH": f"{fake_slurm.install(tmp_path)}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
                   f"{os.environ['PATH']}"}
    run_dir = runs / "llama3.1-8b"

    outputs = []
    for block, why in page_blocks():
        if why:
            continue
        block_env = dict(env)
        if "sbatch" in block:
            block_env["FAKE_SLURM_SIGNAL_AT_STEP"] = str(PREEMPT_AT_STEP)
        started = time.perf_counter()
        outputs.append((block, _run_block(block, block_env, clone)))
        print(f"{time.perf_counter() - started:5.1f} s  {block.splitlines()[0][:90]}")
        if block.startswith("cp axon/configs/llama3.1-8b.yaml run.yaml"):
            _edit(clone / "run.yaml", CPU_EDITS)
    by_command = lambda word: next(o for b, o in outputs if word in b)  # noqa: E731

    # data prepare: each document as the model's tokenizer reads it, then its end-of-text id
    from tokenizers import Tokenizer

    from axon.data.token_file import open_token_file

    tokenizer = Tokenizer.from_file(str(llama / "tokenizer.json"))
    eos = tokenizer.token_to_id(EOS)
    view = open_token_file(env["DATA"], verify=True)
    assert view.doc_offsets.size == len(texts) and view.eos == eos and view.vocab <= TINY_LLAMA["vocab_size"]
    for i in (0, len(texts) - 1):
        assert view.document(i).tolist() == tokenizer.encode(texts[i]).ids + [eos]
    assert f"{view.tokens.size:,} tokens, {len(texts)} documents" in by_command("data verify")

    # plan: run.yaml's run (the tiny model here) ranked on 16 A100s, the first layout fitting
    plan = by_command("perfmodel plan")
    first = next(line for line in plan.splitlines() if re.match(r"\s+1\s", line))
    assert "does not fit" not in first and "(run.yaml) on 16 x perlmutter" in plan, plan

    # dry run: the auto layout on the named profile, strict NCCL ok, exit 0 (checked above)
    dry = by_command("dry-run")
    assert re.search(r"on 16 ranks, layout: auto on perlmutter -> data \d+ x pipe", dry) and "strict NCCL: ok" in dry

    # submit: preempted after step PREEMPT_AT_STEP's line (exit 75), requeued by the script, resumed, finished
    codes = (tmp_path / "slurm" / "job_1001.codes").read_text().split()
    log = (clone / "axon-1001.out").read_text()
    assert codes == ["75", "0"], log
    stopped = int(re.search(r"SIGUSR1 received: stopped after step (\d+)", log).group(1))
    assert stopped >= PREEMPT_AT_STEP and "requeueing job 1001" in log
    assert f"resumed from {run_dir}/checkpoints/step_{stopped:08d} at step {stopped}" in log
    assert "world 2 via slurm, backend gloo" in log and "step 6/6" in log
    assert "step 6/6" in by_command("tail -n 30") and json.loads(by_command("metrics.jsonl").splitlines()[-1])["step"] == 6
    assert "resumed from" in by_command("grep -h") and "step_00000006" in by_command("grep -h")
    assert any((run_dir / "tensorboard").iterdir())  # what `tensorboard --logdir` would show

    # the requeued run's losses are those of a run never stopped: bit for bit
    straight = tmp_path / "straight"
    done = subprocess.run([str(tmp_path / "bin" / "srun"), "python", "-m", "axon", "train", "run.yaml",
                           "--set", f"out_dir={straight}"], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _losses(run_dir) == _losses(straight) and len(_losses(straight)) == 6
    assert [r.get("val_loss") is not None for r in map(json.loads, (straight / "metrics.jsonl").open())] == \
        [False, False, True, False, False, True]

    # export: transformers' logits from the export = axon's from the final checkpoint, read into one
    # process from the 2-rank layout it was saved at (the resume path's reshard, not the exporter)
    assert "The river" in by_command("from_pretrained")  # the page's generate() ran
    from transformers import LlamaForCausalLM

    from axon.checkpoint import load_shards
    from axon.checkpoint.reader import CheckpointReader
    from axon.model import Llama
    from axon.parallel.grid import Grid
    from axon.spec.layout import Layout

    reader = CheckpointReader(run_dir / "checkpoints" / "step_00000006")
    reader.verify()  # every shard's checksum, as a resume does before reading
    grid = Grid(Layout(), 0)
    model = Llama(reader.shape, grid)
    load_shards(reader, model, None, grid)
    exported = LlamaForCausalLM.from_pretrained(runs / "llama3.1-8b-hf", dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer.encode(texts[0]).ids[:24]])
    with torch.no_grad():
        ours, theirs = model(ids), exported(ids).logits
    error = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert error <= 1e-5, f"exported logits differ from axon's by {error:.2e} relative"
    print(f"first-run: stopped after step {stopped}, resumed; losses equal the straight run's; "
          f"exported logits within {error:.1e} of axon's")
