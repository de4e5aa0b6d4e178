"""Keeping freed memory in the process (glibc), so that a training step's large buffers are not
page-faulted in afresh on every step.

glibc returns large freed blocks to the system (those above M_MMAP_THRESHOLD, and the top of the
heap above M_TRIM_THRESHOLD), so the next step's buffer of the same size is new memory: every page
of it faults on first touch. A stacked group's activations and optimizer temporaries are K times
a model's, above the thresholds: a stacked step of 8 variants at d_model 64 (one thread) measured
0.82 s with glibc's defaults and 0.47 s with these, in a one-off timing (`just bench sweep
--malloc-default` compares the defaults). The cost: the process keeps its peak memory until it
exits. A change to the whole process, so only command-line entry points make it (the trainer's
`pipelines/training/cli.py` and the sweep's `--vmap`), never code a caller imports.
"""

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 1 << 25  # the largest glibc accepts on 64-bit systems (32 MiB)
TRIM_THRESHOLD_KEPT = 1 << 30  # free heap top kept before glibc trims it (1 GiB)


def keep_freed_memory() -> bool:
    """Raise glibc's thresholds so freed memory stays in the process; False where there is no
    glibc (macOS, musl), where nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_KEPT)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX))
