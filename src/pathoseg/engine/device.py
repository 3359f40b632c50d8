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
