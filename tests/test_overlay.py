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


def test_each_predicted_gland_is_outlined_in_its_own_colour():
    from pathoseg.viz.overlay import instance_overlap_image

    image = np.full((40, 60, 3), 200, np.uint8)
    pred = np.zeros((40, 60), np.int32)
    pred[5:35, 5:29] = 1
    pred[5:35, 29:55] = 2  # touching the first gland
    out = instance_overlap_image(image, pred > 0, pred)
    rim1, rim2 = tuple(out[5, 15]), tuple(out[5, 40])
    inside = tuple(out[20, 15])
    assert rim1 != rim2  # two glands, two outline colours
    assert inside == tuple(overlap_image(image, pred > 0, pred)[20, 15])  # interior keeps the overlap colour
    assert tuple(out[29, 28]) != inside and tuple(out[29, 29]) != inside  # the shared line is drawn
