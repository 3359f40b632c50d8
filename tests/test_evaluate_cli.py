"""``pathoseg evaluate --predictions``: the JSON layout other tools read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pathoseg.cli import main
from pathoseg.data import load_dataset
from pathoseg.data.images import write_label_png
from pathoseg.data.splits import make_split


def test_perfect_predictions_score_perfectly(synth_dir, tmp_path, capsys):
    data = load_dataset(synth_dir)
    split = make_split(data, "random", seed=0)
    split_file = split.save(tmp_path / "split.json")
    preds = tmp_path / "preds"
    for name in split.test["test"]:
        _, labels = data[name].load()
        write_label_png(preds / f"{name}.png", (labels > 0).astype(np.uint8) * 255)  # binary: labelled on read
    out_json = tmp_path / "m.json"
    code = main(["evaluate", "--predictions", str(preds), "--data", str(synth_dir), "--split-file", str(split_file),
                 "--json", str(out_json), "--out", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(out_json.read_text())
    assert list(metrics) == ["test"]
    m = metrics["test"]
    for key in ("f1", "object_dice", "iou_pooled", "iou_mean", "dice_pooled", "dice_mean"):
        assert m[key] == pytest.approx(1.0)
    assert m["object_hausdorff"] == 0.0 and m["n_images"] == len(split.test["test"])
    assert (tmp_path / "eval" / "per_image.csv").is_file()
