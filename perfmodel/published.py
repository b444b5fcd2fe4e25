"""Published, measured training throughput that perfmodel is held to: one row per run.

Each row pins a published figure with its source, the model, GPU count, layout, batch and
sequence, and whether its FLOPs count activation recomputation. Figures are compared as
tokens per second per GPU, which no FLOP convention changes: a TFLOP/s figure is turned
into tokens/s with the formula its source used. `compare` predicts the same run from the
shipped profile (perfmodel/machines/*.yaml) and returns the error, with the row's role there:
"fit" where the profile's `fitted_to` says the row set some of its levels (agreement by
construction), "check" otherwise (a prediction). perfmodel.refit re-sets a machine's levels
without one source's rows and predicts those (leave one source out).

tests/perfmodel/test_published*.py hold each row within TOLERANCE;
`python -m benchmarks.perfmodel_published` prints the table and writes it as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from axon.spec.layout import Layout
from axon.spec.shapes import ModelShape, preset
from axon.spec.training import TrainingSetup
from perfmodel.machine import load_machine
from perfmodel.predict import predict

TOLERANCE = 0.15  # issue 15: within 15% of each published figure

MEGATRON_2021 = ("Narayanan et al., Efficient Large-Scale Language Model Training on GPU Clusters Using "
                 "Megatron-LM, SC21, Table 1 (Selene, DGX A100, mixed precision)", "https://arxiv.org/abs/2104.04473")
TORCHTITAN_A100 = ("TorchTitan docs/performance.md, Llama 3 on 64 A100 80GB, FSDP2 (torchtitan commit 0413364)",
                   "https://github.com/pytorch/torchtitan/blob/041336434916bdc0f88c1f89fda176fd3c2092e4/docs/performance.md")
TORCHTITAN_H100 = ("TorchTitan docs/performance.md, Llama 3.1 8B on H100 (Grand Teton, 96GB HBM2e, 500 W), "
                   "bf16 FSDP without torch.compile (torchtitan commit eaea6f6)",
                   "https://github.com/pytorch/torchtitan/blob/eaea6f6a2fa940f03a10906be1df3489cf30af85/docs/performance.md")
SWISSAI_8B = ("swiss-ai PR #33, swiss-ai/Megatron-LM \"Improved performance of the 8B model\", Alps/Clariden GH200, "
              "Megatron-LM with Transformer Engine, bf16; scripts submit-llama3-8b.sh at abccdf52 (baseline) and e50c6ba0 (this PR)",
              "https://github.com/swiss-ai/Megatron-LM/pull/33")
SWISSAI_3B = ("swiss-ai PR #10, swiss-ai/Megatron-LM \"Adding Llama3.2-3B config\", Alps/Clariden GH200, Megatron-LM "
              "with Transformer Engine, bf16; script submit-Llama3.2-3B.sh at 109b7d1e",
              "https://github.com/swiss-ai/Megatron-LM/pull/10")
FRONTIER_TORCHTITAN = ("eminorhan/frontier-torchtitan README at commit d4ffe60 (2025-02-22), a TorchTitan fork on OLCF "
                       "Frontier (MI250X), PyTorch-ROCm nightly 2.7.0.dev20250221+rocm6.3, eager; benchmark config "
                       "train_configs/llama3_8b_n8_benchmark.toml and script train_8B_n8_benchmark.sh at that commit",
                       "https://github.com/eminorhan/frontier-torchtitan/blob/d4ffe602a3e3ee346da3b1799954ba4cd00c0d3d/README.md")


def gpt(layers: int, hidden: int, heads: int, ffn: int) -> ModelShape:
    """A GPT of Megatron's Table 1 as perfmodel's Llama-style shape with the same matmul FLOPs:
    a SwiGLU MLP with ffn = 8h/3 has the 8h^2 weights of a GELU MLP with 4h; full multi-head
    attention (kv heads = heads), vocabulary 51,200, sequence 2,048."""
    return ModelShape(layers=layers, hidden=hidden, heads=heads, kv_heads=heads, ffn=ffn, vocab=51200, seq_len=2048)


def megatron_tokens_per_gpu(tflops_per_gpu: float, layers: int, hidden: int, seq: int = 2048, vocab: int = 51200) -> float:
    """Tokens/s per GPU from a Megatron-LM 2021 TFLOP/s figure. Its FLOPs per token are
    96 l h^2 (1 + s / 6h + V / 16 l h) (the paper's equation 3, divided by B s): they count
    the forward pass four times, i.e. full activation recomputation is included."""
    flops_per_token = 96.0 * layers * hidden ** 2 * (1 + seq / (6 * hidden) + vocab / (16 * layers * hidden))
    return tflops_per_gpu * 1e12 / flops_per_token


def megatron_2025_tokens_per_gpu(tflops_per_gpu: float, shape: ModelShape, seq: int) -> float:
    """Tokens/s per GPU from the TFLOP/s/GPU that Megatron-LM logs (`--log-throughput`;
    `num_floating_point_operations` in megatron/training/training.py, swiss-ai fork at 109b7d1e and
    e50c6ba0, the same function at both): per token 12 l h^2 ((1 + g/a + s/h) + 1.5 ffn/h + V / 2lh)
    for SwiGLU with g query groups of a heads -- three passes (forward, dX, dW) of every matmul
    including the LM head (not the embedding), the s x s scores without a causal discount, and no
    recomputation. It equals perfmodel's 6 N + 12 l h s (axon.spec.flops)."""
    l, h = shape.layers, shape.hidden
    attention = (1 + shape.kv_heads / shape.heads + seq / h) * (shape.heads * shape.head_dim / h)
    flops_per_token = 12.0 * l * h * h * (attention + 1.5 * shape.ffn / h + shape.vocab / (2 * l * h))
    return tflops_per_gpu * 1e12 / flops_per_token


LLAMA32_3B = ModelShape(layers=28, hidden=3072, heads=24, kv_heads=8, ffn=8192, vocab=128256, seq_len=8192,
                        rope_scaling_factor=32.0)


@dataclass(frozen=True)
class Published:
    source: str
    url: str
    key: str  # how a profile's fitted_to names this row
    figure: str  # the figure as published
    machine: str  # the shipped profile it is compared with
    model_name: str
    model: ModelShape
    layout: Layout
    global_batch: int  # sequences
    seq_len: int
    recompute: str  # what the run did, as perfmodel prices it
    flops_count_recompute: str  # whether the source's FLOP figure includes recomputation
    tokens_per_gpu: float  # the published figure as tokens/s per GPU
    micro_batch: int = 0
    note: str = ""
    grad_reduce_dtype: str = "float32"  # the gradients' dtype in the data-parallel reduction


PUBLISHED = [
    Published(*MEGATRON_2021, "megatron21-gpt-1.7b", "1.7B: 24 heads, h 2304, 24 layers, t=1 p=1, 32 GPUs, batch 512: 137 TFLOP/s per GPU (44%)",
              "perlmutter", "GPT 1.7B", gpt(24, 2304, 24, 6144), Layout(data=32), 512, 2048, "block",
              "yes (96 = 4 passes per token)", megatron_tokens_per_gpu(137, 24, 2304),
              note="Selene has 8 A100-80GB per node and 8 HDR NICs (25 GB/s per GPU, as Perlmutter's 4 x 25 GB/s for 4 GPUs)"),
    Published(*MEGATRON_2021, "megatron21-gpt-3.6b", "3.6B: 32 heads, h 3072, 30 layers, t=2 p=1, 64 GPUs, batch 512: 138 TFLOP/s per GPU (44%)",
              "perlmutter", "GPT 3.6B", gpt(30, 3072, 32, 8192), Layout(data=32, row=2), 512, 2048, "block",
              "yes (96 = 4 passes per token)", megatron_tokens_per_gpu(138, 30, 3072),
              note="Megatron's 1-D tensor parallelism of 2 is axon's row=2"),
    Published(*MEGATRON_2021, "megatron21-gpt-7.5b", "7.5B: 32 heads, h 4096, 36 layers, t=4 p=1, 128 GPUs, batch 512: 142 TFLOP/s per GPU (46%)",
              "perlmutter", "GPT 7.5B", gpt(36, 4096, 32, 10920), Layout(data=32, row=4), 512, 2048, "block",
              "yes (96 = 4 passes per token)", megatron_tokens_per_gpu(142, 36, 4096),
              note="ffn 10,920 (8h/3 rounded to a multiple of 4 and 8)"),
    Published(*TORCHTITAN_A100, "torchtitan-a100-llama3-8b-64", "Llama 3 8B, batch 1 per GPU, selective layer AC: 2,904 WPS (56.8% MFU)",
              "perlmutter", "Llama 3 8B", preset("8B"), Layout(depth=64), 64, 8192, "none",
              "no (tokens/s; its MFU uses 6N + 12 l h s)", 2904.0, micro_batch=1,
              note="A100 80GB (the Perlmutter profile's GPU has 40GB; memory is not compared); selective AC priced as none"),
    Published(*TORCHTITAN_H100, "torchtitan-h100-llama31-8b-8", "Table 1: 8 GPUs, FSDP, local batch 2, global 16, selective AC: 5,762 TPS/GPU",
              "dgx-h100", "Llama 3.1 8B", preset("8B"), Layout(depth=8), 16, 8192, "none",
              "no (tokens/s; 33-39% MFU quoted against the 700 W SXM peak)", 5762.0, micro_batch=2,
              note="500 W HBM2e H100 (slower than a 700 W DGX H100 SXM5); selective AC priced as none"),
    Published(*TORCHTITAN_H100, "torchtitan-h100-llama31-8b-128", "Table 3: 128 GPUs, FSDP, local batch 2, global 256, selective AC: 5,605 TPS/GPU",
              "dgx-h100", "Llama 3.1 8B", preset("8B"), Layout(depth=128), 256, 8192, "none",
              "no (tokens/s)", 5605.0, micro_batch=2,
              note="FSDP over 16 nodes; 400 Gb/s per GPU as DGX H100"),
    Published(*SWISSAI_8B, "swissai-pr33-8b-tp1", "64 nodes, MBS 1, SEQLEN 8192, TP 1 (GBS 512): ~8290 Tokens/Sec/GPU",
              "alps", "Llama 3.1 8B", preset("8B"), Layout(data=256), 512, 8192, "none",
              "no (tokens/s; Megatron's logged TFLOP/s count 3 passes, no recomputation)", 8290.0, micro_batch=1,
              grad_reduce_dtype="bfloat16",
              note="distributed optimizer (ZeRO-1, --main-grads-dtype bf16) priced as data=256 with bf16 gradient "
                   "all-reduce (same bytes); memory is not compared (perfmodel's data axis keeps full optimizer state)"),
    Published(*SWISSAI_8B, "swissai-pr33-8b-tp2", "64 nodes, baseline MBS 4, SEQLEN 4096, TP 2 (GBS 1024): ~8000 Tokens/Sec/GPU",
              "alps", "Llama 3.1 8B", preset("8B"), Layout(data=128, row=2), 1024, 4096, "none",
              "no (tokens/s)", 8000.0, micro_batch=4, grad_reduce_dtype="bfloat16",
              note="Megatron TP 2 is axon row=2 (TP 2 within a node, sequence parallelism off); distributed "
                   "optimizer as data-parallel bf16 all-reduce, memory not compared"),
    Published(*SWISSAI_3B, "swissai-pr10-3b-1node", "1 node, micro_batch_size 1 (GBS 256, seq 8192, TP 1): ~505 TFLOPS/Sec/GPU",
              "alps", "Llama 3.2 3B", LLAMA32_3B, Layout(data=4), 256, 8192, "none",
              "no (Megatron's num_floating_point_operations: 3 passes, no recomputation)",
              megatron_2025_tokens_per_gpu(505, LLAMA32_3B, 8192), micro_batch=1, grad_reduce_dtype="bfloat16",
              note="the script at 109b7d1e ties the embedding (the PR text says untied; FLOPs are the same); "
                   "distributed optimizer as data-parallel bf16 all-reduce, memory not compared"),
    Published(*SWISSAI_3B, "swissai-pr10-3b-8nodes", "8 nodes, micro_batch_size 2 (GBS 256 assumed, seq 8192, TP 1): ~493 TFLOPS/Sec/GPU",
              "alps", "Llama 3.2 3B", LLAMA32_3B, Layout(data=32), 256, 8192, "none",
              "no (Megatron's num_floating_point_operations: 3 passes, no recomputation)",
              megatron_2025_tokens_per_gpu(493, LLAMA32_3B, 8192), micro_batch=2, grad_reduce_dtype="bfloat16",
              note="the PR gives nodes and MBS only; GBS 256 and seq 8192 are the script's (109b7d1e); "
                   "distributed optimizer as data-parallel bf16 all-reduce, memory not compared"),
    Published(*FRONTIER_TORCHTITAN, "frontier-torchtitan-8b-64", "8 nodes = 64 GCDs, FSDP2 only (dp_shard -1), local batch 1, seq 8192, selective "
              "(op) AC, layernorm, no torch.compile: wps ~1333, mfu ~40%",
              "frontier", "Llama 3 8B LN", preset("8B"), Layout(depth=64), 64, 8192, "none",
              "no (tokens/s per GCD; its ~40% MFU is 6N + 12 l h s per token over 191.5 TFLOP/s, no recomputation)",
              1333.0, micro_batch=1,
              note="Llama 3 8B shape with norm_type layernorm (nn.LayerNorm without bias, one native kernel, where "
                   "perfmodel prices RMSNorm; both memory-bound, no matmul FLOPs); the fork calls fully_shard with "
                   "reshard_after_forward=False (no re-gather for backward; perfmodel prices FSDP's re-gather, "
                   "hidden here, and keeps less memory); selective op AC (every second mm recomputed) priced as none, "
                   "as the TorchTitan A100/H100 rows; memory is not compared; the same set-up read ~645 (2024-09-25), "
                   "~1250 (2024-10-01), ~2050 (2024-11-05), ~1300 (2024-11-07..2025-02-22 09369ff) as the software "
                   "changed: ~1333 is the figure at d4ffe60 (unchanged through 50284af, 2025-04-20)"),
]


def role(row: Published, machine) -> tuple[str, tuple[str, ...]]:
    """("fit", the levels this row set) when the profile's fitted_to names it, else ("check", ())."""
    sets = tuple(level for level, keys in machine.fitted_to.items() if row.key in keys)
    return ("fit" if sets else "check"), sets


def setup_of(row: Published) -> TrainingSetup:
    return TrainingSetup(global_batch=row.global_batch, seq_len=row.seq_len, micro_batch=row.micro_batch,
                         recompute=row.recompute, grad_reduce_dtype=row.grad_reduce_dtype)


def predicted_tokens_per_gpu(row: Published, machine) -> tuple[float, object]:
    prediction = predict(row.model, row.layout, machine, setup_of(row))
    return row.global_batch * row.seq_len / prediction.step_time_s / row.layout.world_size, prediction


def compare(row: Published, machine=None) -> dict:
    """The row against the shipped profile (or `machine`), with its role there: a row the
    profile's levels were fitted to agrees by construction; a check row is a prediction."""
    machine = machine or load_machine(row.machine)
    predicted, prediction = predicted_tokens_per_gpu(row, machine)
    row_role, sets = role(row, machine)
    out = {k: v for k, v in asdict(row).items() if k not in ("model", "layout")}
    out.update(model=asdict(row.model), layout=row.layout.sizes(), gpus=row.layout.world_size, role=row_role,
               sets=list(sets), predicted_tokens_per_gpu=predicted, error=predicted / row.tokens_per_gpu - 1,
               predicted_mfu=prediction.mfu, breakdown=prediction.breakdown)
    return out
