"""The wheel that `pip install .` builds holds every module of the source tree."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.commands import ROOT

PACKAGES = ("core", "params", "pipelines")


def source_modules() -> set[str]:
    """Every .py file under the three top-level packages, as the wheel names it."""
    return {str(path.relative_to(ROOT)) for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the tracked files, as a fresh clone would build it, so the build
    # leaves nothing in the working tree.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    if tracked.returncode:
        pytest.skip("not a git checkout: cannot tell which files a clone would hold")
    source = tmp_path_factory.mktemp("source")
    for name in tracked.stdout.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (wheel,) = out.glob("lmkit-*.whl")
    return wheel


def test_every_module_is_in_the_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(module for module in source_modules() if module not in names)
    assert not missing, f"modules missing from {wheel.name}: {missing}"
    assert "core/optim/__init__.py" in names
