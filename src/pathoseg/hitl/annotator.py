"""A simulated pathologist: fixes the error regions of a prediction, largest first, and logs
what it cost. Replaceable by real logged effort (same :class:`Effort` record)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class CostModel:
    """Seconds for one correction, after the usual annotation-tool effort models.

    Each fixed region costs a fixed overhead (find it, start a stroke) plus tracing the
    boundary it needs; every reviewed image costs a look. Drawing a mask from scratch is
    the same model applied to an empty prediction (every gland is a missed region whose
    whole outline is traced).
    """

    seconds_per_image: float = 5.0
    seconds_per_region: float = 3.0
    seconds_per_boundary_pixel: float = 0.05  # ~20 px/s tracing at native resolution

    def seconds(self, regions: int, boundary_px: float, images: int = 1) -> float:
        return images * self.seconds_per_image + regions * self.seconds_per_region + \
            boundary_px * self.seconds_per_boundary_pixel


@dataclass
class Effort:
    images: int = 0
    regions: int = 0
    pixels: int = 0  # pixels changed, at native resolution
    boundary_px: float = 0.0  # length traced, native pixels
    seconds: float = 0.0

    def __add__(self, other: Effort) -> Effort:
        return Effort(self.images + other.images, self.regions + other.regions, self.pixels + other.pixels,
                      self.boundary_px + other.boundary_px, self.seconds + other.seconds)


@dataclass(frozen=True)
class ErrorRegion:
    mask: np.ndarray  # boolean, image-sized
    size: int
    traced: int  # boundary pixels the annotator has to draw to fix it
    false_positive: bool


def error_regions(pred: np.ndarray, gt: np.ndarray) -> list[ErrorRegion]:
    """Connected components of false-positive and false-negative pixels, largest first.

    Only the edge that becomes the new gland boundary is traced: for a missed region, its
    pixels touching true background; for a false region, its pixels touching the correct
    part of the prediction. A sliver along a gland's rim thus costs one boundary, not its
    whole perimeter, and an isolated false blob costs one click, not an outline.
    """
    near_tn = ndi.binary_dilation(~gt & ~pred)
    near_tp = ndi.binary_dilation(gt & pred)
    regions = []
    for wrong, is_fp, edge in ((pred & ~gt, True, near_tp), (gt & ~pred, False, near_tn)):
        labels, n = ndi.label(wrong, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        traced = np.bincount(labels[edge].ravel(), minlength=n + 1)
        for i in range(1, n + 1):
            regions.append(ErrorRegion(labels == i, int(sizes[i]), int(traced[i]), is_fp))
    regions.sort(key=lambda r: -r.size)
    return regions


@dataclass(frozen=True)
class SimulatedAnnotator:
    """Fixes error regions largest first until ``fix_fraction`` of the error pixels are fixed.

    Regions under ``min_region`` pixels (working scale) are not worth a stroke and stay.
    ``scale`` converts effort to native-resolution pixels (masks at half scale: scale=0.5).
    """

    fix_fraction: float = 1.0
    min_region: int = 0
    cost: CostModel = CostModel()
    scale: float = 1.0

    def correct(self, pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, Effort]:
        pred, gt = pred.astype(bool), gt.astype(bool)
        regions = [r for r in error_regions(pred, gt) if r.size >= self.min_region]
        budget = self.fix_fraction * sum(r.size for r in regions)
        out = pred.copy()
        fixed = fixed_px = 0
        boundary = 0.0
        for r in regions:
            if fixed_px >= budget or self.fix_fraction <= 0:
                break
            out[r.mask] = not r.false_positive
            fixed += 1
            fixed_px += r.size
            boundary += r.traced
        return out, self._effort(fixed, fixed_px, boundary)

    def draw_from_scratch(self, gt: np.ndarray) -> Effort:
        """The cost of outlining every gland by hand: corrections of an empty prediction."""
        return self.correct(np.zeros_like(gt, dtype=bool), gt)[1]

    def _effort(self, regions: int, pixels: int, boundary: float) -> Effort:
        native_px = round(pixels / self.scale**2)
        native_boundary = boundary / self.scale
        return Effort(1, regions, native_px, native_boundary, self.cost.seconds(regions, native_boundary))
