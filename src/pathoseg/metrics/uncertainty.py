"""How unsure a model is of an image: the app sorts its queue by it and the study selects by it."""

from __future__ import annotations

import numpy as np


def mean_entropy(probs: np.ndarray) -> float:
    """Mean binary entropy (bits) of a gland probability map."""
    p = np.clip(probs.astype(np.float64), 1e-6, 1 - 1e-6)
    return float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p))))
