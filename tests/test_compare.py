from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest

from pathoseg.engine.train import TrainConfig
from pathoseg.pipeline.compare import CompareConfig, run_compare


@pytest.mark.slow
def test_compare_two_models_and_resume(synth_dir, tmp_path):
    train = replace(TrainConfig(), epochs=2, batch_size=4, crop=64, scale=1.0)
    cfg = CompareConfig(models=["lite0", "mobilenet_v2"], protocol="seed", seeds=1, train=train, gallery=2,
                        device="cpu")
    rows = run_compare(synth_dir, cfg, tmp_path, log=lambda m: None)
    assert [r["model"] for r in rows] == ["lite0", "mobilenet_v2"]
    with (tmp_path / "compare.csv").open() as f:
        table = list(csv.DictReader(f))
    for col in ("model", "params_m", "gflops", "latency_ms", "train_s", "iou_pooled", "iou_mean", "dice_pooled",
                "f1", "object_dice", "object_hausdorff"):
        assert col in table[0]
    lite0 = json.loads((tmp_path / "runs" / "lite0" / "seed0" / "result.json").read_text())
    assert 3 < lite0["params_m"] < 6 and lite0["gflops"] > 1 and lite0["latency_ms"] > 0
    assert lite0["peak_mem_mb"] > 100
    assert lite0["device"].startswith("CPU (") and "threads)" in lite0["device"]  # which machine, not "cpu"
    for name in ("compare.md", "iou_vs_latency.png", "side_by_side.png", "report.html"):
        assert (tmp_path / name).stat().st_size > 0
    # a second call reuses finished runs instead of training again
    stamp = (tmp_path / "runs" / "lite0" / "seed0" / "result.json").stat().st_mtime_ns
    again = run_compare(synth_dir, cfg, tmp_path, log=lambda m: None)
    assert (tmp_path / "runs" / "lite0" / "seed0" / "result.json").stat().st_mtime_ns == stamp
    assert again[0]["iou_pooled"] == rows[0]["iou_pooled"]


def test_aggregate_reports_std_over_seeds():
    from pathoseg.pipeline.compare import aggregate, markdown_table

    def record(seed, iou):
        part = {k: iou for k in ("iou_pooled", "iou_mean", "dice_pooled", "dice_mean", "f1", "object_dice",
                                 "object_hausdorff")}
        return {"model": "lite0", "seed": seed, "params_m": 3.9, "gflops": 11.3, "latency_ms": 100.0,
                "train_s": 60.0, "peak_mem_mb": 900.0, "metrics": {"testA": part, "testB": part, "test": part}}

    rows = aggregate([record(0, 0.80), record(1, 0.84)])
    assert rows[0]["iou_pooled"] == pytest.approx(0.82)
    assert rows[0]["iou_pooled_std"] == pytest.approx(0.028284, abs=1e-5)
    assert rows[0]["testA_f1"] == pytest.approx(0.82) and rows[0]["seeds"] == 2
    assert "0.8200 ± 0.0283" in markdown_table(rows)


def test_compare_json_keeps_every_seed_in_the_issue_schema():
    from pathoseg.pipeline.compare import CompareConfig, results_json

    def record(model, seed, iou, f1, seconds):
        head = {"iou_pooled": iou, "f1": f1}
        return {"model": model, "seed": seed, "params_m": 3.9, "train_s": seconds, "device": "cpu",
                "metrics": {"testA": head, "testB": head, "test": head}}

    out = results_json([record("lite0", 1, 0.81, 0.70, 120.0), record("lite0", 0, 0.80, 0.69, 60.0),
                        record("resnet50", 0, 0.85, 0.75, 600.0)], "pathoseg compare --protocol seed")
    assert out["command"] == "pathoseg compare --protocol seed" and out["device"] == "cpu"
    lite0, resnet = out["rows"]
    assert lite0 == {"model": "lite0", "params_m": 3.9, "weights": "imagenet (offline)", "iou_pooled": [0.80, 0.81],
                     "object_f1": [0.69, 0.70], "train_minutes": [1.0, 2.0]}  # in seed order
    assert resnet["iou_pooled"] == [0.85] and resnet["train_minutes"] == [10.0]
    assert resnet["weights"] == "random init"  # no ResNet-50 weights ship offline
    # the original study's protocol: 15 epochs unless told otherwise
    assert CompareConfig.of(["lite0"], "seed").train.epochs == 15
    assert CompareConfig.of(["lite0"], "seed", epochs=3).train.epochs == 3
    assert CompareConfig.of(["lite0"], "official").train.epochs == CompareConfig(["lite0"]).train.epochs
