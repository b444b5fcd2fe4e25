"""The ways to compute one GEMM C[M, N] = A[M, K] @ B[K, N], and what each costs in extra memory.

An operand's layout is how it lies in memory: "N" when it is row-major as written (A as
[M, K], B as [K, N]), "T" when it is stored transposed (A as a [K, M] block, B as [N, K])
and used through a transposed view. BLAS libraries pick a different kernel for each
combination, and on some machines one is much slower than another (AxoNN measured a TN
GEMM ~8x slower than the same product as NN on MI250X). The candidates:

  "NN", "NT", "TN", "TT"  the product with A and B in those layouts; an operand held in the
                          other layout is first copied into this one (a transposed copy)
  "transposed"            C = (B^T A^T)^T: the library computes C^T from the operands as held,
                          then C^T is copied back to row-major C (what the caller expects)

Every candidate returns a row-major contiguous C and differs from torch.mm(A, B) only by
the summation order its kernel uses.
"""

from __future__ import annotations

import functools

import torch

LAYOUT_MODES = ("NN", "NT", "TN", "TT")
CANDIDATES = (*LAYOUT_MODES, "transposed")


def layout_of(t: torch.Tensor) -> str | None:
    """"N" for a row-major matrix, "T" for a transposed view of one, None for any other strides."""
    if t.is_contiguous():
        return "N"
    if t.t().is_contiguous():
        return "T"
    return None


def held_mode(a: torch.Tensor, b: torch.Tensor) -> str | None:
    """The GEMM mode of the operands as they lie (e.g. "NT" for x @ weight.t()), or None."""
    la, lb = layout_of(a), layout_of(b)
    return None if la is None or lb is None else la + lb


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """`t` with the same values, lying in `layout` (a copy when it lies in the other one)."""
    if layout_of(t) == layout:
        return t
    return t.contiguous() if layout == "N" else t.t().contiguous().t()


def run_candidate(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A @ B computed the way candidate `name` computes it; row-major contiguous."""
    if name == "transposed":
        return torch.mm(b.t(), a.t()).t().contiguous()
    return torch.mm(in_layout(a, name[0]), in_layout(b, name[1]))


def extra_bytes(name: str, a: torch.Tensor, b: torch.Tensor) -> int:
    """Bytes a candidate allocates beyond the output itself: its operand copies, or C^T for
    "transposed" (freed when the call returns, so this is a transient peak)."""
    if name == "transposed":
        return a.shape[0] * b.shape[1] * a.element_size()
    copied = 0
    if layout_of(a) != name[0]:
        copied += a.numel() * a.element_size()
    if layout_of(b) != name[1]:
        copied += b.numel() * b.element_size()
    return copied


def mm_fp32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A @ B as fp32 for low-precision operands: the products summed in fp32 and never rounded
    to the operands' dtype on the way out (a bf16 run's weight gradients stay fp32).

    Where the device has an fp32-output GEMM for these operands (torch.mm's out_dtype, on
    CUDA) it runs at low-precision speed; elsewhere the operands are widened first, which is
    exact (a bf16 x bf16 product fits fp32) and costs one copy of each."""
    if a.dtype == torch.float32:
        return a @ b
    if _has_fp32_output_mm(a.device.type, a.dtype):
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()


def fp32_output_gemm_missing(device, dtype: torch.dtype) -> str | None:
    """Why mm_fp32_out runs an fp32 GEMM on this GPU (a start-up warning), or None when it
    runs at low-precision speed or the device is not a GPU (a CPU widens either way)."""
    device = torch.device(device)
    if device.type != "cuda" or dtype == torch.float32 or _has_fp32_output_mm(device.type, dtype):
        return None
    return (f"torch {torch.__version__} has no {str(dtype).removeprefix('torch.')} GEMM with fp32 output on this GPU "
            "(torch.mm out_dtype: torch >= 2.8 on CUDA), so each weight gradient runs as an fp32 GEMM, "
            "several times slower; install a newer torch for GPU runs")


@functools.lru_cache(maxsize=None)
def _has_fp32_output_mm(device_type: str, dtype: torch.dtype) -> bool:
    """Whether torch.mm takes out_dtype=float32 for these operands here (probed once)."""
    probe = torch.ones(2, 2, dtype=dtype, device=device_type)
    try:
        return torch.mm(probe, probe, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError):  # no such overload, or no kernel for this device (NotImplementedError is a RuntimeError)
        return False
