"""Data-sheet peaks of the GPUs axon's users train on, by the name the driver reports.

Dense peaks per device (the unit a rank drives), without structured sparsity, TFLOP/s. On
MI250X a device is one of the two GCDs of the package, so its peak is half the package's.
"float32" is the plain FP32 peak (torch keeps TF32 off for matmuls unless told otherwise;
on MI250X the FP32 matrix-core peak, which rocBLAS uses for FP32 GEMMs). Each sheet names its
data sheet; the pages the same figures were read from are cited in the shipped profiles
(perfmodel/machines/dgx-h100.yaml for H100 SXM, alps.yaml for GH200, perlmutter.yaml for A100,
frontier.yaml for the MI250X GCD).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSheet:
    name: str
    match: tuple[str, ...]  # substrings of torch.cuda.get_device_name, all of which must appear
    peak_tflops: dict[str, float]  # dense peak per device by compute dtype
    memory_gb: float  # per device, as sold
    source: str


# Most specific first: "GH200" also contains "H200", and "H100 PCIe" also contains "H100".
GPU_SHEETS = (
    GpuSheet("GH200", ("GH200",), {"bfloat16": 989.4, "float32": 66.9}, 96,
             "NVIDIA GH200 Grace Hopper Superchip data sheet (2023): FP32 67 TFLOPS, BF16 1,979 TFLOPS with "
             "sparsity (989 dense); its GPU is the 132-SM H100 SXM5"),
    GpuSheet("H200", ("H200",), {"bfloat16": 989.4, "float32": 66.9}, 141,
             "NVIDIA H200 Tensor Core GPU data sheet (2024), H200 SXM: FP32 67 TFLOPS, BF16 1,979 TFLOPS "
             "with sparsity (989 dense)"),
    GpuSheet("H100 PCIe", ("H100", "PCIe"), {"bfloat16": 756.0, "float32": 51.2}, 80,
             "NVIDIA H100 Tensor Core GPU data sheet (2023), H100 PCIe: FP32 51 TFLOPS, BF16 1,513 TFLOPS "
             "with sparsity (756 dense)"),
    GpuSheet("H100 SXM", ("H100",), {"bfloat16": 989.4, "float32": 66.9}, 80,
             "NVIDIA H100 Tensor Core GPU data sheet (2023), H100 SXM: FP32 67 TFLOPS, BF16 1,979 TFLOPS "
             "with sparsity (989 dense)"),
    GpuSheet("A100", ("A100",), {"bfloat16": 312.0, "float32": 19.5}, 80,
             "NVIDIA A100 Tensor Core GPU data sheet (2021): FP32 19.5 TFLOPS, BF16 312 TFLOPS dense "
             "(624 with sparsity); the same for the 40 GB and 80 GB SXM and PCIe parts"),
    GpuSheet("MI250X GCD", ("MI250X",), {"bfloat16": 191.5, "float32": 47.9}, 64,
             "AMD Instinct MI250X data sheet (2021): 383 TFLOPS BF16 and 95.7 TFLOPS FP32 matrix per "
             "package of two GCDs; one GCD (one torch device) has half, and half the 128 GB HBM2e"),
)


def gpu_sheet(device_name: str) -> GpuSheet | None:
    """The data sheet of the GPU a driver calls `device_name`, or None for one not listed."""
    for sheet in GPU_SHEETS:
        if all(part in device_name for part in sheet.match):
            return sheet
    return None
