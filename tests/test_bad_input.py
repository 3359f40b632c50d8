"""Bad input gets one line naming the file and the problem, exit code 2, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pathoseg.cli import build_parser, main


def run_cli(capsys, *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("pathoseg: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def data(synth_dir, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synth_dir, root)
    return root


def test_missing_mask(capsys, data):
    (data / "masks" / "synth_004.png").unlink()
    msg = run_cli(capsys, "data", "check", str(data))
    assert "synth_004.png" in msg and "no mask" in msg


def test_size_mismatch(capsys, data):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data / "masks" / "synth_002.png")
    msg = run_cli(capsys, "data", "check", str(data))
    assert "synth_002.png" in msg and "does not match image size" in msg


def test_truncated_image(capsys, data):
    path = data / "images" / "synth_001.png"
    path.write_bytes(path.read_bytes()[:200])
    msg = run_cli(capsys, "data", "check", str(data))
    assert "synth_001.png" in msg and ("corrupt" in msg or "not a readable image" in msg)


def test_not_an_image_with_image_suffix(capsys, data):
    (data / "images" / "synth_003.png").write_text("hello")
    msg = run_cli(capsys, "data", "check", str(data))
    assert "synth_003.png: not a readable image" in msg


def test_stray_file(capsys, data):
    (data / "images" / "notes.txt").write_text("scan notes")
    msg = run_cli(capsys, "data", "check", str(data))
    assert "notes.txt: not an image file" in msg


def test_colour_mask(capsys, data):
    rgb = np.zeros((96, 128, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(data / "masks" / "synth_000.png")
    msg = run_cli(capsys, "data", "check", str(data))
    assert "synth_000.png" in msg and "colour" in msg


def test_empty_and_missing_folders(capsys, tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    assert "folder holds no images" in run_cli(capsys, "data", "check", str(tmp_path / "empty"))
    assert "no such dataset folder" in run_cli(capsys, "data", "check", str(tmp_path / "nowhere"))
    assert "expected an images/ folder" in run_cli(capsys, "data", "check", str(tmp_path))


def test_malformed_grade_csv(capsys, tmp_path):
    root = tmp_path / "glas"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "Grade.csv").write_bytes(b"name,patient ID,grade (GlaS)\rtrain_1,1, unknown-grade")
    msg = run_cli(capsys, "data", "check", str(root))
    assert "Grade.csv" in msg and "unknown grade" in msg


def test_foreign_checkpoint(capsys, tmp_path):
    ckpt = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
    msg = run_cli(capsys, "predict", str(ckpt), str(tmp_path))
    assert "other.pt: not a pathoseg checkpoint" in msg
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    assert "junk.pt: not a readable checkpoint" in run_cli(capsys, "predict", str(junk), str(tmp_path))


def test_checkpoint_of_another_architecture(capsys, tmp_path):
    from pathoseg.engine.checkpoint import Checkpoint
    from pathoseg.models import ModelConfig, build_model

    state = build_model(ModelConfig("lite0", weights="none")).state_dict()
    Checkpoint(ModelConfig("mobilenet_v2", weights="none"), state, scale=0.5).save(tmp_path / "mixed.pt")
    msg = run_cli(capsys, "predict", str(tmp_path / "mixed.pt"), str(tmp_path))
    assert "mixed.pt" in msg and "do not fit preset mobilenet_v2" in msg


def test_checkpoint_of_a_retired_head_says_why_and_what_to_use(capsys, tmp_path):
    from dataclasses import replace

    from pathoseg.engine.checkpoint import Checkpoint
    from pathoseg.models import ModelConfig, build_model

    model = build_model(ModelConfig("lite0", weights="none"))  # two channels, as the SDT head had
    ckpt = Checkpoint.of(model, 1.0)
    replace(ckpt, model_config=replace(ckpt.model_config, head="sdt")).save(tmp_path / "old-sdt.pt")
    msg = run_cli(capsys, "predict", str(tmp_path / "old-sdt.pt"), str(tmp_path))
    assert msg.startswith(f"pathoseg: error: {tmp_path / 'old-sdt.pt'}: output head 'sdt': ")
    assert "was removed" in msg and "retrain with --head contour" in msg


def test_unknown_preset(capsys, data, tmp_path):
    msg = run_cli(capsys, "train", "--data", str(data), "--model", "lite9", "--out", str(tmp_path / "r"))
    assert "unknown model preset 'lite9'" in msg


def test_missing_prediction_file(capsys, data, tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    msg = run_cli(capsys, "evaluate", "--predictions", str(preds), "--data", str(data), "--out", str(tmp_path / "e"))
    assert "preds/synth_" in msg and "no prediction for image" in msg


def test_no_traceback_from_the_installed_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pathoseg.cli", "data", "check", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"pathoseg: error: {tmp_path / 'missing'}: no such dataset folder"


@pytest.mark.parametrize("value", ["1", "0.5,x", "-0.5", ""])
def test_tta_scales_are_factors_other_than_one(capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "model.pt", "--tta-scales", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --tta-scales" in err and "Traceback" not in err
    assert build_parser().parse_args(["evaluate", "m.pt", "--tta-scales", "0.75,1.25"]).tta_scales \
        == (0.75, 1.25)


@pytest.mark.parametrize("value", ["-1", "x", "nan", "inf"])
def test_boundary_weight_is_a_finite_number_not_below_zero(capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "d", "--out", "o", "--boundary-weight", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --boundary-weight" in err and "Traceback" not in err
    assert build_parser().parse_args(["train", "--data", "d", "--out", "o", "--boundary-weight", "3"]) \
        .boundary_weight == 3.0
