"""Hand-worked label maps with exact expected values for every metric."""

from __future__ import annotations

import numpy as np
import pytest

from pathoseg.data.images import BinaryMaskWarning, read_mask, write_label_png
from pathoseg.metrics import object_metrics, object_tally, pixel_counts, pixel_summary


def boxes(shape, *spans, ids=None):
    """Label map with one rectangle per (row0, row1, col0, col1)."""
    out = np.zeros(shape, np.int32)
    for k, (r0, r1, c0, c1) in enumerate(spans):
        out[r0:r1, c0:c1] = ids[k] if ids else k + 1
    return out


def metrics(gt, seg):
    return object_metrics([object_tally(gt, seg)])


def test_perfect_match():
    gt = boxes((10, 40), (0, 10, 0, 10), (0, 10, 20, 30))
    assert metrics(gt, gt.copy()) == {"f1": 1.0, "object_dice": 1.0, "object_hausdorff": 0.0}


def test_merge_of_two_glands():
    gt = boxes((10, 40), (0, 10, 0, 10), (0, 10, 20, 30))
    seg = boxes((10, 40), (0, 10, 0, 30))
    m = metrics(gt, seg)
    assert m["f1"] == pytest.approx(2 / 3)  # one hit, one gland missed
    assert m["object_dice"] == pytest.approx(0.5)  # 2*100/(300+100) on both sides
    assert m["object_hausdorff"] == pytest.approx(20.0)


def test_split_of_one_gland():
    gt = boxes((10, 20), (0, 10, 0, 20))
    seg = boxes((10, 20), (0, 10, 0, 12), (0, 10, 12, 20))
    m = metrics(gt, seg)
    assert m["f1"] == pytest.approx(2 / 3)  # 120 px > 50% of 200: hit; the 80 px piece: false positive
    seg_side = 0.6 * (2 * 120 / 320) + 0.4 * (2 * 80 / 280)
    assert m["object_dice"] == pytest.approx(0.5 * (seg_side + 0.75))
    assert m["object_hausdorff"] == pytest.approx(0.5 * ((0.6 * 8 + 0.4 * 12) + 8))


def test_missed_gland():
    gt = boxes((10, 40), (0, 10, 0, 10), (0, 10, 30, 40))
    seg = boxes((10, 40), (0, 10, 0, 10))
    m = metrics(gt, seg)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["object_dice"] == pytest.approx(0.75)
    assert m["object_hausdorff"] == pytest.approx(7.5)  # the missed gland pairs with the nearest: 30 px


def test_false_positive_far_away():
    gt = boxes((10, 40), (0, 10, 0, 10))
    seg = boxes((10, 40), (0, 10, 0, 10), (0, 10, 30, 40))
    m = metrics(gt, seg)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["object_dice"] == pytest.approx(0.75)
    assert m["object_hausdorff"] == pytest.approx(7.5)


def test_no_overlapping_partner_takes_nearest_by_hausdorff():
    gt = boxes((10, 60), (0, 10, 0, 10), (0, 10, 40, 50))
    seg = boxes((10, 60), (0, 10, 0, 10), (0, 10, 25, 35))
    t = object_tally(gt, seg)
    assert (t.tp, t.fp, t.fn) == (1, 1, 1)
    m = object_metrics([t])
    assert m["f1"] == pytest.approx(0.5)
    assert m["object_dice"] == pytest.approx(0.5)
    assert m["object_hausdorff"] == pytest.approx(7.5)  # 15 to the nearer gland, not 25 to the other


def test_empty_segmentation_convention():
    gt = boxes((10, 40), (0, 10, 0, 10))
    seg = np.zeros_like(gt)
    m = metrics(gt, seg)
    assert m["f1"] == 0.0 and m["object_dice"] == 0.0
    assert m["object_hausdorff"] == pytest.approx(np.hypot(10, 40))
    assert metrics(np.zeros_like(gt), np.zeros_like(gt)) == {"f1": 1.0, "object_dice": 1.0, "object_hausdorff": 0.0}


def test_invariant_to_relabelling():
    gt = boxes((30, 60), (0, 10, 0, 10), (15, 30, 20, 45), (0, 8, 50, 60))
    seg = boxes((30, 60), (1, 11, 2, 12), (15, 28, 18, 40))
    relabelled_gt = boxes((30, 60), (0, 10, 0, 10), (15, 30, 20, 45), (0, 8, 50, 60), ids=[17, 3, 250])
    relabelled_seg = boxes((30, 60), (1, 11, 2, 12), (15, 28, 18, 40), ids=[9, 4])
    assert metrics(gt, seg) == pytest.approx(metrics(relabelled_gt, relabelled_seg))


def test_binary_mask_equals_its_labelled_form(tmp_path):
    gt = boxes((30, 60), (0, 10, 0, 10), (15, 30, 20, 45))
    seg = boxes((30, 60), (1, 11, 2, 12), (15, 28, 18, 40))
    write_label_png(tmp_path / "seg.png", (seg > 0).astype(np.uint8) * 255)
    with pytest.warns(BinaryMaskWarning):
        binary = read_mask(tmp_path / "seg.png")
    assert binary.max() == 2
    assert metrics(gt, binary) == pytest.approx(metrics(gt, seg))


def test_pooling_over_a_part_differs_from_per_image_mean():
    big = boxes((40, 40), (0, 30, 0, 30))  # 900 px, perfectly found
    small_gt = boxes((40, 40), (0, 10, 0, 10))  # 100 px, missed
    small_seg = np.zeros_like(small_gt)
    a, b = object_tally(big, big), object_tally(small_gt, small_seg)
    pooled = object_metrics([a, b])
    per_image = np.mean([object_metrics([a])["object_dice"], object_metrics([b])["object_dice"]])
    # seg side: all 900 segmented px are perfect -> 1; gt side: 900 of 1000 px perfect -> 0.9
    assert pooled["object_dice"] == pytest.approx(0.95)
    assert per_image == pytest.approx(0.5)
    assert pooled["f1"] == pytest.approx(2 / 3)


def test_pixel_iou_and_dice():
    gt = boxes((10, 10), (0, 10, 0, 5))
    pred = boxes((10, 10), (0, 10, 3, 8))
    c = pixel_counts(gt, pred)
    assert (c.tp, c.fp, c.fn) == (20, 30, 30)
    assert c.iou == pytest.approx(20 / 80) and c.dice == pytest.approx(40 / 100)
    empty = pixel_counts(np.zeros((4, 4)), np.zeros((4, 4)))
    s = pixel_summary([c, empty])
    assert s["iou_pooled"] == pytest.approx(0.25)
    assert s["iou_mean"] == pytest.approx((0.25 + 1.0) / 2)
