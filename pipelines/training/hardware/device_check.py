"""`--device NAME` checked before any work: a device this machine lacks is one line, not a
traceback from deep inside the first tensor moved there."""

import torch

from core.errors import UsageError
from pipelines.training.hardware.device import select_device

KNOWN = "auto, cpu, cuda, cuda:N or mps"


def require_device(name: str) -> torch.device:
    """The device `name` names, when this machine has it; else UsageError naming the flag."""
    if name == "auto":
        return select_device(name)
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name}: not a device name (expected {KNOWN})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} CUDA device(s), numbered from 0")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {name}: MPS (Apple GPU) is not available on this machine")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: not supported here (expected {KNOWN})")
    return device
