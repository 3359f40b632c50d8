from __future__ import annotations

import numpy as np

from pathoseg.viz.overlay import BOTH, GT_ONLY, PRED_ONLY, overlap_colors, overlap_image


def test_overlap_colours_pixel_by_pixel():
    gt = np.array([[1, 1, 0, 0]])
    pred = np.array([[0, 2, 3, 0]])
    colors = overlap_colors(gt, pred)
    assert colors[0, 0].tolist() == list(GT_ONLY) == [255, 0, 0]
    assert colors[0, 1].tolist() == list(BOTH) == [255, 255, 0]
    assert colors[0, 2].tolist() == list(PRED_ONLY) == [0, 255, 0]
    assert colors[0, 3].tolist() == [0, 0, 0]


def test_overlap_blends_over_the_image_and_leaves_the_rest():
    image = np.full((1, 4, 3), 100, np.uint8)
    gt = np.array([[1, 1, 0, 0]])
    pred = np.array([[0, 1, 1, 0]])
    out = overlap_image(image, gt, pred, alpha=1.0)
    assert out[0, :3].tolist() == [[255, 0, 0], [255, 255, 0], [0, 255, 0]]
    assert out[0, 3].tolist() == [100, 100, 100]
    half = overlap_image(image, gt, pred, alpha=0.5)
    assert half[0, 0].tolist() == [178, 50, 50]
