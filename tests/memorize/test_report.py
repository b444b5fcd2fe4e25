"""The report's Goldfish filler val-loss gaps against hand-computed values (last epoch, at
convergence, at equal supervised tokens), and the files write_report leaves from synthetic rows."""

from __future__ import annotations

import math

import pytest

from axon.memorize import intervals
from axon.memorize.loss_gaps import loss_gap_table, run_gaps
from axon.memorize.report import RESULT_COLUMNS, write_report
from axon.memorize.statistics import auc_interval

# val loss at epochs 4, 8, 12 per (loss, seed). Seed 0: standard still falling, Goldfish lowest at 8;
# seed 1: standard lowest at 8, Goldfish still falling.
VAL = {("standard", 0): (3.0, 2.6, 2.4), ("goldfish", 0): (3.2, 2.7, 2.75),
       ("standard", 1): (3.1, 2.5, 2.55), ("goldfish", 1): (3.3, 2.9, 2.8)}
KEPT = {"standard": (1.0, 1.0, 1.0), "goldfish": (0.74, 0.75, 0.76)}  # mean 0.75


def _rows(goldfish_kept=KEPT["goldfish"]) -> list[dict]:
    rows = []
    for (kind, seed), losses in VAL.items():
        kept = KEPT["standard"] if kind == "standard" else goldfish_kept
        for i, (epoch, val) in enumerate(zip((4, 8, 12), losses)):
            row = {c: float("nan") for c in RESULT_COLUMNS}
            goldfish = kind == "goldfish"
            rate = epoch / 12 * (0.5 if goldfish else 1.0)
            row.update(model="m", params=1_000_000, loss_kind=kind, k=4 if goldfish else None,
                       h=13 if goldfish else None, strategy="hash" if goldfish else None, lr=1e-3, seed=seed,
                       epoch=epoch, step=epoch * 10, val_loss=val, kept_fraction=kept[i], train_loss=val,
                       exact_match=rate, token_acc=rate, rougeL=rate, exposure=10 * rate, canary_extraction=rate,
                       mia_auc_loss=0.5 + rate / 2, mia_auc_zlib=0.5 + rate / 2, extract_p8=rate,
                       extract_tail50=rate, control_exact_match=0.0, control_token_acc=0.1, control_rougeL=0.1,
                       control_exposure=1.0, control_canary_extraction=0.0, control_extract_p8=0.0,
                       control_extract_tail50=0.0)
            rows.append(row)
    return rows


def test_gaps_at_last_epoch_at_convergence_and_at_equal_supervised_tokens():
    gaps = {g["seed"]: g for g in run_gaps(_rows())}
    assert set(gaps) == {0, 1} and gaps[0]["loss"] == "goldfish k=4 h=13"
    # last epoch: 2.75 / 2.4 and 2.8 / 2.55
    assert gaps[0]["last"] == pytest.approx(100 * (2.75 / 2.4 - 1)) and gaps[0]["last"] == pytest.approx(14.583333, 1e-6)
    assert gaps[1]["last"] == pytest.approx(100 * (2.8 / 2.55 - 1))
    # lowest: seed 0 Goldfish 2.7 at 8 against the standard's 2.4 at 12 (still falling); seed 1 2.8 at 12 vs 2.5 at 8
    assert gaps[0]["converged"] == pytest.approx(12.5) and gaps[1]["converged"] == pytest.approx(12.0)
    assert (gaps[0]["lowest_epochs"], gaps[0]["still_falling"]) == ((8, 12), (False, True))
    assert (gaps[1]["lowest_epochs"], gaps[1]["still_falling"]) == ((12, 8), (True, False))
    # equal tokens: 12 x 0.75 / 1.0 = epoch 9, a quarter of the way from 8 to 12:
    # seed 0: 2.6 - 0.2 / 4 = 2.55; seed 1: 2.5 + 0.05 / 4 = 2.5125
    assert gaps[0]["epoch_eq"] == pytest.approx(9.0)
    assert gaps[0]["equal_tokens"] == pytest.approx(100 * (2.75 / 2.55 - 1))
    assert gaps[1]["equal_tokens"] == pytest.approx(100 * (2.8 / 2.5125 - 1))

    table = loss_gap_table(_rows())
    assert "| m | goldfish k=4 h=13 | 0 | 12 | +14.58% | +12.50% | 8 / 12 still falling | +7.84% | 9.00 |" in table
    assert "| m | goldfish k=4 h=13 | 1 | 12 | +9.80% | +12.00% | 12 still falling / 8 | +11.44% | 9.00 |" in table
    last = (100 * (2.75 / 2.4 - 1) + 100 * (2.8 / 2.55 - 1)) / 2  # 12.19
    assert (f"| m | goldfish k=4 h=13 | mean [min, max] of 2 | 12 | +{last:.2f}% [+9.80%, +14.58%] | "
            "+12.25% [+12.00%, +12.50%] | still falling: goldfish 1, standard 1 of 2 |") in table


def test_equal_tokens_before_the_first_evaluation_is_not_extrapolated():
    gaps = run_gaps(_rows(goldfish_kept=(0.3, 0.3, 0.3)))  # 12 x 0.3 = epoch 3.6 < 4
    assert all(g["equal_tokens"] is None and g["epoch_eq"] == pytest.approx(3.6) for g in gaps)
    assert all(not math.isnan(g["last"]) for g in gaps)
    table = loss_gap_table(_rows(goldfish_kept=(0.3, 0.3, 0.3)))
    assert "| n/a | 3.60 (not evaluated) |" in table and "| n/a | 3.60 |" in table  # seed rows, then the mean
    assert loss_gap_table([r for r in _rows() if r["loss_kind"] == "standard"]) == ""


def _documents() -> list[dict]:
    out = []
    for kind, tag in (("standard", "standard"), ("goldfish", "goldfish-k4-h13")):
        for seed in (0, 1):
            hit = [1.0, 0.0, 1.0] if kind == "standard" else [0.0, 0.0, 1.0]
            out.append({"model": "m", "params": 1_000_000, "loss_kind": kind, "loss": tag, "seed": seed, "epoch": 12,
                        "targets": {"exact_match": hit, "token_acc": hit, "rougeL": hit, "loss": [0.1, 0.5, 0.2],
                                    "zlib_ratio": [0.1, 0.5, 0.2], "extract_p8": hit, "extract_tail50": hit},
                        "controls": {"exact_match": [0.0, 0.0], "token_acc": [0.1, 0.2], "rougeL": [0.1, 0.2],
                                     "loss": [0.4, 0.9], "zlib_ratio": [0.4, 0.9], "extract_p8": [0.0, 0.0],
                                     "extract_tail50": [0.0, 0.0]},
                        "exposure": [8.0], "control_exposure": [1.0], "canary_extraction": [1.0],
                        "control_canary_extraction": [0.0]})
    return out


def test_write_report_writes_a_plot_per_measure_and_the_gap_table(tmp_path, monkeypatch):
    # the AUC intervals are checked in test_statistics; 100 draws instead of 2000 keep this test fast
    monkeypatch.setattr(intervals, "auc_interval", lambda pairs: auc_interval(pairs, samples=100))
    # two model sizes (the second a copy of the first, four times larger): a line per loss against size
    rows, documents = _rows(), _documents()
    write_report(tmp_path, rows + [dict(r, model="n", params=4_000_000) for r in rows],
                 documents + [dict(d, model="n", params=4_000_000) for d in documents])
    measures = ("exact_match", "token_acc", "rougeL", "exposure", "canary_extraction", "mia_auc_loss", "mia_auc_zlib",
                "extract_tail50")
    for name in [f"{m}_vs_{x}.png" for m in measures for x in ("size", "exposures")] + ["measures_vs_size.png"]:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    summary = (tmp_path / "summary.md").read_text()
    for model in "mn":
        assert f"| {model} | goldfish k=4 h=13 | 0 | 12 | +14.58% | +12.50% | 8 / 12 still falling | +7.84% | 9.00 |" \
            in summary
    assert "extract_tail50_vs_exposures.png" in summary.splitlines()[-1]
    assert summary.index("At equal supervised tokens") < summary.index("Every seed pooled")  # after the split table
