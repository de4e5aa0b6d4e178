"""Choosing and setting up the device a run uses."""

import torch


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_for(device: torch.device) -> tuple[str, torch.dtype] | None:
    """bf16 autocast on CUDA (parameters and optimizer state stay float32); none elsewhere."""
    return ("cuda", torch.bfloat16) if device.type == "cuda" else None


def enable_tf32(device: torch.device) -> None:
    """TF32 matmuls on CUDA only: on mps the same setting has given silently wrong results."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
