"""The simulated pathologist: gland-level operations on synthetic instance label maps."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from pathoseg.data.targets import IGNORE
from pathoseg.hitl.annotator import CostModel, Effort, SimulatedAnnotator

SHAPE = (120, 200)
CENTRES = [(40, 40, 18), (40, 80, 18), (85, 150, 22), (90, 60, 15)]  # row, col, radius; glands 1 and 2 touch-close


def glands(*specs, shape=SHAPE) -> np.ndarray:
    out = np.zeros(shape, np.uint16)
    for k, (r, c, rad) in enumerate(specs, start=1):
        rr, cc = disk((r, c), rad, shape=shape)
        out[rr, cc] = k
    return out


GT = glands(*CENTRES)
COST = CostModel()


def same_instances(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as instance maps: same background and a one-to-one correspondence of ids."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = {(int(x), int(y)) for x, y in zip(a[a > 0], b[b > 0], strict=True)}
    return len(pairs) == len(np.unique(a[a > 0])) == len(np.unique(b[b > 0]))


def look(n_pred: int) -> float:
    return COST.look_image + COST.verify_gland * n_pred


def test_perfect_prediction_costs_only_the_look_and_accept():
    fixed, effort = SimulatedAnnotator().correct(GT, GT)
    assert same_instances(fixed, GT) and fixed.dtype == np.uint16
    assert effort.operations == {"accept": 4, "accept_all": 1}
    assert effort.seconds == pytest.approx(look(4) + COST.click)
    assert effort.errors == effort.fixed == effort.pixels == 0 and effort.boundary_px == 0


def test_merged_pair_is_split_with_one_line():
    pred = GT.copy()
    pred[pred == 2] = 1
    pred[36:45, 55:66] = 1  # a bridge of tissue joins glands 1 and 2
    fixed, effort = SimulatedAnnotator().correct(pred, GT)
    assert same_instances(fixed, GT)
    assert effort.operations == {"split": 1, "accept": 2, "accept_all": 1}
    assert effort.errors == effort.fixed == 1
    cut = effort.boundary_px  # the line through the 9-px-high bridge
    assert 5 <= cut <= 15
    assert effort.op_seconds["split"] == pytest.approx(COST.click + cut * COST.trace_px)


def test_three_glands_under_one_need_two_cuts():
    gt = glands((40, 40, 15), (40, 75, 15), (40, 110, 15))
    pred = (gt > 0).astype(np.uint16)
    pred[35:46, 40:111] = 1
    fixed, effort = SimulatedAnnotator().correct(pred, gt)
    assert same_instances(fixed, gt)
    assert effort.operations["split"] == 2 and "delete" not in effort.operations


def test_two_pieces_of_one_gland_are_merged():
    pred = GT.copy()
    cols = np.arange(SHAPE[1])[None, :]
    pred[(GT == 3) & (cols >= 150)] = 7  # gland 3 predicted as two halves
    fixed, effort = SimulatedAnnotator().correct(pred, GT)
    assert same_instances(fixed, GT)
    assert effort.operations == {"merge": 1, "accept": 3, "accept_all": 1}
    assert effort.op_seconds["merge"] == pytest.approx(COST.click)


def test_missed_gland_is_added_by_click_when_the_probability_map_recovers_it_else_traced():
    pred = GT.copy()
    pred[GT == 3] = 0
    annot = SimulatedAnnotator()
    traced, polygon = annot.correct(pred, GT)
    assert same_instances(traced, GT)
    assert polygon.operations["add_polygon"] == 1 and "add_click" not in polygon.operations
    outline = polygon.boundary_px
    assert 2 * np.pi * 22 * 0.6 < outline < 2 * np.pi * 22 * 1.2  # about the disc's perimeter
    assert polygon.op_seconds["add_polygon"] == pytest.approx(COST.click + outline * COST.trace_px)
    # the model saw the gland, only under 0.5: the low-threshold map recovers it in one click
    probs = np.where(GT > 0, 0.9, 0.05).astype(np.float32)
    probs[GT == 3] = 0.4
    clicked, click = annot.correct(pred, GT, probs)
    assert same_instances(clicked, GT)
    assert click.operations["add_click"] == 1 and "add_polygon" not in click.operations
    assert click.op_seconds["add_click"] == pytest.approx(COST.click)
    assert click.seconds < polygon.seconds - 5
    # a probability map that spills far beyond the gland does not recover it
    probs[60:120, 110:200] = 0.35
    _, spilled = annot.correct(pred, GT, probs)
    assert spilled.operations.get("add_polygon") == 1


def test_false_gland_is_deleted():
    pred = GT.copy()
    rr, cc = disk((100, 110), 10, shape=SHAPE)
    pred[rr, cc] = 9
    fixed, effort = SimulatedAnnotator().correct(pred, GT)
    assert same_instances(fixed, GT)
    assert effort.operations == {"delete": 1, "accept": 4, "accept_all": 1}
    assert effort.pixels == len(rr)
    assert effort.seconds == pytest.approx(look(5) + 2 * COST.click)


def bulged(depth: int) -> np.ndarray:
    """GT with gland 3 given an outward bump ``depth`` px deep on its right side."""
    pred = GT.copy()
    pred[78:93, 172:172 + depth] = 3
    return pred


def test_boundary_within_tolerance_is_accepted_as_predicted():
    annot = SimulatedAnnotator()  # 5 µm at 0.62 µm/px: 8.06 px at native scale
    pred = bulged(6)
    fixed, effort = annot.correct(pred, GT)
    assert "redraw_boundary" not in effort.operations and effort.operations["accept"] == 4
    assert np.array_equal(fixed, pred)  # the outline stays as drawn by the model
    assert effort.errors == 0


def test_boundary_beyond_tolerance_is_redrawn():
    annot = SimulatedAnnotator()
    fixed, effort = annot.correct(bulged(14), GT)
    assert effort.operations == {"redraw_boundary": 1, "accept": 3, "accept_all": 1}
    assert same_instances(fixed, GT)
    stroke = effort.boundary_px  # the true outline under the 15-px-wide bump
    assert 10 <= stroke <= 25
    assert effort.op_seconds["redraw_boundary"] == pytest.approx(COST.click + stroke * COST.trace_px)


def test_tolerance_is_in_micrometres():
    # the same 6-px bump: within 5 µm at native scale, beyond it on a half-scale map
    # (where a pixel is 1.24 µm and 5 µm are 4 px) ...
    assert "redraw_boundary" not in SimulatedAnnotator(scale=1.0).correct(bulged(6), GT)[1].operations
    assert "redraw_boundary" in SimulatedAnnotator(scale=0.5).correct(bulged(6), GT)[1].operations
    # ... and within a looser tolerance
    assert "redraw_boundary" not in SimulatedAnnotator(scale=0.5, tolerance_um=8).correct(bulged(6), GT)[1].operations
    assert SimulatedAnnotator(scale=0.5).tolerance_px == pytest.approx(5 / 0.62 / 2)


def test_redraw_versus_replace_takes_the_cheaper():
    # a gland predicted far too large: redrawing its whole outline costs more than
    # deleting it and adding the true gland with one click on the probability map
    pred = GT.copy()
    rr, cc = disk((85, 150), 34, shape=SHAPE)
    pred[rr, cc] = 3
    pred[(GT > 0) & (GT != 3)] = GT[(GT > 0) & (GT != 3)]
    probs = np.where(GT > 0, 0.9, 0.05).astype(np.float32)
    fixed, effort = SimulatedAnnotator().correct(pred, GT, probs)
    assert same_instances(fixed, GT)
    assert effort.operations.get("delete") == 1 and effort.operations.get("add_click") == 1
    assert "redraw_boundary" not in effort.operations
    _, traced = SimulatedAnnotator().correct(pred, GT)  # without the map: redraw beats a polygon
    assert traced.operations.get("redraw_boundary") == 1 and "delete" not in traced.operations


def test_drawing_from_scratch_costs_more_than_correcting_a_near_perfect_prediction():
    annot = SimulatedAnnotator(scale=0.5)
    scratch = annot.draw_from_scratch(GT)
    assert scratch.operations == {"add_polygon": 4}
    assert scratch.errors == scratch.fixed == 4 and scratch.images == 1
    # at half scale the drawn outlines are native lengths: twice the working-scale pixels
    assert scratch.boundary_px == pytest.approx(2 * SimulatedAnnotator().draw_from_scratch(GT).boundary_px)
    assert scratch.pixels == 4 * int((GT > 0).sum())
    near = GT.copy()
    near[GT == 2] = 0  # one gland missed
    _, correcting = annot.correct(near, GT)
    assert correcting.seconds < scratch.seconds
    assert annot.correct(GT, GT)[1].seconds < correcting.seconds


def test_fix_fraction_fixes_the_largest_errors_first():
    pred = GT.copy()
    pred[GT == 3] = 0  # missed: the largest gland (r=22)
    pred[GT == 4] = 0  # missed: the smallest (r=15)
    rr, cc = disk((100, 110), 8, shape=SHAPE)
    pred[rr, cc] = 9  # a small false gland
    full, all_fixed = SimulatedAnnotator(fix_fraction=1.0).correct(pred, GT)
    assert same_instances(full, GT) and all_fixed.errors == all_fixed.fixed == 3
    some, partial = SimulatedAnnotator(fix_fraction=0.5).correct(pred, GT)
    assert partial.errors == 3 and partial.fixed == 2  # ceil(0.5 * 3)
    assert (some[GT == 3] > 0).all() and (some[GT == 4] > 0).all() and (some[rr, cc] > 0).all()
    none, nothing = SimulatedAnnotator(fix_fraction=0.0).correct(pred, GT)
    assert same_instances(none, pred) and nothing.fixed == 0 and nothing.pixels == 0
    assert nothing.seconds == pytest.approx(look(3) + COST.click)
    assert nothing.seconds < partial.seconds < all_fixed.seconds


def test_ignore_pixels_stay_ignored_and_do_not_count():
    gt = GT.copy()
    gt[:, 185:] = IGNORE
    pred = GT.copy()
    pred[5:15, 185:195] = 8  # a blob in the unlabelled strip is neither right nor wrong
    fixed, effort = SimulatedAnnotator().correct(pred, gt)
    assert (fixed[:, 185:] == IGNORE).all()
    assert "delete" not in effort.operations and effort.errors == 0


def test_deterministic_and_independent_of_id_order():
    rng = np.random.default_rng(0)
    pred = bulged(14)
    pred[pred == 2] = 1
    pred[36:45, 55:66] = 1  # 1 and 2 merged
    pred[GT == 4] = 0  # 4 missed
    rr, cc = disk((100, 110), 8, shape=SHAPE)
    pred[rr, cc] = 2  # a false gland
    probs = np.clip(rng.normal(0.5, 0.3, SHAPE), 0, 1).astype(np.float32)
    annot = SimulatedAnnotator(scale=0.5)
    a_map, a = annot.correct(pred, GT, probs)
    b_map, b = annot.correct(pred, GT, probs)
    assert np.array_equal(a_map, b_map) and a == b
    permuted = np.array([0, 3, 1, 2], np.uint16)[pred]  # the same glands under other ids
    c_map, c = annot.correct(permuted, GT, probs)
    assert same_instances(c_map, a_map)
    assert c.operations == a.operations and c.seconds == pytest.approx(a.seconds)


def test_effort_adds_up_and_seconds_are_the_sum_of_operations():
    annot = SimulatedAnnotator()
    pred = GT.copy()
    pred[GT == 3] = 0
    _, one = annot.correct(pred, GT)
    _, two = annot.correct(bulged(14), GT)
    total = one + two
    assert total.images == 2 and total.seconds == pytest.approx(one.seconds + two.seconds)
    assert total.operations["accept"] == one.operations["accept"] + two.operations["accept"]
    assert total.operations["add_polygon"] == 1 and total.operations["redraw_boundary"] == 1
    for e in (one, two, total):
        assert sum(e.op_seconds.values()) == pytest.approx(e.seconds)
    assert Effort() + one == one
