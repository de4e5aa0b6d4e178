"""The device's peak matmul FLOP/s, against which a run reports its model FLOPs utilisation (MFU).

On a known GPU, the vendor's dense figure (no sparsity) for the dtype the matmuls run in; on
anything else, a timed matmul measured when the run starts."""

import re
import time

import torch

# Dense peak FLOP/s by device name: (pattern, bf16 tensor cores, fp32 matmuls as the trainer runs
# them: TF32 tensor cores, which it enables on CUDA). The first pattern that matches wins.
GPU_PEAKS: list[tuple[str, float, float]] = [
    (r"H100.*PCIe", 756e12, 378e12),
    (r"H100|H200|GH200", 989e12, 494e12),
    (r"A100", 312e12, 156e12),
    (r"\bL4\b", 121e12, 60e12),
    (r"RTX 4090", 165e12, 82.6e12),
]


def datasheet_peak(name: str, dtype: torch.dtype) -> float | None:
    """The dense peak of the GPU called `name` for matmuls in `dtype`; None for an unknown one."""
    for pattern, half, single in GPU_PEAKS:
        if re.search(pattern, name):
            return half if dtype in (torch.bfloat16, torch.float16) else single
    return None


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[float, str]:
    """Peak FLOP/s of `device` for matmuls in `dtype`, and where the figure comes from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = datasheet_peak(name, dtype)
        if peak is not None:
            return peak, f"{name}, datasheet"
        return measured_matmul_flops(device, dtype, size=8192), f"{name}, measured 8192^3 matmul"
    return measured_matmul_flops(device, dtype), "measured 1024^3 matmul"


def measured_matmul_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` (size x size) @ (size x size) matmuls: what the device's
    BLAS reaches on a large square product, as close to peak as a program gets."""
    device = torch.device(device)
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms the BLAS up
        _synchronize(device)
        started = time.perf_counter()
        a @ a
        _synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
