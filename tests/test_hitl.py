from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pathoseg.data.cache import IGNORE
from pathoseg.engine.train import TrainConfig
from pathoseg.hitl.annotator import CostModel, SimulatedAnnotator, error_regions
from pathoseg.hitl.selection import mean_entropy, rank
from pathoseg.hitl.strategies import BUILTIN, make_label, parse_strategy
from pathoseg.hitl.study import StudyConfig, StudyRunner
from pathoseg.models import ModelConfig


def square(shape, r0, r1, c0, c1):
    out = np.zeros(shape, bool)
    out[r0:r1, c0:c1] = True
    return out


GT = square((40, 40), 5, 25, 5, 25)
PRED = square((40, 40), 5, 25, 10, 30) | square((40, 40), 32, 36, 32, 36)


def test_full_budget_returns_ground_truth_and_zero_budget_the_prediction():
    fixed, effort = SimulatedAnnotator(fix_fraction=1.0).correct(PRED, GT)
    assert np.array_equal(fixed, GT)
    assert effort.regions == 3 and effort.pixels == int((PRED ^ GT).sum())
    same, none = SimulatedAnnotator(fix_fraction=0.0).correct(PRED, GT)
    assert np.array_equal(same, PRED) and none.regions == 0 and none.pixels == 0


def test_largest_region_first_and_min_region():
    regions = error_regions(PRED, GT)
    assert [r.size for r in regions] == [100, 100, 16]
    _, effort = SimulatedAnnotator(fix_fraction=0.4).correct(PRED, GT)
    assert effort.regions == 1 and effort.pixels == 100
    _, effort = SimulatedAnnotator(fix_fraction=1.0, min_region=20).correct(PRED, GT)
    assert effort.regions == 2  # the 16-px speck is not worth a stroke


def test_effort_accounting():
    cost = CostModel(seconds_per_image=5, seconds_per_region=3, seconds_per_boundary_pixel=0.5)
    annot = SimulatedAnnotator(cost=cost)
    scratch = annot.draw_from_scratch(GT)
    outline = 4 * 20 - 4  # the 20x20 gland's boundary pixels
    assert scratch.regions == 1 and scratch.pixels == 400 and scratch.boundary_px == outline
    assert scratch.seconds == pytest.approx(5 + 3 + 0.5 * outline)
    # at half scale, every pixel stands for four native pixels and boundaries for two
    half = SimulatedAnnotator(cost=cost, scale=0.5).draw_from_scratch(GT)
    assert half.pixels == 1600 and half.boundary_px == pytest.approx(2 * outline)
    # a perfect prediction costs only the look at the image
    assert annot.correct(GT, GT)[1].seconds == 5
    # PRED is shifted 5 px right and adds a far 4x4 blob: the missed 5x20 strip on the left
    # needs its outer edge (20 + 2x4 px touching background), the extra strip on the right
    # the 20 px where it meets the kept gland, and the isolated blob no tracing at all
    fix = annot.correct(PRED, GT)[1]
    assert fix.regions == 3
    assert fix.boundary_px == (20 + 8) + 20 + 0
    assert fix.seconds < scratch.seconds + 2 * 3 + 0.5 * 30


def test_labels_of_each_strategy():
    gt = GT.astype(np.uint8)
    probs = np.where(PRED, 0.95, 0.02).astype(np.float32)
    probs[0, 0] = 0.6  # an unsure pixel
    annot = SimulatedAnnotator()
    oracle, cost = make_label(BUILTIN["oracle"], True, None, gt, annot, False)
    assert np.array_equal(oracle, gt) and cost.regions == 1
    auto, cost = make_label(BUILTIN["auto"], False, probs, gt, annot, False)
    assert np.array_equal(auto > 0, probs > 0.5) and cost.seconds == 0
    confident, _ = make_label(BUILTIN["auto"], False, probs, gt, annot, True)
    assert confident[0, 0] == IGNORE and (confident != IGNORE).sum() == confident.size - 1
    hitl, cost = make_label(BUILTIN["hitl"], True, probs, gt, annot, False)
    assert np.array_equal(hitl > 0, gt > 0) and cost.regions == 4
    assert parse_strategy("mix:0.3:0.5").review_fraction == 0.3
    assert parse_strategy("hitl", 0.5, 0.8).fix_fraction == 0.8


def test_uncertainty_ranking():
    sure, unsure = np.full((4, 4), 0.99), np.full((4, 4), 0.5)
    assert mean_entropy(unsure) == pytest.approx(1.0) and mean_entropy(sure) < 0.1
    assert rank(["a", "b"], "uncertainty", np.random.default_rng(0), {"a": 0.1, "b": 0.9}) == ["b", "a"]


@pytest.mark.slow
def test_resume_after_interrupted_round_gives_the_same_record(synth_dir, tmp_path):
    train = TrainConfig(model=ModelConfig("lite0"), batch_size=4, crop=64, scale=1.0, progress=False)
    cfg = StudyConfig(strategies=[BUILTIN["hitl"], BUILTIN["auto"]], rounds=2, train=train, initial_fraction=0.3,
                      initial_steps=4, round_steps=3, test_limit=2, device="cpu")
    full = StudyRunner(synth_dir, cfg, tmp_path / "a").run()
    # interrupt: copy the finished study, then drop the last round as if killed before it ended
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    last = tmp_path / "b" / "seed0" / "auto" / "round2"
    (last / "record.json").unlink()
    (last / "model.pt").unlink()
    resumed = StudyRunner(synth_dir, cfg, tmp_path / "b").run()

    def strip(records):
        return [{k: v for k, v in r.items() if k != "train_s"} for r in records]

    assert json.dumps(strip(full), sort_keys=True) == json.dumps(strip(resumed), sort_keys=True)
    assert len(full) == 1 + 2 * 2
    assert all(r["effort"]["seconds"] == 0 for r in full if r["strategy"] == "auto")
    assert all(r["effort"]["seconds"] > 0 for r in full if r["strategy"] == "hitl")
    assert {r["round"] for r in full} == {0, 1, 2}
    # by the last round every training image was labelled exactly once
    delivered = [n for r in full if r["strategy"] in ("initial", "hitl") for n in r["selected"]]
    assert len(delivered) == len(set(delivered)) == 12 - 2
