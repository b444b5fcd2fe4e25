"""The shipped GPU profiles reproduce published, measured training throughput within 15%.

The published figures are pinned in perfmodel/published.py with their sources;
the Megatron-LM conversion from TFLOP/s to tokens/s is checked here by hand."""

from __future__ import annotations

import pytest

from perfmodel.published import PUBLISHED, TOLERANCE, compare, megatron_tokens_per_gpu


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


@pytest.mark.parametrize("row", PUBLISHED, ids=lambda r: f"{r.machine}-{r.model_name}-{r.layout.world_size}")
def test_prediction_within_15_percent_of_the_published_figure(row):
    result = compare(row)
    assert abs(result["error"]) <= TOLERANCE, (row.figure, result["predicted_tokens_per_gpu"], row.tokens_per_gpu)
