"""The device's peak matmul FLOP/s, against which a run reports its model FLOPs utilisation (MFU).

On a known GPU, the vendor's dense figure (no sparsity) for the dtype the matmuls run in; on
anything else, a timed matmul measured when the run starts."""

import time

import torch

# Dense peak FLOP/s: (bf16 tensor cores, fp32 matmuls as run here: TF32 where the trainer enables it).
GPU_PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),  # SXM; the PCIe card is ~25% lower
    "A100": (312e12, 156e12),
    "L4": (121e12, 60e12),
    "RTX 4090": (165e12, 82.6e12),
}


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[float, str]:
    """Peak FLOP/s of `device` for matmuls in `dtype`, and where the figure comes from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for model, (bf16, fp32) in GPU_PEAKS.items():
            if model in name:
                return (bf16 if dtype in (torch.bfloat16, torch.float16) else fp32), f"{model} datasheet"
    return measured_matmul_flops(device, dtype), "measured matmul"


def measured_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` (size x size) @ (size x size) matmuls: what the device's
    BLAS reaches on a large square product, as close to peak as a program gets."""
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
