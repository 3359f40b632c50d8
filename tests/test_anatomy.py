"""Error anatomy: each kind of error counted once, on synthetic cases; the tolerance in µm;
``pathoseg evaluate`` reports it (metrics.json, console) and refuses a bad tolerance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.draw import disk

from pathoseg.cli import main
from pathoseg.data import load_dataset
from pathoseg.data.images import write_label_png
from pathoseg.data.splits import make_split
from pathoseg.metrics.anatomy import ErrorTally, error_tally

SHAPE = (120, 200)


def glands(*specs, shape=SHAPE) -> np.ndarray:
    out = np.zeros(shape, np.int32)
    for k, (r, c, rad) in enumerate(specs, start=1):
        rr, cc = disk((r, c), rad, shape=shape)
        out[rr, cc] = k
    return out


TRUTH = glands((40, 40, 18), (40, 78, 18), (90, 150, 20), (30, 160, 12))


def test_a_perfect_segmentation_has_no_errors():
    assert error_tally(TRUTH, TRUTH, 3.0) == ErrorTally(true=4, predicted=4)


def test_each_kind_of_error_counts_once():
    seg = TRUTH.copy()
    seg[seg == 2] = 1  # the first two glands merged into one
    seg[30:51, 57:62] = 1  # through a bridge
    assert error_tally(TRUTH, seg, 3.0) == ErrorTally(true=4, predicted=3, merged=1)

    cut = TRUTH.copy()
    cut[(TRUTH == 3) & (np.arange(SHAPE[1])[None, :] >= 150)] = 9  # gland 3 cut in two pieces
    assert error_tally(TRUTH, cut, 3.0) == ErrorTally(true=4, predicted=5, split=1)

    gone = np.where(TRUTH == 4, 0, TRUTH)  # gland 4 missed
    gone[100:115, 10:25] = 7  # and a false gland on the stroma
    assert error_tally(TRUTH, gone, 3.0) == ErrorTally(true=4, predicted=4, missed=1, false=1)


def test_an_outline_strays_only_beyond_the_tolerance():
    bulge = TRUTH.copy()
    rr, cc = disk((90, 172), 8, shape=SHAPE)  # a bulge reaching ~8 px beyond gland 3's outline
    bulge[rr, cc] = np.where(bulge[rr, cc] == 0, 3, bulge[rr, cc])
    assert error_tally(TRUTH, bulge, 3.0).stray == 1
    assert error_tally(TRUTH, bulge, 12.0).stray == 0
    assert (error_tally(TRUTH, bulge, 3.0) + error_tally(TRUTH, TRUTH, 3.0)).true == 8  # additive


def test_evaluate_reports_the_anatomy_and_refuses_a_bad_tolerance(synth_dir, tmp_path, capsys):
    data = load_dataset(synth_dir)
    split = make_split(data, "random", seed=0)
    split_file = split.save(tmp_path / "split.json")
    preds = tmp_path / "preds"
    for name in split.test["test"]:
        _, labels = data[name].load()
        write_label_png(preds / f"{name}.png", np.where(labels == labels.max(), 0, labels))  # one gland missed
    argv = ["evaluate", "--predictions", str(preds), "--data", str(synth_dir), "--split-file", str(split_file),
            "--out", str(tmp_path / "eval"), "--no-pictures"]
    assert main(argv) == 0, capsys.readouterr().err
    errors = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]["errors"]
    n = len(split.test["test"])
    assert errors["missed"] == n and errors["merged"] == errors["split"] == errors["false"] == 0
    assert f"{n} missed" in capsys.readouterr().out
    for bad in ("-2", "0", "wide"):
        assert main([*argv, "--anatomy-tolerance", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pathoseg: error: --anatomy-tolerance must be a positive number of µm") and \
            len(err.splitlines()) == 1, err


def test_binary_predictions_warn_that_touching_glands_cannot_be_told_apart(synth_dir, tmp_path, capsys):
    data = load_dataset(synth_dir)
    split = make_split(data, "random", seed=0)
    preds = tmp_path / "preds"
    for name in split.test["test"]:
        _, labels = data[name].load()
        write_label_png(preds / f"{name}.png", (labels > 0).astype(np.uint8) * 255)
    code = main(["evaluate", "--predictions", str(preds), "--data", str(synth_dir), "--split-file",
                 str(split.save(tmp_path / "split.json")), "--out", str(tmp_path / "eval"), "--no-pictures"])
    assert code == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "touching glands cannot be told apart" in ln]
    assert len(warned) == 1 and "pathoseg: warning:" in warned[0]  # (after a progress bar on the line)


@pytest.mark.parametrize("tolerance", [1.0, 5.0])
def test_the_annotator_and_the_anatomy_agree_on_what_is_wrong(tolerance):
    from pathoseg.hitl.annotator import SimulatedAnnotator

    seg = TRUTH.copy()
    seg[seg == 2] = 1
    seg[30:51, 57:62] = 1
    seg[seg == 4] = 0
    plan = SimulatedAnnotator(tolerance_um=tolerance * 0.62, um_per_px=0.62).plan(seg, TRUTH)
    kinds = sorted(f.kind for f in plan.fixes)
    tally = error_tally(TRUTH, seg, tolerance)
    assert kinds.count("merged") == tally.merged == 1 and kinds.count("missed") == tally.missed == 1
