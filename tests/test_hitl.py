from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from skimage import measure
from skimage.draw import disk

from pathoseg.engine.rounds import ReviewMaps
from pathoseg.hitl.annotator import SimulatedAnnotator
from pathoseg.hitl.selection import rank
from pathoseg.hitl.strategies import BUILTIN, make_label, parse_strategy
from pathoseg.hitl.study import StudyConfig, StudyRunner
from pathoseg.metrics.uncertainty import mean_entropy
from tiny import tiny_round


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


def _maps(glands: np.ndarray, probs: np.ndarray) -> ReviewMaps:
    return ReviewMaps(np.round(probs * 255).astype(np.uint8), glands, probs)


def test_labels_of_each_strategy():
    probs = np.where(PRED, 0.95, 0.02).astype(np.float32)
    maps = _maps(measure.label(PRED).astype(np.int32), probs)  # what the app shows: one merged gland
    annot = SimulatedAnnotator()
    oracle, cost = make_label(BUILTIN["oracle"], True, None, GT, annot)
    assert np.array_equal(oracle, GT) and cost.operations == {"add_polygon": 2}
    # unreviewed: the model's own glands as the app shows them
    auto, cost = make_label(BUILTIN["auto"], False, maps, GT, annot)
    assert auto.dtype == np.uint16 and np.array_equal(auto, maps.glands) and auto.max() == 1 and cost.seconds == 0
    # the pathologist cuts the merged gland in two: the label is the true instance map
    hitl, cost = make_label(BUILTIN["hitl"], True, maps, GT, annot)
    assert hitl.dtype == np.uint16 and np.array_equal(hitl, GT)
    assert cost.operations == {"split": 1} and cost.images == 1
    assert 0 < cost.seconds < make_label(BUILTIN["oracle"], True, None, GT, annot)[1].seconds
    # fixing none of the errors keeps the prediction
    kept, cost = make_label(parse_strategy("mix:1:0"), True, maps, GT, annot)
    assert np.array_equal(kept, auto) and cost.fixed == 0 and cost.errors == 1
    assert parse_strategy("mix:0.3:0.5").review_fraction == 0.3
    assert parse_strategy("hitl", 0.5, 0.8).fix_fraction == 0.8


def test_uncertainty_ranking():
    sure, unsure = np.full((4, 4), 0.99), np.full((4, 4), 0.5)
    assert mean_entropy(unsure) == pytest.approx(1.0) and mean_entropy(sure) < 0.1
    assert rank(["a", "b"], "uncertainty", np.random.default_rng(0), {"a": 0.1, "b": 0.9}) == ["b", "a"]


@pytest.mark.slow
def test_resume_after_interrupted_round_gives_the_same_record(synth_dir, tmp_path):
    cfg = StudyConfig(strategies=[BUILTIN["hitl"], BUILTIN["auto"]], rounds=2, round=tiny_round(4, 3),
                      initial_fraction=0.3, test_limit=2, device="cpu")
    full = StudyRunner(synth_dir, cfg, tmp_path / "a").run()
    # interrupt: copy the finished study, then drop the last round as if killed before it ended
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    last = tmp_path / "b" / "seed0" / "auto" / "round2"
    (last / "record.json").unlink()
    (last / "model.pt").unlink()
    resumed = StudyRunner(synth_dir, cfg, tmp_path / "b").run()

    def strip(records):
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in records]

    assert json.dumps(strip(full), sort_keys=True) == json.dumps(strip(resumed), sort_keys=True)
    assert len(full) == 1 + 2 * 2
    assert all(r["effort"]["seconds"] == 0 for r in full if r["strategy"] == "auto")
    assert all(r["effort"]["seconds"] > 0 for r in full if r["strategy"] == "hitl")
    assert {r["round"] for r in full} == {0, 1, 2}
    # by the last round every training image was labelled exactly once
    delivered = [n for r in full if r["strategy"] in ("initial", "hitl") for n in r["selected"]]
    assert len(delivered) == len(set(delivered)) == 12 - 2


def test_every_seed_trains_on_its_own_labels_as_if_it_ran_alone(synth_dir, tmp_path):
    """Seeds (and strategies) label the same images differently, all as "version 1": seed 1's
    models must be the ones it makes when run alone, not trained on seed 0's corrections."""
    cfg = StudyConfig(strategies=[BUILTIN["auto"]], rounds=2, seeds=2, round=tiny_round(4, 3),
                      initial_fraction=0.3, test_limit=1, device="cpu")
    StudyRunner(synth_dir, cfg, tmp_path / "a").run()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "seed1")
    StudyRunner(synth_dir, cfg, tmp_path / "b").run()  # seed 0 resumed from its records, seed 1 afresh
    for model in ("round0/model.pt", "auto/round1/model.pt"):
        a, b = (torch.load(tmp_path / run / "seed1" / model, weights_only=True)["state_dict"] for run in "ab")
        assert all(torch.equal(a[k], b[k]) for k in a), model


def test_frozen_stages_stay_as_round_zero_left_them(synth_dir, tmp_path):
    from pathoseg.engine.checkpoint import load_model

    cfg = StudyConfig(strategies=[BUILTIN["oracle"]], rounds=1, initial_fraction=0.3, test_limit=1, device="cpu",
                      round=tiny_round(2, 3, lr_scale=1.0, freeze_stages=2))
    records = StudyRunner(synth_dir, cfg, tmp_path).run()
    before, _ = load_model(tmp_path / "seed0" / "round0" / "model.pt", "cpu")
    after, _ = load_model(tmp_path / "seed0" / "oracle" / "round1" / "model.pt", "cpu")
    old, new = before.state_dict(), after.state_dict()
    stem = "net.encoder.model.conv_stem.weight"
    stage2 = next(k for k in old if k.startswith("net.encoder.model.blocks.1.") and k.endswith("weight"))
    stage3 = next(k for k in old if k.startswith("net.encoder.model.blocks.2.") and k.endswith("weight"))
    assert torch.equal(old[stem], new[stem]) and torch.equal(old[stage2], new[stage2])
    assert not torch.equal(old[stage3], new[stage3])  # the third stage on trains
    assert not torch.equal(old["net.segmentation_head.0.weight"], new["net.segmentation_head.0.weight"])
    assert all(p.requires_grad for p in after.parameters())
    assert records[-1]["predict_s"] > 0  # uncertainty selection: the pool was predicted


def _record(seed, strategy, r, iou, hours):
    return {"seed": seed, "round": r, "strategy": strategy if r else "initial", "label_iou": 1.0, "train_s": 10.0,
            "test": {"test": {"iou_pooled": iou, "f1": iou - 0.1}}, "effort": {"seconds": hours * 3600}}


def test_headline_is_the_least_effort_within_the_margin_of_the_oracle_and_json_has_the_schema():
    from pathoseg.hitl.outputs import headline, results_json, series

    records = []
    for seed in (0, 1):
        records.append(_record(seed, "", 0, 0.80, 0))
        for r in (1, 2):  # final IoU: oracle 0.85, hitl 0.845 (1 h a round), hitl25 0.842 (0.25 h), auto 0.82
            records += [_record(seed, "oracle", r, 0.80 + 0.025 * r, 2.0),
                        _record(seed, "hitl", r, 0.835 + 0.005 * r, 1.0),
                        _record(seed, "hitl25", r, 0.832 + 0.005 * r, 0.25), _record(seed, "auto", r, 0.82, 0.0)]
    data = series(records, ["auto", "oracle", "hitl", "hitl25"], rounds=2)
    h = headline(data)
    assert h["strategy"] == "hitl25" and h["hours"] == pytest.approx(0.5) and h["reference_hours"] == pytest.approx(4)
    assert h["share_of_reference_effort"] == pytest.approx(0.125)
    out = results_json(data, [0, 1], "pathoseg hitl ...")
    assert set(out["strategies"]) == {"auto", "oracle", "hitl", "hitl25"}
    oracle = out["strategies"]["oracle"]
    assert oracle["effort_hours"] == [[0.0, 2.0, 4.0]] * 2  # cumulative, round 0 first, one row per seed
    assert oracle["test_iou"][1] == pytest.approx([0.80, 0.825, 0.85])
    assert set(oracle) == {"test_iou", "object_f1", "label_iou", "effort_hours", "train_seconds", "round_seconds",
                           "activated"}
    assert out["median_warm_round_seconds"] == 10.0
    assert headline(series(records, ["auto", "oracle"], rounds=2))["strategy"] is None  # auto ends 0.03 short
