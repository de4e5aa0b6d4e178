"""bench/gpu.py's smoke mode: every row of the GPU benchmark and a falling loss, on the CPU in
seconds, so that the script cannot rot between GPU runs."""

import re

from bench.gpu import PEAKS, VARIANTS, main


def test_smoke_prints_every_row_and_a_falling_loss(one_thread, capsys):
    main(["--smoke"])
    out = capsys.readouterr().out
    for shape in ("baseline", "gpt2-small"):
        for variant in VARIANTS:
            assert re.search(rf"^{shape}\s+{re.escape(variant)}\s+\d+\s+[\d.]+\s+[\d,]+\s+[\d.]+%", out, re.M), (shape, variant)
    first, last = map(float, re.search(r"^loss ([\d.]+) -> ([\d.]+)$", out, re.M).groups())
    assert last < 0.5 * first


def test_peak_table_matches_device_names():
    def bf16_peak(name: str) -> float | None:
        return next((bf16 for pattern, bf16, _ in PEAKS if re.search(pattern, name)), None)

    assert bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert bf16_peak("NVIDIA H200") == 989e12
    assert bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert bf16_peak("NVIDIA L4") == 121e12
    assert bf16_peak("NVIDIA L40S") is None
    assert bf16_peak("NVIDIA GeForce RTX 4090") == 165e12
