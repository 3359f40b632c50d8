"""Training targets made from instance label maps, on the fly after augmentation.

The augmentation moves image and instance ids together (nearest-neighbour for the ids), and
the targets of every output channel are derived from the augmented ids here, so a contour
always sits where the augmented gland's rim is.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

IGNORE = 65535  # label value excluded from the loss (unlabelled or unsure pixels); ids stay below it
CONTOUR_WIDTH = 2  # px at working scale on each side of a gland's rim (see docs/metrics.md)
BOUNDARY_SIGMA = 5.0  # native px: the reach of the boundary loss weight (U-Net's σ), scaled with the image


def gland_pixels(labels: np.ndarray) -> np.ndarray:
    """Boolean gland mask of a label map (IGNORE is not gland)."""
    return (labels > 0) & (labels != IGNORE)


def contour_target(labels: np.ndarray, width: int = CONTOUR_WIDTH) -> np.ndarray:
    """1 on a band of ``width`` px each side of every gland's boundary, including the line
    between two touching glands of different ids."""
    ids = np.where(labels == IGNORE, 0, labels)
    edge = find_boundaries(ids, connectivity=1, mode="thick")
    if width > 1:
        edge = ndi.binary_dilation(edge, iterations=width - 1)
    return edge.astype(np.float32)


def boundary_weights(labels: np.ndarray, weight: float, sigma: float) -> np.ndarray:
    """Per-pixel loss weights (H, W) float32: 1 + ``weight`` * exp(-d² / 2 ``sigma``²), d the
    distance to the nearest gland outline (touching glands' shared line included), 0 where
    unlabelled. ``weight`` 0: 1 on every labelled pixel."""
    valid = labels != IGNORE
    if weight == 0:
        return valid.astype(np.float32)
    edge = find_boundaries(np.where(valid, labels, 0), connectivity=1, mode="thick")
    if not edge.any():  # no outline in the crop: nothing to weigh up
        return valid.astype(np.float32)
    d = ndi.distance_transform_edt(~edge)
    return np.where(valid, 1 + weight * np.exp(-(d * d) / (2 * sigma * sigma)), 0).astype(np.float32)


def head_targets(labels: np.ndarray, channels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Targets (C, H, W) float32 for a head's channels and the valid-pixel mask (H, W) bool."""
    maps = []
    for channel in channels:
        if channel == "gland":
            maps.append(gland_pixels(labels).astype(np.float32))
        elif channel == "contour":
            maps.append(contour_target(labels))
        else:
            raise ValueError(f"no target for output channel {channel!r}")
    return np.stack(maps), labels != IGNORE
