"""Pixel-level IoU (Jaccard) and Dice, per image and over a set of images."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PixelCounts:
    tp: int
    fp: int
    fn: int

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def iou(self) -> float:
        """Jaccard index; 1 when both masks are empty (nothing to find, nothing found)."""
        denom = self.tp + self.fp + self.fn
        return self.tp / denom if denom else 1.0

    @property
    def dice(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 1.0


def pixel_counts(gt: np.ndarray, pred: np.ndarray) -> PixelCounts:
    """Counts for gland-vs-background; any non-zero label is gland."""
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: ground truth {gt.shape}, prediction {pred.shape}")
    g, p = gt > 0, pred > 0
    tp = int(np.count_nonzero(g & p))
    return PixelCounts(tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(g)) - tp)


def pixel_summary(counts: Iterable[PixelCounts]) -> dict[str, float]:
    """``pooled``: all pixels of all images together; ``mean``: the mean of per-image scores."""
    counts = list(counts)
    if not counts:
        raise ValueError("no images to summarise")
    total = sum(counts[1:], counts[0])
    return {
        "iou_pooled": total.iou,
        "iou_mean": float(np.mean([c.iou for c in counts])),
        "dice_pooled": total.dice,
        "dice_mean": float(np.mean([c.dice for c in counts])),
    }
