"""The shipped GPU profiles reproduce published, measured training throughput within 15%:
the rows that set their levels (fit) and the rows that did not (check), told apart by name.

The published figures are pinned in perfmodel/published.py with their sources;
the Megatron-LM conversion from TFLOP/s to tokens/s is checked here by hand."""

from __future__ import annotations

import pytest

from perfmodel.machine import load_machine
from perfmodel.published import PUBLISHED, TOLERANCE, compare, megatron_tokens_per_gpu, role
from perfmodel.published_at_scale import AT_SCALE
from perfmodel.scale_losses import slowest_gpu_factor
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


def test_axonn_figures_become_tokens_by_its_own_count():
    # Megatron-AxoNN's get_flops: 96 B s l h^2 (1 + s/6h + V/16lh). GPT-40B (38 x 9216, s 2048, V 51200):
    # 96 * 38 * 9216^2 = 309,841,625,088; x (1 + 2048/55296 + 51200/5603328) = 1.0461745 -> 3.24148e11 per token.
    # 620.1 Petaflop/s on 4,096 GPUs = 151.39 TFLOP/s per GPU -> 467.0 tokens/s per GPU.
    rows = {row.key: row for row in AT_SCALE}
    perlmutter = rows["axonn-perlmutter-gpt40b-4096"]
    assert perlmutter.tokens_per_gpu == pytest.approx(620.1e15 / 4096 / 3.24148e11, rel=1e-4)
    assert perlmutter.tokens_per_gpu == pytest.approx(467.0, abs=0.1)
    # The GPT MLP of 4h as SwiGLU of 8h/3 rounded up to 256: 24,576 for h 9216, 43,776 for h 16384.
    assert perlmutter.model.ffn == 24576 and rows["axonn-frontier-gpt320b-32768"].model.ffn == 43776
    assert rows["axonn-alps-gpt60b-6144"].model.layers == 56  # model-table.md's GPT-60B: 56 x 9216 x 72


def test_the_straggler_term_by_hand():
    # V = 8% measured over 27,648 GPUs: z(n) = sqrt(2 ln n); z(64) = 2.8841, z(27648) = 4.5227, z(32768) = 4.5601.
    assert slowest_gpu_factor(64, 0.08, 27648) == pytest.approx(1 + 0.04 * 2.8841 / 4.5227, rel=1e-4)
    assert slowest_gpu_factor(32768, 0.08, 27648) == pytest.approx(1.04033, rel=1e-5)
    assert slowest_gpu_factor(1, 0.08, 27648) == 1.0 and slowest_gpu_factor(4096, 0.0, 0) == 1.0
