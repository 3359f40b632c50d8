"""``pathoseg demo`` end to end, on its synthetic fallback, with a tiny training budget."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pathoseg.engine.train import TrainConfig
from pathoseg.pipeline.demo import run_demo


@pytest.mark.slow
def test_demo_falls_back_to_synthetic_and_writes_a_report(tmp_path, monkeypatch):
    monkeypatch.delenv("PATHOSEG_DATA", raising=False)
    cfg = replace(TrainConfig(), epochs=2, batch_size=4, crop=96, scale=1.0, progress=False)
    messages = []
    result = run_demo(tmp_path, data=tmp_path / "no-such-glas", cfg=cfg, log=messages.append)
    assert result.synthetic and any("synthetic" in m for m in messages)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"test"} and metrics["test"]["n_images"] == 10
    html = (tmp_path / "report.html").read_text()
    assert "Overlap gallery" in html and "Learning curve" in html and "data:image/png;base64," in html
    assert len(list((tmp_path / "overlaps").glob("*.png"))) == 10
    assert (tmp_path / "gallery.png").stat().st_size > 0
