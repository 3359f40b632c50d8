"""Physical resolution: µm/px of data sets, checkpoints and inputs, and what follows from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pathoseg.cli import main
from pathoseg.data import load_dataset
from pathoseg.data.glas import GLAS_MPP
from pathoseg.data.images import write_rgb_png
from pathoseg.data.resolution import (
    check_mpp,
    checkpoint_mpp,
    dataset_mpp,
    resize_factor,
    um2_to_px,
)
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample, write_synthetic
from pathoseg.engine.checkpoint import Checkpoint, load_checkpoint
from pathoseg.engine.instances import InstanceConfig
from pathoseg.engine.predict import PredictConfig
from pathoseg.errors import PathosegError
from pathoseg.models import ModelConfig, build_model
from pathoseg.pipeline.prediction import min_size_from_area, resolution_configs


def test_mpp_must_be_between_a_tenth_and_ten():
    assert check_mpp("0.25") == 0.25 and check_mpp(10) == 10.0
    for bad in (0.05, 11, -1, float("nan"), "fast"):
        with pytest.raises(PathosegError) as err:
            check_mpp(bad, "--mpp", "slide.svs")
        assert "slide.svs" in str(err.value) and "\n" not in str(err.value)


def test_glas_is_0_62_um_per_px(glas_dir):
    assert load_dataset(glas_dir).mpp == GLAS_MPP == 0.62
    assert dataset_mpp(glas_dir) == 0.62


def test_a_folder_declares_its_resolution_in_a_sidecar(tmp_path):
    folder = write_synthetic(tmp_path / "a", n=2, cfg=SyntheticConfig(size=(64, 64)))
    assert load_dataset(folder).mpp is None  # unknown
    (folder / "mpp.txt").write_text("0.5\n")
    assert load_dataset(folder).mpp == 0.5 == dataset_mpp(folder)
    (folder / "mpp.txt").unlink()
    (folder / "dataset.json").write_text(json.dumps({"name": "lab", "mpp": 0.25}))
    assert load_dataset(folder).mpp == 0.25
    (folder / "dataset.json").write_text(json.dumps({"mpp": 50}))
    with pytest.raises(PathosegError, match=r"dataset\.json.*outside"):
        load_dataset(folder)
    (folder / "dataset.json").write_text("{not json")
    with pytest.raises(PathosegError, match=r"dataset\.json"):
        load_dataset(folder)


def test_checkpoints_record_their_resolution_and_old_ones_fall_back(tmp_path):
    model = build_model(ModelConfig(weights="none"))
    Checkpoint.of(model, 1.0, mpp=0.5).save(tmp_path / "new.pt")
    assert load_checkpoint(tmp_path / "new.pt").mpp == 0.5 == checkpoint_mpp(load_checkpoint(tmp_path / "new.pt"))
    glas_split = {"kind": "official", "seed": 0, "train": ["train_1", "train_2"], "val": [],
                  "test": {"testA": ["testA_1"]}, "data_root": str(tmp_path / "gone")}
    for name, split, expected in (("glas", glas_split, GLAS_MPP), ("other", {**glas_split, "train": ["a"]}, None),
                                  ("none", None, None)):
        path = Checkpoint.of(model, 1.0, split=split).save(tmp_path / f"{name}.pt")
        payload = torch.load(path, weights_only=True)
        del payload["mpp"]  # what checkpoints from before the field hold
        torch.save(payload, path)
        ckpt = load_checkpoint(path)
        assert ckpt.mpp is None and checkpoint_mpp(ckpt) == expected, name
    # The training data folder, still there, says what it is.
    data = write_synthetic(tmp_path / "data", n=1, cfg=SyntheticConfig(size=(64, 64)))
    (data / "mpp.txt").write_text("0.4")
    ckpt = Checkpoint.of(model, 1.0, split={**glas_split, "train": ["synth_000"], "data_root": str(data)})
    assert checkpoint_mpp(ckpt) == 0.4


def test_resize_factor_and_decoder_sizes_follow_the_resolution():
    # A 40x scan (0.25 µm/px) for a GlaS model at working scale 0.5.
    assert resize_factor(0.25, 0.62, 0.5) == pytest.approx(0.25 / 0.62 * 0.5)
    pcfg, icfg = resolution_configs(PredictConfig(scale=1.0), InstanceConfig(min_size=200, min_distance=20),
                                    input_mpp=0.31, model_mpp=0.62)
    assert pcfg.scale == pytest.approx(0.5)  # halved to the model's 0.62 µm/px
    assert icfg.min_size == 800 and icfg.min_marker == 120 and icfg.max_hole == 8000 and icfg.min_distance == 40
    assert resolution_configs(PredictConfig(scale=0.5), InstanceConfig(), None, 0.62)[0].scale == 0.5
    small = InstanceConfig(min_marker=30, min_size=0).scaled(0.1)
    assert small.min_marker == 1 and small.min_size == 0  # a floor stays a floor; none stays none
    assert um2_to_px(400, 0.62) == 1041
    assert min_size_from_area(InstanceConfig(), 400, 0.62, "m.pt").min_size == 1041
    with pytest.raises(PathosegError, match="--model-mpp"):
        min_size_from_area(InstanceConfig(), 400, None, "m.pt")


def test_predict_resamples_plain_images_from_their_mpp(tmp_path, capsys):
    """The same tissue scanned at twice the resolution, told by --mpp, gives the same glands
    at twice the size (an untrained model: the plumbing, not the quality)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(weights="none"))
    ckpt = Checkpoint.of(model, 1.0, mpp=0.62).save(tmp_path / "m.pt")
    image, _ = synthetic_sample(3, SyntheticConfig(size=(96, 128)))
    write_rgb_png(tmp_path / "in" / "native.png", image)
    write_rgb_png(tmp_path / "in2" / "fine.png", np.repeat(np.repeat(image, 2, 0), 2, 1))
    assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(tmp_path / "a"), "--min-size", "0"]) == 0
    assert main(["predict", str(ckpt), str(tmp_path / "in2"), "--out", str(tmp_path / "b"), "--mpp", "0.31",
                 "--min-size", "0"]) == 0
    native = np.array(Image.open(tmp_path / "a" / "masks" / "native.png")) > 0
    fine = np.array(Image.open(tmp_path / "b" / "masks" / "fine.png")) > 0
    assert fine.shape == (192, 256)
    down = fine[::2, ::2]
    assert (down == native).mean() > 0.97
    out = tmp_path / "c"
    capsys.readouterr()
    assert main(["predict", str(ckpt), str(tmp_path / "in"), "--out", str(out), "--mpp", "12"]) == 2
    err = capsys.readouterr().err.strip()
    assert "native.png" in err and "outside 0.1–10" in err and len(err.splitlines()) == 1 and not out.exists()


def test_training_records_the_data_sets_resolution_in_its_checkpoints(tmp_path):
    from pathoseg.data.synthetic import SyntheticConfig, write_synthetic
    from pathoseg.engine.checkpoint import load_checkpoint
    from pathoseg.engine.train import TrainConfig
    from pathoseg.models import ModelConfig
    from pathoseg.pipeline.training import plan_data, run_training

    root = write_synthetic(tmp_path / "data", n=6, seed=5, cfg=SyntheticConfig(size=(64, 64)))
    (root / "mpp.txt").write_text("0.5\n")
    plan = plan_data(root, "random", seed=0, val_fraction=0.2)
    cfg = TrainConfig(model=ModelConfig(weights="none"), epochs=1, batch_size=2, crop=64, progress=False)
    result = run_training(plan, cfg, tmp_path / "run")
    assert load_checkpoint(result.best).mpp == load_checkpoint(result.last).mpp == 0.5
