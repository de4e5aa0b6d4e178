"""Data, tokenizer and checkpoint belong together: the fingerprints already recorded are compared.

Token ids mean something only under the tokenizer that made them. Three records say which one
that was: the sidecar encode_file writes beside each .npy (pipelines/tokenizer/encode.py), the
tokenizer folder a run reads its data with (`--data.tokenizer`, a `tokenizer/` beside .npy data,
or the run's own copy on resume), and the fingerprint each checkpoint stores. Any two that are
known must agree; a mismatch is one error naming both sides, before the run writes anything.
"""

from pathlib import Path

from core.errors import UsageError
from pipelines.tokenizer.encode import read_record
from pipelines.tokenizer.store import load_tokenizer


def check_same_tokenizer(
    train: Path, valid: Path, tokenizer: Path | None, run_tokenizer: Path | None, recorded: str | None
) -> None:
    """UsageError unless the checkpoint's fingerprint `recorded`, the run's tokenizer folder, the
    folder the data is read with and the sidecars of the token files `train` and `valid` name one
    tokenizer (each where known)."""
    known: tuple[str, str] | None = None  # (fingerprint, what recorded it): the latest record met
    if recorded is not None:
        known = (recorded, "the checkpoint's tokenizer")
    if tokenizer is not None and run_tokenizer is not None and tokenizer.resolve() == run_tokenizer.resolve():
        tokenizer = None  # the data is read with the run's own: one record, named as the run's
    for folder, role in ((run_tokenizer, "the run's tokenizer"), (tokenizer, "the data's tokenizer")):
        if folder is not None:
            known = _agree(known, (load_tokenizer(folder).fingerprint(), f"{role} {folder}"))
    for npy in (train, valid):
        record = read_record(npy)
        if record is not None:
            source = record.get("tokenizer") or "a tokenizer given in memory"
            known = _agree(known, (record["tokenizer_sha256"], f"the tokenizer {npy} was encoded with ({source})"))


def _agree(known: tuple[str, str] | None, new: tuple[str, str]) -> tuple[str, str]:
    """`new` when it names the same tokenizer as `known` (it is then the one an error will name:
    checked in order from the checkpoint to the files, the later record is the more concrete)."""
    if known is not None and known[0] != new[0]:
        raise UsageError(
            f"{new[1]} (fingerprint {new[0][:12]}) is not {known[1]} (fingerprint {known[0][:12]}): "
            "token ids from one tokenizer mean other text under another"
        )
    return new
