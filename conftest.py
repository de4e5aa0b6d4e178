"""Shared test setup: Hypothesis profiles, where the read-only reference material lives, and one
torch thread per test."""

import os
from pathlib import Path

import pytest
import torch
from beartype import BeartypeConf, beartype
from hypothesis import HealthCheck, settings

# The runtime type checker `just test` installs over core and params through jaxtyping's import
# hook (--jaxtyping-packages=core,params,conftest.typechecker). The PEP 484 numeric tower accepts
# an int where a float is annotated, as Python's typing rules say (the suite passes theta=10000).
typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))

# CI must be repeatable: derandomize makes every property draw the same examples on every run.
settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
settings.load_profile(PROFILE)

# The share of each property's examples this run tries: all of them under `just test-all` (what CI
# runs), a tenth under `just test` (-m "not slow"), which must stay fast: every property still runs.
EXAMPLES_SHARE = 1.0


def pytest_configure(config: pytest.Config) -> None:
    global EXAMPLES_SHARE
    if "not slow" in (config.option.markexpr or ""):
        EXAMPLES_SHARE = 0.1
        settings.register_profile(f"{PROFILE}-quick", settings.get_profile(PROFILE), max_examples=examples(100))
        settings.load_profile(f"{PROFILE}-quick")


def examples(full: int) -> int:
    """How many examples a property that names its number (`@settings(max_examples=examples(300))`)
    tries in this run: `full` under `just test-all`, a share of it (never under 10) otherwise."""
    return min(full, max(10, round(full * EXAMPLES_SHARE)))


# Reference material (fixtures, corpora, tiktoken cache) is never copied into the project: tests
# that need it look for it here and skip, saying why, where it is absent (as on a fresh clone).
SHARED = Path(os.environ.get("LMKIT_SHARED", Path(__file__).parent.parent / "shared")).resolve()


def shared_path(relative: str) -> Path:
    """Path of a file under ../shared (or $LMKIT_SHARED); skips the calling test when it is absent."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{relative} not found under {SHARED} (set LMKIT_SHARED to the shared folder)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared reference folder {SHARED} not found (set LMKIT_SHARED)")
    return SHARED


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs torch on one intra-op thread: the suite's models are tiny, threads gain
    nothing there, and on a loaded machine their spin-waits turn milliseconds into seconds
    (tests/test_params.py: 19 s on two threads, 3 s on one). A test that wants more sets them itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
