"""bench/commits.py: two sides built from their own files, timed in turn, and one line for a
revision that does not exist."""

import re

import pytest

from bench.commits import ROOT, main


def test_an_unknown_revision_is_one_line(capsys):
    with pytest.raises(SystemExit) as ended:
        main(["--base", "no-such-revision"])
    assert ended.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --base/--head: no commit 'no-such-revision' in {ROOT}"


@pytest.mark.slow  # a benchmark script's check: two workers build and warm up the cpu-small steps
def test_head_against_itself_prints_every_eager_variant(capsys):
    main(["--base", "HEAD", "--head", "HEAD", "--no_compile", "--repeats", "1"])
    out = capsys.readouterr().out
    for variant in ("peer: nn.Module + torch.optim.AdamW, eager", "pure step, eager (autograd.grad)", "pure step, eager (torch.func)"):
        row = re.search(rf"^{re.escape(variant)}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", out, re.M)
        assert row, variant
        base_ms, head_ms, speed = map(float, row.groups())
        assert speed == pytest.approx(base_ms / head_ms, abs=0.006)
    assert "compiled" not in out and "only at" not in out
