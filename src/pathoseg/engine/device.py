"""Device choice: cuda, then mps, then cpu, unless the user forces one."""

from __future__ import annotations

import torch

from pathoseg.errors import PathosegError


def choose_device(requested: str | None = None) -> torch.device:
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise PathosegError(f"unknown device {requested!r}; use auto, cpu, cuda or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PathosegError("--device cuda asked for, but no CUDA GPU is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PathosegError("--device mps asked for, but MPS is not available")
    return device


def describe_device(device: torch.device | None = None) -> str:
    """The machine a number was measured on, for results files: the GPU's name, or the CPU's
    architecture and the threads torch uses (2 cores' numbers are not a GPU's)."""
    device = device or choose_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    import platform

    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
