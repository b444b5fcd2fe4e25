"""The shipped GPU profiles reproduce published, measured training throughput within 15%:
the rows that set their levels (fit) and the rows that did not (check), told apart by name.

The published figures are pinned in perfmodel/published.py with their sources;
the Megatron-LM conversion from TFLOP/s to tokens/s is checked here by hand."""

from __future__ import annotations

import pytest

from perfmodel.machine import load_machine
from perfmodel.published import PUBLISHED, TOLERANCE, compare, megatron_tokens_per_gpu, role
from perfmodel.refit import leave_one_source_out, refit, scaled


def test_megatron_tflops_become_tokens_by_the_papers_formula():
    # GPT 1.7B (24 layers, h 2304, s 2048, V 51200) at 137 TFLOP/s per GPU:
    # 96 * 24 * 2304^2 = 12,230,590,464; x (1 + 2048/13824 + 51200/884736) = 1.2060185 -> 1.47503e10 per token
    assert megatron_tokens_per_gpu(137, 24, 2304) == pytest.approx(137e12 / 1.47503e10, rel=1e-4)
    assert megatron_tokens_per_gpu(137, 24, 2304) == pytest.approx(9288, abs=1)


def test_published_figures_are_the_sources_numbers():
    pinned = {(row.model_name, row.layout.world_size): round(row.tokens_per_gpu) for row in PUBLISHED}
    assert pinned[("Llama 3.1 8B", 8)] == 5762 and pinned[("Llama 3.1 8B", 128)] == 5605  # TorchTitan H100
    assert pinned[("Llama 3 8B", 64)] == 2904  # TorchTitan A100
    assert {"perlmutter", "dgx-h100"} <= {row.machine for row in PUBLISHED}


def _rows(wanted_role: str) -> list:
    return [row for row in PUBLISHED if role(row, load_machine(row.machine))[0] == wanted_role]


def test_every_fitted_row_is_a_published_row_of_its_machine():
    keys = {row.key: row.machine for row in PUBLISHED}
    assert len(keys) == len(PUBLISHED)  # keys are unique
    for name in ("perlmutter", "dgx-h100", "alps", "frontier"):
        for level, rows in load_machine(name).fitted_to.items():
            assert rows and all(keys.get(key) == name for key in rows), (name, level, rows)
    assert [row.key for row in _rows("check")] == ["swissai-pr33-8b-tp1", "swissai-pr33-8b-tp2", "swissai-pr10-3b-8nodes"]


@pytest.mark.parametrize("row", _rows("fit"), ids=lambda r: r.key)
def test_fitted_row_reproduced_within_15_percent(row):
    # These rows set the profile's levels: agreement shows the model can express the run, not that it predicts it.
    result = compare(row)
    assert result["role"] == "fit" and result["sets"]
    assert abs(result["error"]) <= TOLERANCE, (row.figure, result["predicted_tokens_per_gpu"], row.tokens_per_gpu)


@pytest.mark.parametrize("row", _rows("check"), ids=lambda r: r.key)
def test_check_row_predicted_within_15_percent(row):
    # 15% is issue 15's bound, set before these rows were compared; no level was set from them.
    result = compare(row)
    assert result["role"] == "check" and not result["sets"]
    assert abs(result["error"]) <= TOLERANCE, (row.figure, result["predicted_tokens_per_gpu"], row.tokens_per_gpu)


def test_refit_on_its_own_row_gives_back_the_shipped_level():
    # frontier's GEMM level was set from its one row to land it at +0.1%: re-setting it there moves it by ~0.1%.
    machine = load_machine("frontier")
    row = next(r for r in PUBLISHED if r.key == "frontier-torchtitan-8b-64")
    factors = refit(machine, [row], ("gemm_efficiency",))
    assert factors["gemm_efficiency"] == pytest.approx(1.0, abs=0.005)
    assert abs(compare(row, scaled(machine, factors))["error"]) < 0.002


def test_leaving_out_the_only_source_says_the_level_is_not_identified():
    [entry] = leave_one_source_out("dgx-h100")
    assert entry["factors"] is None and "not identified" in entry["note"]
    assert entry["rows_left_out"] == ["torchtitan-h100-llama31-8b-8", "torchtitan-h100-llama31-8b-128"]
