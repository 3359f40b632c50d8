"""Training targets made from instance label maps, on the fly after augmentation.

The augmentation moves image and instance ids together (nearest-neighbour for the ids), and
the targets of every output channel are derived from the augmented ids here, so a contour
or a distance ridge always sits where the augmented gland is.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import skeletonize
from skimage.segmentation import find_boundaries

IGNORE = 65535  # label value excluded from the loss (unlabelled or unsure pixels); ids stay below it
CONTOUR_WIDTH = 2  # px at working scale on each side of a gland's rim (see docs/metrics.md)
SDT_POWER = 1.0  # alpha of SDT: (d_boundary / (d_boundary + d_skeleton)) ** alpha


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


def sdt_target(labels: np.ndarray, power: float = SDT_POWER) -> np.ndarray:
    """Skeleton-aware distance transform per gland: d_B / (d_B + d_S), 1 on the skeleton,
    towards 0 at the boundary, 0 outside glands (SDT, Wang et al., MICCAI 2023)."""
    ids = np.where(labels == IGNORE, 0, labels).astype(np.int32)
    out = np.zeros(ids.shape, np.float32)
    for i, box in enumerate(ndi.find_objects(ids), start=1):
        if box is None:
            continue
        # One pixel of margin so the boundary distance is measured to the background.
        box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in box)
        obj = ids[box] == i
        d_boundary = ndi.distance_transform_edt(obj)
        skeleton = skeletonize(obj)
        if not skeleton.any():
            skeleton = d_boundary == d_boundary.max()
        d_skeleton = ndi.distance_transform_edt(~skeleton)
        value = d_boundary / np.maximum(d_boundary + d_skeleton, 1e-6)
        out[box][obj] = np.power(value[obj], power)
    return out


def head_targets(labels: np.ndarray, channels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Targets (C, H, W) float32 for a head's channels and the valid-pixel mask (H, W) bool."""
    maps = []
    for channel in channels:
        if channel == "gland":
            maps.append(gland_pixels(labels).astype(np.float32))
        elif channel == "contour":
            maps.append(contour_target(labels))
        elif channel == "sdt":
            maps.append(sdt_target(labels))
        else:
            raise ValueError(f"no target for output channel {channel!r}")
    return np.stack(maps), labels != IGNORE
