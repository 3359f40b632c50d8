from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from skimage.draw import disk

from pathoseg.data.cache import IGNORE
from pathoseg.engine.train import TrainConfig
from pathoseg.hitl.annotator import SimulatedAnnotator
from pathoseg.hitl.selection import mean_entropy, rank
from pathoseg.hitl.strategies import BUILTIN, make_label, parse_strategy, predicted_glands
from pathoseg.hitl.study import StudyConfig, StudyRunner
from pathoseg.models import ModelConfig


def square(shape, r0, r1, c0, c1):
    out = np.zeros(shape, bool)
    out[r0:r1, c0:c1] = True
    return out


def discs(shape, *specs) -> np.ndarray:
    out = np.zeros(shape, np.uint16)
    for k, (r, c, rad) in enumerate(specs, start=1):
        rr, cc = disk((r, c), rad, shape=shape)
        out[rr, cc] = k
    return out


# two glands; the model merges them through a bridge and misses neither
GT = discs((80, 120), (40, 30, 16), (40, 66, 16))
PRED = (GT > 0) | square((80, 120), 34, 46, 40, 58)


def test_labels_of_each_strategy():
    probs = np.where(PRED, 0.95, 0.02).astype(np.float32)
    probs[0, 0] = 0.6  # an unsure pixel
    annot = SimulatedAnnotator()
    oracle, cost = make_label(BUILTIN["oracle"], True, None, GT, annot, False)
    assert np.array_equal(oracle, GT) and cost.operations == {"add_polygon": 2}
    # the model's own glands, through the instance decoder: one merged gland
    auto, cost = make_label(BUILTIN["auto"], False, probs, GT, annot, False)
    assert auto.dtype == np.uint16 and np.array_equal(auto > 0, PRED) and auto.max() == 1 and cost.seconds == 0
    confident, _ = make_label(BUILTIN["auto"], False, probs, GT, annot, True)
    assert confident[0, 0] == IGNORE and (confident != IGNORE).sum() == confident.size - 1
    # the pathologist cuts the merged gland in two: the label is the true instance map
    hitl, cost = make_label(BUILTIN["hitl"], True, probs, GT, annot, False)
    assert hitl.dtype == np.uint16 and np.array_equal(hitl, GT)
    assert cost.operations == {"split": 1} and cost.images == 1
    assert 0 < cost.seconds < make_label(BUILTIN["oracle"], True, None, GT, annot, False)[1].seconds
    # fixing none of the errors keeps the prediction
    kept, cost = make_label(parse_strategy("mix:1:0"), True, probs, GT, annot, False)
    assert np.array_equal(kept, auto) and cost.fixed == 0 and cost.errors == 1
    assert parse_strategy("mix:0.3:0.5").review_fraction == 0.3
    assert parse_strategy("hitl", 0.5, 0.8).fix_fraction == 0.8


def test_predicted_glands_scale_the_decoder_sizes():
    probs = np.zeros((60, 60), np.float32)
    probs[10:20, 10:20] = 0.9  # 100 px: under the decoder's 200-px floor at native scale
    assert predicted_glands(probs, scale=1.0).max() == 0
    assert predicted_glands(probs, scale=0.5).max() == 1  # 100 px at half scale: 400 native px


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
