"""Overlap pictures: ground truth red, prediction green, overlap yellow (as in the original study)."""

from __future__ import annotations

import numpy as np

GT_ONLY = (255, 0, 0)
PRED_ONLY = (0, 255, 0)
BOTH = (255, 255, 0)


def overlap_colors(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB uint8: red where only ground truth, green where only prediction, yellow where both."""
    g, p = gt > 0, pred > 0
    out = np.zeros((*g.shape, 3), np.uint8)
    out[g & ~p] = GT_ONLY
    out[p & ~g] = PRED_ONLY
    out[g & p] = BOTH
    return out


def overlap_image(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The colours blended over the H&E image; pixels that are neither stay as they were."""
    colors = overlap_colors(gt, pred)
    painted = (gt > 0) | (pred > 0)
    out = image.astype(np.float32).copy()
    out[painted] = (1 - alpha) * out[painted] + alpha * colors[painted]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def mask_overlay(image: np.ndarray, pred: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Prediction alone over the image (green), with gland outlines, for unlabelled images."""
    from skimage.segmentation import find_boundaries

    out = image.astype(np.float32).copy()
    fg = pred > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * np.array(PRED_ONLY)
    out[find_boundaries(pred, mode="inner")] = (0, 90, 0)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
