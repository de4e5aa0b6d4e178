"""The tokenizer report on the shared corpora: trained once into its cache, then reused."""

import pytest

from conftest import shared_path
from pipelines.experiments.tokenizer_report import documents, report


def test_documents_split_on_end_of_text_or_blank_lines():
    assert documents("a story\n<|endoftext|>\nanother\n<|endoftext|>\n") == ["a story", "another"]
    assert documents("web page one\n\npage two\n\n") == ["web page one", "page two"]


@pytest.mark.slow
def test_report_on_the_shared_samples(tmp_path):
    data = shared_path("data/tinystories_train.txt").parent
    shared_path("data/owt_sample.txt")
    text = report(data, tmp_path / "cache", samples=3, seed=0)
    training, compression, _ = text.split("\n## ")[1:]

    def rows(section: str) -> dict[str, list[str]]:
        cells = [line.strip("| ").split(" | ") for line in section.splitlines() if line.startswith("| ")]
        return {row[0]: row[1:] for row in cells}

    assert rows(training)["TinyStories 10K"][1] == "10,000" and rows(training)["OpenWebText 32K"][1] == "32,000"
    # Compression: each tokenizer does best on its own corpus, and every ratio beats raw bytes.
    ratios = {name: [float(cell) for cell in cells] for name, cells in rows(compression).items() if name != "tokenizer"}
    assert ratios["TinyStories"][0] > ratios["TinyStories"][1] > 1
    assert ratios["OpenWebText"][1] > ratios["OpenWebText"][0] > 1
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2
    report(data, tmp_path / "cache", samples=3, seed=0)  # the second call reuses the cache
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == cached
