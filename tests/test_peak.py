"""The peak FLOP/s a run's MFU is measured against."""

import pytest
import torch

from pipelines.training import peak
from pipelines.training.peak import GPU_PEAKS, measured_matmul_flops, peak_flops


@pytest.mark.parametrize("name, model", [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA A100-SXM4-40GB", "A100"), ("NVIDIA L4", "L4")])
def test_a_known_gpu_gets_its_datasheet_peak_for_the_matmul_dtype(monkeypatch, name, model):
    monkeypatch.setattr(peak.torch.cuda, "get_device_name", lambda device=None: name)
    cuda = torch.device("cuda")
    assert peak_flops(cuda, torch.bfloat16) == (GPU_PEAKS[model][0], f"{model} datasheet")
    assert peak_flops(cuda, torch.float32) == (GPU_PEAKS[model][1], f"{model} datasheet")


def test_the_cpu_peak_is_a_measured_matmul_rate():
    flops, source = peak_flops(torch.device("cpu"))
    assert source == "measured matmul"
    assert 1e8 < flops < 1e14  # any CPU this runs on: more than 0.1 GFLOP/s, less than 100 TFLOP/s
    assert measured_matmul_flops(torch.device("cpu"), size=64, repeats=1) > 0
