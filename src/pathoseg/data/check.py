"""``pathoseg data check``: validate every file of a dataset and summarise it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from pathoseg.data.samples import SampleSet


@dataclass
class DatasetSummary:
    kind: str
    root: str
    n_images: int
    n_glands: int
    parts: dict[str, int] = field(default_factory=dict)
    grades: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> count
    glands_per_image: dict[str, float] = field(default_factory=dict)
    unlabelled: int = 0

    def lines(self) -> list[str]:
        g = self.glands_per_image
        out = [f"{self.root} ({self.kind}): {self.n_images} images, {self.n_glands} glands"]
        if self.parts:
            out.append("parts:  " + ", ".join(f"{k} {v}" for k, v in self.parts.items()))
        if self.grades:
            out.append("grades: " + ", ".join(f"{k} {v}" for k, v in self.grades.items()))
        common = sorted(self.sizes.items(), key=lambda kv: -kv[1])[:6]
        out.append("sizes:  " + ", ".join(f"{k} x{v}" for k, v in common))
        if g:
            out.append(f"glands per image: min {g['min']:.0f}, median {g['median']:.0f}, "
                       f"mean {g['mean']:.1f}, max {g['max']:.0f}")
        if self.unlabelled:
            out.append(f"images without a mask: {self.unlabelled}")
        return out


def check_dataset(data: SampleSet, progress: bool = True) -> DatasetSummary:
    """Read every image and mask (raising a one-line error on the first bad file)."""
    sizes: Counter[str] = Counter()
    counts = []
    unlabelled = 0
    for s in tqdm(list(data), desc="checking", unit="img", disable=not progress, leave=False):
        image, labels = s.load()
        sizes[f"{image.shape[1]}x{image.shape[0]}"] += 1
        if labels is None:
            unlabelled += 1
        else:
            counts.append(len(np.unique(labels[labels > 0])))
    c = np.array(counts) if counts else np.zeros(1)
    return DatasetSummary(
        kind=data.kind, root=str(data.root), n_images=len(data), n_glands=int(c.sum()),
        parts=dict(Counter(s.part for s in data if s.part)),
        grades=dict(Counter(s.grade for s in data if s.grade)),
        sizes=dict(sizes),
        glands_per_image={"min": float(c.min()), "median": float(np.median(c)), "mean": float(c.mean()),
                          "max": float(c.max())},
        unlabelled=unlabelled,
    )
