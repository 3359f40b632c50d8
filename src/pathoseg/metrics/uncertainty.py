"""How unsure a model is of an image: the app sorts its queue by it and the study selects by it."""

from __future__ import annotations

import numpy as np

BAND_ROWS = 256  # rows at a time in the bounded-memory mean (a float64 band of a 10k px wide map: 20 MB)


def binary_entropy(probs: np.ndarray) -> np.ndarray:
    """Binary entropy (bits, float64) of each gland probability."""
    p = np.clip(probs.astype(np.float64), 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def mean_entropy(probs: np.ndarray) -> float:
    """Mean binary entropy (bits) of a gland probability map."""
    return float(np.mean(binary_entropy(probs)))


def mean_entropy_banded(probs: np.ndarray) -> float:
    """:func:`mean_entropy` a band of rows at a time, so that a large map costs a band of
    float64, not eight bytes a pixel (the sum runs in another order: the last digits may
    differ). A uint8 map is probability x 255, as the app stores it."""
    total = 0.0
    for top in range(0, probs.shape[0], BAND_ROWS):
        band = probs[top:top + BAND_ROWS]
        total += float(binary_entropy(band.astype(np.float32) / 255 if band.dtype == np.uint8 else band).sum())
    return total / max(1, probs.size)
