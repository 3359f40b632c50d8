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


def test_glas_part_by_split_flag(glas_dir, tmp_path, capsys):
    """The documented form: ``--split testB`` scores that part, keyed by its name."""
    data = load_dataset(glas_dir)
    preds = tmp_path / "preds"
    for s in data:
        if s.part == "testB":
            _, labels = s.load()
            write_label_png(preds / f"{s.name}.png", labels)
    out_json = tmp_path / "glas.json"
    code = main(["evaluate", "--predictions", str(preds), "--data", str(glas_dir), "--split", "testB",
                 "--json", str(out_json), "--out", str(tmp_path / "eval"), "--no-pictures"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(out_json.read_text())
    assert list(metrics) == ["testB"] and metrics["testB"]["n_images"] == 20
    assert metrics["testB"]["f1"] == 1.0 and metrics["testB"]["object_hausdorff"] == 0.0
    # testA has no predictions here: a one-line error naming the missing file
    code = main(["evaluate", "--predictions", str(preds), "--data", str(glas_dir), "--split", "test",
                 "--out", str(tmp_path / "eval2"), "--no-pictures"])
    assert code == 2 and "testA_1.png: no prediction for image testA_1" in capsys.readouterr().err
