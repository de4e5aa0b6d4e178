"""bench/gpu.py's smoke mode: every eager row of the GPU benchmark and a falling loss, on the CPU
in seconds, so that the script cannot rot between GPU runs; it labels only what it ran."""

import re

import pytest

from bench.gpu import VARIANTS, main


@pytest.mark.slow  # a benchmark script's check, not the toolkit's: seconds that `just test` spares
def test_smoke_prints_every_row_and_a_falling_loss(capsys):
    main(["--smoke"])
    out = capsys.readouterr().out
    for shape in ("baseline", "gpt2-small"):
        for variant in VARIANTS:  # compile is off: no row may claim to be compiled, none claims an MFU
            row = re.search(rf"^{shape}\s+{re.escape(variant)}\s+\d+\s+[\d.]+\s+[\d,]+\s+–", out, re.M)
            assert bool(row) == ("compiled" not in variant), (shape, variant)
    assert "%" not in out
    first, last = map(float, re.search(r"^loss ([\d.]+) -> ([\d.]+)$", out, re.M).groups())
    assert last < 0.5 * first
