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
    for name in ("compare.md", "iou_vs_latency.png", "side_by_side.png", "report.html"):
        assert (tmp_path / name).stat().st_size > 0
    # a second call reuses finished runs instead of training again
    stamp = (tmp_path / "runs" / "lite0" / "seed0" / "result.json").stat().st_mtime_ns
    again = run_compare(synth_dir, cfg, tmp_path, log=lambda m: None)
    assert (tmp_path / "runs" / "lite0" / "seed0" / "result.json").stat().st_mtime_ns == stamp
    assert again[0]["iou_pooled"] == rows[0]["iou_pooled"]
