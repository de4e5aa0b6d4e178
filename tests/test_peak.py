"""The peak FLOP/s a run's MFU is measured against."""

import pytest
import torch

from pipelines.training.hardware import peak
from pipelines.training.hardware.peak import datasheet_peak, measured_matmul_flops, peak_flops


@pytest.mark.parametrize(
    "name, bf16",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("NVIDIA L40S", None),  # not an L4
    ],
)
def test_gpu_names_find_their_datasheet_peak(name, bf16):
    assert datasheet_peak(name, torch.bfloat16) == bf16
    if bf16 is not None:
        assert datasheet_peak(name, torch.float32) < bf16  # TF32 runs at half the bf16 rate or less


def test_a_known_gpu_reports_its_datasheet_peak_for_the_matmul_dtype(monkeypatch):
    monkeypatch.setattr(peak.torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-40GB")
    assert peak_flops(torch.device("cuda"), torch.bfloat16) == (312e12, "NVIDIA A100-SXM4-40GB, datasheet")


def test_the_cpu_peak_is_a_measured_matmul_rate():
    flops, source = peak_flops(torch.device("cpu"))
    assert source == "measured 1024^3 matmul"
    assert 1e8 < flops < 1e14  # any CPU this runs on: more than 0.1 GFLOP/s, less than 100 TFLOP/s
    assert measured_matmul_flops("cpu", size=64, repeats=1) > 0
