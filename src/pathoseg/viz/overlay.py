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


def instance_colors(n: int) -> np.ndarray:
    """``n`` distinct, saturated RGB colours, the same for the same n. Hues stay between cyan
    and magenta (golden-ratio steps), away from the overlap picture's red, green and yellow."""
    from matplotlib.colors import hsv_to_rgb

    hues = 0.48 + 0.44 * ((np.arange(n) * 0.618034) % 1.0)
    hsv = np.stack([hues, np.full(n, 1.0), np.full(n, 0.9)], axis=1)
    return (hsv_to_rgb(hsv) * 255).astype(np.uint8)


def outline_instances(picture: np.ndarray, labels: np.ndarray, width: int = 3) -> np.ndarray:
    """Each gland of ``labels`` outlined in its own colour on top of ``picture``."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    out = picture.copy()
    edge = find_boundaries(labels, mode="inner")
    if width > 1:
        edge = ndi.binary_dilation(edge, iterations=width - 1) & (labels > 0)
    if edge.any():
        colors = instance_colors(int(labels.max()) + 1)
        out[edge] = colors[labels[edge]]
    return out


def instance_overlap_image(image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The red/green/yellow overlap picture with every predicted gland outlined in its own
    colour, so merged and split glands show at a glance."""
    return outline_instances(overlap_image(image, gt, pred), pred)


def mask_overlay(image: np.ndarray, pred: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Prediction alone over the image (green), each gland outlined in its own colour, for
    unlabelled images."""
    out = image.astype(np.float32).copy()
    fg = pred > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * np.array(PRED_ONLY)
    return outline_instances(np.clip(out + 0.5, 0, 255).astype(np.uint8), pred)
