"""Memorization experiments: documents, the injection stream, the metrics against a plain
PyTorch greedy decoder and rouge-score, the metrics on 4-rank layouts against 1 process,
the sweep end to end, memorize-eval, and the 405B config under the fake backend."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer

from axon.config import ConfigError
from axon.data.prepare import ByteTokenizer
from axon.parallel.grid import Grid
from axon.memorize.documents import Canary, build_documents
from axon.memorize.evaluate import (ShardedEval, document_losses, exposure, extraction, memorization,
                                    validation_loss)
from axon.memorize.stream import FillerTokens, MemorizationStream
from axon.model import Llama, initialize_parameters
from axon.parallel.full_tensor import full_parameters
from axon.testing.reference_model import PlainLlama
from axon.spec.layout import Layout
from axon.spec.shapes import ModelShape
from axon.testing.spawn import free_port, run_distributed
from axon.testing.tiny_experiment import write_tiny_experiment

ROOT = Path(__file__).resolve().parents[2]
SHAPE = ModelShape(layers=2, hidden=32, heads=4, kv_heads=2, ffn=64, vocab=48, seq_len=24)


# ------------------------------------------------------------------ documents and the stream

def _jsonl(path: Path, count: int, start: int = 0) -> Path:
    lines = [json.dumps({"text": f"document number {i}: " + "abc" * (i % 7 + 5)}) for i in range(start, start + count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_user_documents_are_all_targets_and_controls_come_from_a_file_or_a_share(tmp_path):
    docs_file = _jsonl(tmp_path / "t.jsonl", 10)
    texts = [json.loads(line)["text"] for line in docs_file.read_text().splitlines()]
    decode = lambda ids: bytes(ids[:-1].astype(np.uint8)).decode()
    # As given: every document trained, in the file's order; controls generated (never trained).
    docs = build_documents(str(docs_file), ByteTokenizer(), seed=1, documents=0, controls=3, canaries=2, digits=6)
    assert [decode(d) for d in docs.targets] == texts and len(docs.controls) == 3
    assert all(d[-1] == 256 for d in docs.targets) and not set(map(decode, docs.controls)) & set(texts)
    for canary in docs.target_canaries + docs.control_canaries:
        assert set(canary.secret.tolist()) <= set(range(48, 58)) and canary.secret.size == 6  # digits
        assert np.array_equal(canary.tokens[: canary.prefix.size + 6], np.concatenate([canary.prefix, canary.secret]))
    # A controls file: all of it, and all of the targets.
    other = _jsonl(tmp_path / "c.jsonl", 4, start=100)
    docs = build_documents(str(docs_file), ByteTokenizer(), 1, 0, 3, 0, 6, controls_path=str(other))
    assert (len(docs.targets), [decode(d) for d in docs.controls]) == (10, [json.loads(x)["text"] for x in
                                                                           other.read_text().splitlines()])
    # A drawn share: round(0.25 x 10) = 2 held out, every document once.
    docs = build_documents(str(docs_file), ByteTokenizer(), 1, 0, 3, 0, 6, control_fraction=0.25)
    assert (len(docs.targets), len(docs.controls)) == (8, 2)
    assert sorted(map(decode, docs.targets + docs.controls)) == sorted(texts)
    one = _jsonl(tmp_path / "one.jsonl", 1)  # never more than all but one; one document is too few
    assert len(build_documents(str(_jsonl(tmp_path / "two.jsonl", 2)), ByteTokenizer(), 1, 0, 3, 0, 6,
                               control_fraction=0.9).targets) == 1
    with pytest.raises(ConfigError, match="holds 1 document, too few to hold out experiment.control_fraction=0.5"):
        build_documents(str(one), ByteTokenizer(), 1, 0, 3, 0, 6, control_fraction=0.5)


def test_24_user_documents_with_the_shipped_local_config(tmp_path):
    """A new user's first run: their 24 documents, the shipped defaults; all 24 are trained."""
    from axon.memorize.experiment import load_experiment
    from axon.memorize.runner import plan_runs

    rng = np.random.default_rng(24)
    words = "the a ship harbour ledger crown amber letter river sold bought sent to from of and".split()
    lines = [json.dumps({"text": f"Note {i}: " + " ".join(rng.choice(words, size=120))}) for i in range(24)]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    experiment = load_experiment(ROOT / "axon/configs/memorize_local.yaml",
                                 [f"targets={tmp_path / 'docs.jsonl'}", f"out_dir={tmp_path / 'out'}"], seeds=1)
    docs, runs = plan_runs(experiment, 1)
    assert len(docs.targets) == 24 and len(docs.controls) == experiment.section.controls
    assert docs.source.startswith(f"{tmp_path / 'docs.jsonl'}: 24 documents trained; controls:")
    assert all(len(r.stream.placements()) == 24 + experiment.section.canaries for r in runs)
    # each size's peak lr is chosen first: the standard loss at every candidate, on seed 100
    probes = [(r.model.name, r.config.train.lr) for r in runs if r.probe and r.loss.kind == "standard" and r.seed == 100]
    assert probes == [(m, lr) for m in ("0.2M", "1.0M", "2.0M") for lr in (1.5e-3, 3e-3, 6e-3, 1.2e-2, 2.4e-2)]
    assert [r.lr_auto for r in runs[len(probes):]] == [True] * 6 and runs[len(probes)].seed == 0


def test_recurring_validation_windows_match_a_brute_force_search():
    """stream.recurring(h): a validation target whose h ids ending at it occur in the training filler."""
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 5, size=4000)  # 5 ids: many 4-grams recur, not all
    stream = MemorizationStream([rng.integers(0, 5, size=17) for _ in range(3)], FillerTokens(tokens, 16, "test"),
                                seq_len=16, global_batch=4, epochs=3, repeats=1, filler_per_epoch=5, val_windows=6,
                                seed=1)
    h = 4
    trained = tokens[stream.train_filler_start * 16: stream.pad_start * 16 + 1]
    grams = {tuple(trained[i: i + h]) for i in range(trained.size - h + 1)}
    val = stream.validation()
    want = np.array([[j + 2 >= h and tuple(row[j + 2 - h: j + 2]) in grams for j in range(16)] for row in val])
    got = stream.recurring(h)
    assert got.shape == (6, 16) and 0 < got.mean() < 1 and (got == want).all()


def test_stream_places_each_target_once_per_epoch_and_never_a_control():
    docs = build_documents("default", ByteTokenizer(), seed=0, documents=5, controls=4, canaries=2, digits=8)
    rng = np.random.default_rng(0)
    filler = FillerTokens(rng.integers(0, 256, size=40_000), seq_len=32, where="test")
    stream = MemorizationStream(docs.trained(), filler, seq_len=32, global_batch=4, epochs=3, repeats=2,
                                filler_per_epoch=5, val_windows=6, seed=9)
    assert stream.per_epoch == 20 and stream.steps_per_epoch == 5  # 7 targets x 2 + 5 filler -> 20
    everything = stream.sequences(range(stream.epochs * stream.per_epoch))
    assert everything.shape == (60, 33)
    placements = stream.placements()
    for target, where in zip(docs.trained(), placements):
        assert len(where) == 3 * 2
        assert [g // 20 for g in where] == [0, 0, 1, 1, 2, 2]  # twice in each epoch
        head = target[:33]
        for g in where:
            assert np.array_equal(everything[g, : head.size], head)
        hits = [g for g in range(60) if np.array_equal(everything[g, : head.size], head)]
        assert hits == sorted(where)  # and nowhere else
    flat = everything.tobytes()
    for control in docs.controls:
        assert control[:16].astype(np.int64).tobytes() not in flat
    validation = stream.validation()
    assert not any(np.array_equal(v, s) for v in validation for s in everything)
    with pytest.raises(ConfigError, match="fewer than the"):
        MemorizationStream(docs.trained(), FillerTokens(np.zeros(500, dtype=np.int64), 32, "small"), 32, 4, 3, 2,
                           5, 6, 9)


def test_random_placement_and_near_duplicates():
    """placement=random: each injection of a 20-token target sits at its own offset in a 33-token
    sequence, filler around it; near_duplicates=2: every document injection differs from the
    document in exactly 2 tokens, drawn from the documents' own ids; the canary stays exact."""
    rng = np.random.default_rng(4)
    trained = [rng.integers(0, 50, size=20), rng.integers(0, 50, size=20), np.arange(100, 110)]  # 2 docs, 1 canary
    stream = MemorizationStream(trained, FillerTokens(rng.integers(200, 250, size=20_000), 32, "test"), 32,
                                global_batch=4, epochs=4, repeats=2, filler_per_epoch=2, val_windows=2, seed=3,
                                placement="random", near_duplicates=2, documents=2)
    offsets = set()
    for index, where in enumerate(stream.placements()):
        for g in where:
            row, size = stream.sequence(g), trained[index].size
            start = stream.offset(g, size)
            offsets.add(start)
            assert start <= 33 - size
            seen = row[start: start + size]
            assert ((row[:start] >= 200).all() and (row[start + size:] >= 200).all())  # filler around it
            changed = int((seen != trained[index]).sum())
            assert changed == (2 if index < 2 else 0), (index, g)
            assert set(seen.tolist()) <= set(np.concatenate(trained[:2]).tolist()) | set(trained[index].tolist())
    assert len(offsets) > 5
    start = MemorizationStream(trained, stream.filler, 32, 4, 4, 2, 2, 2, 3)  # the defaults: position 0, exact
    assert all(np.array_equal(start.sequence(g)[:20], trained[0]) for g in start.placements()[0])


def test_natural_targets_are_plain_english_from_the_interpreters_help_topics():
    from axon.memorize.documents import natural_passages

    passages = natural_passages()
    assert len(passages) >= 100 and all(p.endswith(".") and "  " not in p and len(p) >= 600 for p in passages)
    docs = build_documents("natural", ByteTokenizer(), seed=1, documents=6, controls=4, canaries=0, digits=8,
                           min_tokens=700)
    texts = [docs.decode(d) for d in docs.targets + docs.controls]
    assert len(set(texts)) == 10 and set(texts) <= set(passages) and all(len(t) >= 700 for t in texts)
    again = build_documents("natural", ByteTokenizer(), 1, 6, 4, 0, 8, min_tokens=700)
    other = build_documents("natural", ByteTokenizer(), 2, 6, 4, 0, 8, min_tokens=700)
    assert [docs.decode(d) for d in again.targets] == texts[:6] != [docs.decode(d) for d in other.targets]
    assert docs.source.startswith("natural: 6 passages of the Python help topics")
    with pytest.raises(ConfigError, match="fewer than the 500 asked for"):
        build_documents("natural", ByteTokenizer(), 1, 400, 100, 0, 8)


def test_seeds_and_quick_plan_every_cell_once_per_seed(tmp_path):
    """seeds: each cell once per seed (documents, stream order and init follow it); --seeds N
    cuts or extends the list; --quick applies the config's quick: overrides under --set."""
    import yaml

    from axon.memorize.experiment import load_experiment
    from axon.memorize.runner import plan_runs

    path = write_tiny_experiment(tmp_path / "exp.yaml", tmp_path / "out")
    raw = yaml.safe_load(path.read_text())
    raw.update(seeds=[5, 9], quick={"experiment.epochs": 1, "losses": ["standard"]})
    path.write_text(yaml.safe_dump(raw))
    exp = load_experiment(path, ["experiment.documents=3"], quick=True, seeds=3)
    assert exp.seeds == (5, 9, 10) and exp.section.epochs == 1 and exp.section.documents == 3
    docs, runs = plan_runs(exp, 1)
    assert [(r.seed, r.model.name, r.config.train.seed, r.stream.seed) for r in runs] == [
        (s, m, s, s) for s in (5, 9, 10) for m in "ab"]
    assert runs[0].config.out_dir.endswith("runs/a-standard-seed5") and docs is runs[0].docs
    first = {s: r.docs.targets[0].tobytes() for r, s in zip(runs, [r.seed for r in runs])}
    assert len(set(first.values())) == 3  # the documents follow the seed
    assert load_experiment(path).seeds == (5, 9) and load_experiment(path).section.epochs == 2
    # ACR on pipeline stages: searched on the same ranks with the stages folded into depth
    _, piped = plan_runs(load_experiment(path, ["layout.pipe=2", "layout.col=2", "experiment.acr=all"]), 4)
    assert all((r.config.layout.pipe, r.acr_layout.pipe, r.acr_layout.depth, r.acr_layout.col) == (2, 1, 2, 2)
               for r in piped)


# ------------------------------------------------------------------ metrics vs independent references

def _sharp_model(grid, seed=3):
    """The same global weights on any layout (initialization draws the same rows whatever the
    shard), scaled up so the greedy choices are clear, not near-ties."""
    model = Llama(SHAPE, grid)
    initialize_parameters(model, grid, seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    return model


def _model_and_plain(seed=3):
    grid = Grid(Layout(), 0)
    model = _sharp_model(grid, seed)
    plain = PlainLlama(SHAPE)
    plain.load_state_dict(full_parameters(model, grid))
    return model, grid, plain


def _plain_greedy(plain, context: torch.Tensor, steps: int) -> torch.Tensor:
    seq = context.clone()
    with torch.no_grad():
        for _ in range(steps):
            seq = torch.cat([seq, plain(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


def _test_documents(plain, prefix, suffix, count=6):
    """Half are the plain model's own greedy continuations (memorized by construction), half
    are those with one token changed part-way (a miss, then a different continuation)."""
    rng = np.random.default_rng(5)
    contexts = torch.from_numpy(rng.integers(0, SHAPE.vocab, size=(count, prefix)))
    docs = _plain_greedy(plain, contexts, suffix).numpy()
    for i in range(count // 2, count):
        docs[i, prefix + i] = (docs[i, prefix + i] + 1) % SHAPE.vocab
    return [d for d in docs]


def test_metrics_match_plain_greedy_decoding_and_rouge_score():
    model, grid, plain = _model_and_plain()
    prefix, suffix = 5, 10
    docs = _test_documents(plain, prefix, suffix)
    got = memorization(ShardedEval(model, grid, torch.device("cpu"), batch=4), docs, prefix, suffix)

    tokens = torch.from_numpy(np.stack(docs))
    generated = _plain_greedy(plain, tokens[:, :prefix], suffix)[:, prefix:].numpy()
    truth = tokens[:, prefix:].numpy()
    with torch.no_grad():
        forced = plain(tokens[:, :-1]).argmax(-1)[:, prefix - 1:].numpy()
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    words = lambda row: " ".join(map(str, row))
    assert got["exact_match"].tolist() == [float((g == t).all()) for g, t in zip(generated, truth)]
    assert got["exact_match"].tolist() == [1, 1, 1, 0, 0, 0]
    assert np.allclose(got["token_acc"], (forced == truth).mean(axis=1))
    want_rouge = [scorer.score(words(t), words(g))["rougeL"].fmeasure for g, t in zip(generated, truth)]
    assert np.allclose(got["rougeL"], want_rouge)
    assert all(r < 1 for r in got["rougeL"][3:])


def test_extraction_canaries_and_losses_match_plain_loops():
    """Extraction over windows and prompt lengths, canary extraction and per-document losses,
    against greedy generation and cross-entropy by a plain PyTorch loop."""
    from axon.memorize.evaluate import canary_extraction

    model, grid, plain = _model_and_plain()
    docs = _test_documents(plain, 5, 10)  # 15 tokens; 0-2 the model's own continuations
    evaluator = ShardedEval(model, grid, torch.device("cpu"), batch=4)
    got = extraction(evaluator, docs, (2, 5, 13), suffix=4, tail=6, windows=3)

    def reproduces(doc, start, given, steps):
        context = torch.from_numpy(doc[start: start + given])[None]
        return bool((_plain_greedy(plain, context, steps)[0, given:].numpy() == doc[start + given: start + given + steps])
                    .all())

    for d, doc in enumerate(docs):
        assert got["p2"][d] == np.mean([reproduces(doc, o, 2, 4) for o in (0, 4, 8)])  # 8 + 6 <= 15
        assert got["p5"][d] == np.mean([reproduces(doc, o, 5, 4) for o in (0, 4)])
        assert np.isnan(got["p13"][d]) and got["tail6"][d] == reproduces(doc, 0, 9, 6)
    assert got["tail6"].tolist() == [1, 1, 1, 0, 0, 0]
    secret = _plain_greedy(plain, torch.tensor([[1, 2, 3]]), 4)[0, 3:].numpy()
    canaries = [Canary(np.array([1, 2, 3]), secret, np.zeros(0)), Canary(np.array([1, 2, 3]), (secret + 1) % 48,
                                                                        np.zeros(0))]
    assert canary_extraction(evaluator, canaries).tolist() == [1.0, 0.0]
    mixed = docs[:3] + [d[:11] for d in docs[3:]]  # two lengths
    with torch.no_grad():
        want = [float(torch.nn.functional.cross_entropy(plain(torch.from_numpy(d[:-1])[None])[0],
                                                        torch.from_numpy(d[1:]))) for d in mixed]
    assert np.allclose(document_losses(evaluator, mixed), want, rtol=1e-5)


def test_exposure_ranks_the_secret_among_sampled_secrets():
    model, grid, plain = _model_and_plain()
    alphabet = np.arange(10, 20)
    prefix = np.array([1, 2, 3, 4, 5])
    # The secret the model itself prefers (greedy within the alphabet) ranks first: full exposure.
    with torch.no_grad():
        seq = torch.from_numpy(prefix)[None, :]
        for _ in range(4):
            logits = plain(seq)[0, -1, 10:20]
            seq = torch.cat([seq, torch.tensor([[10 + int(logits.argmax())]])], dim=1)
    favourite = Canary(prefix, seq[0, 5:].numpy(), seq[0].numpy())
    evaluator = ShardedEval(model, grid, torch.device("cpu"), batch=64)
    assert exposure(evaluator, favourite, alphabet, samples=63, seed=0) == pytest.approx(6.0)  # log2(64) - log2(1)

    # Any secret: exposure = log2(S + 1) - log2(1 + number of sampled secrets the plain model prefers).
    secret = np.array([13, 17, 11, 19])
    canary = Canary(prefix, secret, np.concatenate([prefix, secret]))
    rng = np.random.default_rng([0, 0xCA4A, 5] + secret.tolist())  # the candidates exposure() draws
    candidates = alphabet[rng.integers(0, 10, size=(63, 4))]
    rows = torch.from_numpy(np.concatenate([np.tile(prefix, (64, 1)), np.concatenate([secret[None], candidates])], 1))
    with torch.no_grad():
        logp = torch.log_softmax(plain(rows[:, :-1]), -1).gather(-1, rows[:, 1:, None])[..., 0][:, 4:].sum(1)
    better = int((logp[1:] > logp[0]).sum())
    assert exposure(evaluator, canary, alphabet, samples=63, seed=0) == pytest.approx(6 - math.log2(1 + better))


def _metrics_on(rank, world, layout, prefix, suffix):
    _, _, plain = _model_and_plain()
    docs = _test_documents(plain, prefix, suffix, count=7)  # 7 rows: shards end in padding
    grid = Grid(layout, rank)
    sharded = _sharp_model(grid)
    evaluator = ShardedEval(sharded, grid, torch.device("cpu"), batch=2)
    scores = memorization(evaluator, docs, prefix, suffix)
    canary = Canary(np.array([1, 2, 3]), np.array([11, 12, 13]), np.array([1, 2, 3, 11, 12, 13]))
    expo = exposure(evaluator, canary, np.arange(10, 20), samples=31, seed=1)
    val = validation_loss(evaluator, np.stack(docs))
    scores.update(extraction(evaluator, docs, (2, 4), 3, 6, 3))
    scores["loss"] = document_losses(evaluator, docs[:3] + [d[:9] for d in docs[3:]])  # two lengths
    grid.destroy()
    return {k: v.tolist() for k, v in scores.items()}, expo, val


def test_metrics_on_four_rank_layouts_equal_one_process():
    """Including pipeline stages: evaluation then passes activations through the stages."""
    prefix, suffix = 5, 10
    one = _metrics_on(0, 1, Layout(), prefix, suffix)
    for layout in (Layout(depth=2, row=2), Layout(data=2, col=2), Layout(data=2, depth=2),
                   Layout(pipe=2, row=2), Layout(data=2, pipe=2)):
        results = run_distributed(4, _metrics_on, layout, prefix, suffix)
        for rank_result in results:
            scores, expo, val = rank_result
            assert scores["exact_match"] == one[0]["exact_match"], layout
            assert np.allclose(scores["token_acc"], one[0]["token_acc"]) and np.allclose(scores["rougeL"], one[0]["rougeL"])
            assert expo == pytest.approx(one[1]) and val == pytest.approx(one[2], rel=1e-5), layout
            for key in ("p2", "p4", "tail6"):
                assert np.array_equal(scores[key], one[0][key], equal_nan=True), (layout, key)
            assert np.allclose(scores["loss"], one[0]["loss"], rtol=1e-5), layout


# ------------------------------------------------------------------ the sweep, end to end

def _axon(*args, env_extra=None, torchrun: int = 0):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", **(env_extra or {}))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(torchrun),
                 "--master-port", str(free_port()), "-m", "axon"] if torchrun else [sys.executable, "-m", "axon"])
    return subprocess.run(launcher + list(args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def read_rows(out_dir: Path) -> list[dict]:
    with open(out_dir / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    config = write_tiny_experiment(tmp / "exp.yaml", tmp / "out")
    done = _axon("memorize", str(config))
    assert done.returncode == 0, done.stderr
    return config, tmp / "out", done.stdout


def test_sweep_writes_results_plots_and_summary(tiny_sweep):
    _, out, stdout = tiny_sweep
    rows = read_rows(out)
    required = ["model", "loss_kind", "k", "h", "epoch", "exact_match", "token_acc", "rougeL", "exposure",
                "control_exact_match", "val_loss"]
    assert list(rows[0])[: 3] == ["model", "params", "loss_kind"] and set(required) <= set(rows[0])
    # 2 models x 2 losses x 2 epochs, in order
    assert [(r["model"], r["loss_kind"], r["epoch"]) for r in rows] == [
        (m, loss, str(e)) for m in "ab" for loss in ("standard", "goldfish") for e in (1, 2)]
    for row in rows:
        for key in ("exact_match", "token_acc", "rougeL", "control_exact_match"):
            assert 0.0 <= float(row[key]) <= 1.0
        assert 0.0 <= float(row["exposure"]) <= 4.0  # at most log2(15 + 1)
        assert (row["k"], row["h"]) == (("3", "4") if row["loss_kind"] == "goldfish" else ("", ""))
        assert float(row["lr"]) == (4e-3 if row["model"] == "b" else 3e-3)  # b's own lr, a's from train.lr
        # the filler val loss, apart on Goldfish's never-supervised recurring tokens and the rest, averages back
        share = float(row["val_recurring_dropped_fraction"])
        assert 0 < share < 1 and float(row["val_loss"]) == pytest.approx(
            share * float(row["val_loss_recurring_dropped"]) + (1 - share) * float(row["val_loss_rest"]), rel=1e-9)
        kept = float(row["kept_fraction"])
        assert kept == 1.0 if row["loss_kind"] == "standard" else 0.6 < kept < 0.85
    assert json.loads((out / "results.json").read_text())[0]["model"] == "a"
    for name in ("exact_match_vs_size.png", "exact_match_vs_epoch.png", "rougeL_hist.png", "measures_vs_size.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    summary = (out / "summary.md").read_text()
    # last-epoch, split, loss-gap, intervals, extraction and epochs-to-50% tables
    assert summary.count("| a |") == 11 and "goldfish k=3 h=4" in summary
    for model in "ab":  # the Goldfish rows' filler val losses and their change against the standard rows, by hand
        last = {r["loss_kind"]: r for r in rows if r["model"] == model and r["epoch"] == "2"}
        cells = []
        for key in ("val_loss", "val_loss_recurring_dropped", "val_loss_rest"):
            gold, std = float(last["goldfish"][key]), float(last["standard"][key])
            cells.append(f"{gold:.3f} ({100 * (gold / std - 1):+.1f}%)")
        assert f"| {cells[0]} |" in summary
        share = float(last["goldfish"]["val_recurring_dropped_fraction"])
        assert f"| {model} | goldfish k=3 h=4 | {share:.3f} | {cells[1]} | {cells[2]} |" in summary
    placements = json.loads((out / "placements.json").read_text())
    assert [len(p["sequences"]) for p in placements["placements"]] == [2] * 6  # 4 documents + 2 canaries, 2 epochs
    assert all(p["offsets"] == [0, 0] for p in placements["placements"])  # placement: start
    # per-run training metrics: the loss fell in both runs of the larger model
    metrics = [json.loads(line) for line in (out / "runs" / "b-standard" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert "memorize run 4/4: model b, loss goldfish-k3-h4" in stdout
    # ACR: the largest model (b), both losses, at the last epoch only; the share above 1 is empty elsewhere.
    documents = json.loads((out / "per_document.json").read_text())
    for row in rows:
        measured = row["model"] == "b" and row["epoch"] == "2"
        assert (row["acr_memorized"] != "") == measured and (row["control_acr_memorized"] != "") == measured, row
        if measured:  # ACR is 8 / the shortest prompt's length (1 to 7, bisected) or 0
            found = next(d for d in documents if d["model"] == "b" and d["loss_kind"] == row["loss_kind"])
            values = np.array(found["targets_acr"]["acr"])
            assert set(values) <= {0.0} | {8 / n for n in range(1, 8)} and len(values) == 4
            assert float(row["acr_memorized"]) == pytest.approx(np.mean(values > 1))
            if (values > 1).any():  # the ACR paper's mean: over the documents above 1 only
                assert float(row["acr"]) == pytest.approx(values[values > 1].mean())
            else:
                assert row["acr"] == ""
            assert all(len(p) == (round(8 / a) if a else 0) for p, a in zip(found["targets_acr"]["prompt"], values))
    assert "| ACR (mean of > 1) | ACR > 1 |" in summary
    # The new measures, per row against the per-document scores of the last epoch, by hand.
    for found in documents:
        row = next(r for r in rows if r["model"] == found["model"] and r["loss_kind"] == found["loss_kind"]
                   and r["epoch"] == "2")
        targets, controls = found["targets"], found["controls"]
        assert float(row["mia_auc_loss"]) == pytest.approx(_pairs_auc(targets["loss"], controls["loss"]))
        assert float(row["mia_auc_zlib"]) == pytest.approx(_pairs_auc(targets["zlib_ratio"], controls["zlib_ratio"]))
        for key in ("extract_p8", "extract_tail20"):  # 33-token targets (seq_len 32): p8 at 0, 8, 16; 13 + 20
            assert float(row[key]) == pytest.approx(np.mean(targets[key])) and len(targets[key]) == 4
        assert row["extract_p32"] == ""  # no window of 32 + 8 tokens in 33
        assert float(row["canary_extraction"]) == pytest.approx(np.mean(found["canary_extraction"]))
    assert "MIA AUC (loss)" in summary and "| 8 tokens | 16 tokens |" in summary
    # Epochs to 50%: the first evaluated epoch with exact match >= 0.5, by hand from the rows.
    for model in "ab":
        for loss, label in (("standard", "standard"), ("goldfish", "goldfish k=3 h=4")):
            mine = [r for r in rows if r["model"] == model and r["loss_kind"] == loss]
            first = next((r["epoch"] for r in mine if float(r["exact_match"]) >= 0.5), "never")
            assert f"| {model} | " in summary and f"| {label} | {first} | 2 |" in summary
    assert (out / "epochs_to_50_vs_size.png").read_bytes()[:4] == b"\x89PNG"


def _pairs_auc(targets, controls) -> float:
    """P(target < control) + half the ties, by counting every pair."""
    pairs = [(t < c) + 0.5 * (t == c) for t in targets for c in controls]
    return sum(pairs) / len(pairs)


def test_memorize_eval_scores_a_checkpoint_like_the_sweep(tiny_sweep, tmp_path):
    config, out, _ = tiny_sweep
    checkpoint = next((out / "runs" / "b-standard" / "checkpoints").iterdir())
    done = _axon("memorize-eval", str(config), "--checkpoint", str(checkpoint), "--model", "b", "--acr",
                 "--out", str(tmp_path / "scores.json"))
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    final = [r for r in read_rows(out) if r["model"] == "b" and r["loss_kind"] == "standard"][-1]
    for key in ("exact_match", "token_acc", "rougeL", "exposure", "control_exact_match", "acr_memorized",
                "control_acr_memorized", "mia_auc_loss", "extract_p16"):
        assert scores[key] == pytest.approx(float(final[key]), abs=1e-9), key
    assert scores["val_loss"] == pytest.approx(float(final["val_loss"]), rel=1e-6)
    wrong = _axon("memorize-eval", str(config), "--checkpoint", str(checkpoint), "--set", "seeds=[1, 2]", "--seed", "3")
    assert wrong.returncode == 2 and "--seed 3 is not one of the config's seeds (1, 2)" in wrong.stderr


@pytest.mark.parametrize("layout", [{"col": 2}, {"pipe": 2}])
def test_sweep_on_two_ranks_matches_one_process(tiny_sweep, tmp_path, layout):
    """col splits every matrix; pipe puts one block on each stage (training and evaluation pass
    activations between them, and the Goldfish kept count is the same on both stages)."""
    _, one_out, _ = tiny_sweep
    config = write_tiny_experiment(tmp_path / "exp.yaml", tmp_path / "out", layout=layout,
                                   acr="largest" if "col" in layout else "none")  # ACR with pipe: test_large_path
    done = _axon("memorize", str(config), torchrun=2)
    assert done.returncode == 0, done.stderr
    for got, want in zip(read_rows(tmp_path / "out"), read_rows(one_out)):
        for key in ("exact_match", "token_acc", "control_exact_match", "kept_fraction", "extract_p8",
                    "canary_extraction"):
            assert float(got[key]) == pytest.approx(float(want[key]), abs=1e-9), key
        for key in ("val_loss", "train_loss", "rougeL"):
            assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-4), key
        if "col" in layout:  # the prompt search with the hidden size split over col
            assert (got["acr"], got["acr_memorized"]) == (want["acr"], want["acr_memorized"])


def test_bad_experiment_configs_get_one_sentence(tmp_path):
    config = write_tiny_experiment(tmp_path / "exp.yaml", tmp_path / "out")
    cases = [
        (["--set", "experiment.suffix=40"], "shorter than experiment.prefix + experiment.suffix = 48"),
        (["--set", "train.steps=5"], "train.steps is set per run by the experiment"),
        (["--set", "train.resume=latest"], "train.resume does not apply to a memorization sweep"),
        (["--set", "targets=/nonexistent/docs.jsonl"], "input '/nonexistent/docs.jsonl' does not exist"),
        (["--set", "models=[{name: x, layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32, vocab: 200, "
                   "seq_len: 32}]"], "model.vocab=200 is smaller than the tokenizer's vocab 257"),
        (["--set", "layout.col=3"], "has 3 ranks but the job has world size 1"),
        (["--set", f"targets={_jsonl(tmp_path / 'one.jsonl', 1)}", "--set", "experiment.control_fraction=0.5"],
         "holds 1 document, too few to hold out experiment.control_fraction=0.5"),
        (["--set", "controls=x.jsonl"], "controls='x.jsonl' needs targets=PATH too"),
        (["--set", "layout.pipe=1", "--set", "experiment.acr=every"], "experiment.acr must be none, largest or all"),
        (["--set", "experiment.placement=middle"], "experiment.placement must be start or random"),
        (["--quick"], "--quick needs a `quick:` mapping of overrides in exp.yaml"),
        (["--set", "models=[{name: x, layers: 1, hidden: 16, heads: 2, kv_heads: 1, ffn: 32, vocab: 257, "
                   "seq_len: 32, lr: -1}]"], "models[0].lr must be a positive number"),
    ]
    for extra, message in cases:
        done = _axon("memorize", str(config), *extra)
        assert done.returncode == 2 and message in done.stderr, (extra, done.stderr)
        assert done.stderr.count("\n") == 1  # one sentence, no traceback


# ------------------------------------------------------------------ the 405B config, without weights

FAKE_405B = r"""
import sys, torch, torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
from axon.parallel.grid import Grid
from axon.memorize.experiment import load_experiment
from axon.memorize.runner import plan_runs
from axon.model import Llama
world, rank = 512, 301
experiment = load_experiment("axon/configs/memorize_405b.yaml")
docs, runs = plan_runs(experiment, world)
dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
out = []
for run in runs:
    grid = Grid(run.config.layout, rank)
    with torch.device("meta"):
        model = Llama(run.config.model, grid)
    local = sum(p.numel() for p in model.parameters())
    assert all(p.is_meta for p in model.parameters())
    lay = run.config.layout
    names = [name for name, _ in model.named_parameters()]
    out.append((run.loss.tag, lay.data, lay.pipe, lay.depth, lay.row, lay.col, local, run.stream.total_steps,
                run.config.train.loss, run.choice.prediction.fits, names))
print(out)
print(len(docs.targets), len(docs.controls), len(docs.target_canaries))
"""


def test_405b_config_builds_and_validates_on_512_fake_ranks(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from axon.checkpoint.huggingface import hf_config
    from axon.spec.shapes import preset

    hf_dir = tmp_path / "Llama-3.1-405B"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps(hf_config(preset("405B"))))
    words = {w: i for i, w in enumerate(["[UNK]", "<|end_of_text|>", ".", *"0123456789", "The", "vault", "code",
                                         "of", "is", "the", "river"])}
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|end_of_text|>"])
    tok.save(str(hf_dir / "tokenizer.json"))
    env = {**os.environ, "LLAMA_405B_DIR": str(hf_dir), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", FAKE_405B], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    runs_line, docs_line = done.stdout.strip().splitlines()[-2:]
    runs = eval(runs_line)
    assert [r[0] for r in runs] == ["standard", "goldfish-k4-h13"] and [r[8] for r in runs] == ["standard", "goldfish"]
    shapes = __import__("axon.checkpoint.huggingface", fromlist=["parameter_shapes"]).parameter_shapes(preset("405B"))
    for tag, data, pipe, depth, row, col, local, steps, _, fits, names in runs:
        assert data * pipe * depth * row * col == 512 and fits
        # each rank holds 1/(depth x row x col) of its stage's weights (norm gains are replicated: tiny)
        stage = sum(int(np.prod(shapes[name])) for name in names)
        assert local == pytest.approx(stage / (depth * row * col), rel=0.01)
        assert pipe > 1 or stage == sum(int(np.prod(s)) for s in shapes.values())
        assert steps == 8 * 8  # 8 epochs x ceil((100 + 8 + 400) / 64) steps
    assert docs_line == "100 100 8"


def test_single_pass_configs_are_the_launcher_overrides_of_the_scale_configs(monkeypatch, tmp_path):
    """memorize_<size>_single_pass.yaml is what launch/memorize_llama.sh runs with the three
    --set keys its header gives; the local single-pass config sees each target once per epoch."""
    from axon.checkpoint.huggingface import hf_config
    from axon.memorize.experiment import load_experiment
    from axon.spec.shapes import preset

    for size in ("8b", "70b", "405b"):
        (tmp_path / size).mkdir()
        (tmp_path / size / "config.json").write_text(json.dumps(hf_config(preset(size.upper()))))
        monkeypatch.setenv(f"LLAMA_{size.upper()}_DIR", str(tmp_path / size))
        variant = load_experiment(ROOT / f"axon/configs/memorize_{size}_single_pass.yaml")
        base = load_experiment(ROOT / f"axon/configs/memorize_{size}.yaml",
                               ["experiment.epochs=3", "experiment.filler_per_epoch=1172",
                                f"out_dir=runs/memorize_{size}_single_pass"])
        assert variant == base and variant.section.repeats == 1, size
    local = load_experiment(ROOT / "axon/configs/memorize_single_pass.yaml")
    assert (local.section.epochs, local.section.repeats, local.section.eval_every) == (3, 1, 1)


def test_bpe_tokenizer_is_trained_on_the_generated_corpus_and_cached(tmp_path):
    from axon.data.corpus import default_corpus_documents
    from axon.memorize.documents import digit_alphabet, fictional_documents
    from axon.memorize.tokenizer import bpe_path, load_tokenizer, train_bpe

    path = train_bpe(bpe_path(str(tmp_path), 400, 0), 400, 0, documents=300)
    stamp = path.stat().st_mtime_ns
    tokenizer = load_tokenizer("bpe:400", str(tmp_path), 0)  # the cached file, not trained again
    assert path.stat().st_mtime_ns == stamp and tokenizer.vocab == 400
    assert tokenizer.tokenizer.id_to_token(tokenizer.eos) == "<|endoftext|>"
    assert digit_alphabet(tokenizer).size == 10  # one token per digit: canaries and sums
    texts = list(default_corpus_documents(0, 400))[300:] + fictional_documents(5, 20)
    encoded = tokenizer.encode_batch(texts)
    assert [tokenizer.tokenizer.decode(ids.tolist()) for ids in encoded] == texts  # byte-level: lossless
    assert sum(map(len, texts)) / sum(map(len, encoded)) > 1.5  # 1.9 bytes a token at 400 ids (3.1 at 1024)
    with pytest.raises(ConfigError, match="bpe:V needs a whole vocabulary V >= 300"):
        load_tokenizer("bpe:lots", str(tmp_path))


def test_ablation_config_runs_every_mask_strategy_at_each_k_and_h():
    from axon.memorize.experiment import load_experiment

    experiment = load_experiment(ROOT / "axon/configs/memorize_ablation.yaml")
    masks = {(loss.strategy, loss.k, loss.h) for loss in experiment.losses if loss.kind == "goldfish"}
    assert masks == {("static", k, 13) for k in (3, 4, 8)} | {(s, k, h) for s in ("hash", "hash-table")
                                                              for k in (3, 4, 8) for h in (7, 13)}
    assert experiment.targets == "natural" and experiment.section.placement == "random"
    quick = load_experiment(ROOT / "axon/configs/memorize_ablation.yaml", quick=True)
    assert [loss.tag for loss in quick.losses] == ["standard", "goldfish-k4-h13-static", "goldfish-k4-h13",
                                                   "goldfish-k4-h13-hash-table"]
