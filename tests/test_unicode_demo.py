"""The unicode demo's claims hold: the byte-wise decoder fails on non-ASCII, the sequences are invalid."""

import pytest

from pipelines.experiments.unicode_demo import INVALID, decode_utf8_bytes_to_str_wrong, main


def test_wrong_decoder_only_works_on_ascii():
    assert decode_utf8_bytes_to_str_wrong("hello".encode("utf-8")) == "hello"
    with pytest.raises(UnicodeDecodeError):
        decode_utf8_bytes_to_str_wrong("café".encode("utf-8"))


@pytest.mark.parametrize("sequence", INVALID)
def test_invalid_sequences_do_not_decode(sequence):
    assert len(sequence) == 2
    with pytest.raises(UnicodeDecodeError):
        sequence.decode("utf-8")


def test_demo_prints_every_answer(capsys):
    main([])
    out = capsys.readouterr().out
    for heading in ("## unicode1", "## unicode2 (a)", "## unicode2 (b)", "## unicode2 (c)"):
        assert heading in out
