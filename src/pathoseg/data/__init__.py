"""Data: GlaS, generic image+mask folders, synthetic glands, splits and augmentation."""

from __future__ import annotations

from pathlib import Path

from pathoseg.data.folder import load_folder
from pathoseg.data.glas import find_release_root, load_glas
from pathoseg.data.samples import Sample, SampleSet
from pathoseg.errors import PathosegError


def load_dataset(path: str | Path) -> SampleSet:
    """GlaS (either layout) when the folder is GlaS, else an images/ + masks/ folder."""
    path = Path(path)
    if not path.exists():
        raise PathosegError("no such dataset folder", path)
    if not path.is_dir():
        raise PathosegError("dataset must be a folder", path)
    if find_release_root(path) is not None:
        return load_glas(path)
    return load_folder(path)


__all__ = ["Sample", "SampleSet", "load_dataset", "load_folder", "load_glas"]
