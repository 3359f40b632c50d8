"""What a dataset is: named image/mask pairs, with the GlaS part and grade where known."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathoseg.data.images import read_image, read_mask
from pathoseg.errors import PathosegError


@dataclass(frozen=True)
class Sample:
    name: str
    image_path: Path
    mask_path: Path | None = None
    part: str = ""  # GlaS part: train / testA / testB; "" for other data
    grade: str = ""  # benign / malignant where known

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Image (H, W, 3) uint8 and instance labels (H, W) int32, checked to agree in size."""
        image = read_image(self.image_path)
        if self.mask_path is None:
            return image, None
        mask = read_mask(self.mask_path)
        if mask.shape != image.shape[:2]:
            raise PathosegError(
                f"mask size {mask.shape[1]}x{mask.shape[0]} does not match image size "
                f"{image.shape[1]}x{image.shape[0]}",
                self.mask_path,
            )
        return image, mask


@dataclass
class SampleSet:
    """An ordered, name-indexed collection of samples from one source."""

    samples: list[Sample]
    root: Path
    kind: str  # "glas-png", "glas-bmp", "folder", "synthetic"
    mpp: float | None = None  # µm/px at native resolution; None = unknown (see pathoseg.data.resolution)
    _by_name: dict[str, Sample] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.samples:
            raise PathosegError("no images found", self.root)
        self._by_name = {s.name: s for s in self.samples}
        if len(self._by_name) != len(self.samples):
            dup = [n for n, c in Counter(s.name for s in self.samples).items() if c > 1]
            raise PathosegError(f"duplicate image names: {', '.join(dup[:5])}", self.root)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, name: str) -> Sample:
        try:
            return self._by_name[name]
        except KeyError:
            raise PathosegError(f"no image named {name!r} in this dataset", self.root) from None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samples]

    def subset(self, names: list[str]) -> list[Sample]:
        return [self[n] for n in names]

    @property
    def has_parts(self) -> bool:
        return any(s.part for s in self.samples)
