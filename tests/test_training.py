"""A tiny end-to-end training on synthetic glands must actually learn."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from pathoseg.data import load_dataset
from pathoseg.data.cache import load_scaled
from pathoseg.data.splits import make_split
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample, write_synthetic
from pathoseg.engine.checkpoint import load_model
from pathoseg.engine.predict import PredictConfig, predict_probs
from pathoseg.engine.train import TrainConfig, lr_at, train_to_dir
from pathoseg.metrics import pixel_counts, pixel_summary
from pathoseg.models import ModelConfig, build_model

CFG = SyntheticConfig(size=(96, 128))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = write_synthetic(tmp_path_factory.mktemp("train-data"), n=16, seed=11, cfg=CFG)
    data = load_dataset(root)
    split = make_split(data, "random", seed=0, val_fraction=0.2)
    cfg = TrainConfig(model=ModelConfig("lite0"), epochs=14, batch_size=4, crop=96, scale=1.0,
                      lr=3e-3, repeats=2, progress=False)
    out = tmp_path_factory.mktemp("run")
    result = train_to_dir(build_model(cfg.model), load_scaled(data.subset(split.train), 1.0, False),
                          load_scaled(data.subset(split.val), 1.0, False), cfg, torch.device("cpu"), out)
    return result, out


@pytest.mark.slow
def test_learns_glands_on_held_out_images(trained):
    result, _ = trained
    model, ckpt = load_model(result.best)
    counts = []
    for seed in range(900, 906):  # images never seen in training or validation
        image, labels = synthetic_sample(seed, CFG)
        probs = predict_probs(model, image, PredictConfig(scale=ckpt.scale))
        counts.append(pixel_counts(labels, probs > 0.5))
    iou = pixel_summary(counts)["iou_pooled"]
    assert iou > 0.75, f"held-out IoU {iou:.3f}"
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.slow
def test_checkpoints_and_log_written(trained):
    result, out = trained
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    lines = (out / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_iou") and len(lines) == 1 + len(result.history)
    _, ckpt = load_model(out / "best.pt")
    assert ckpt.model_config.preset == "lite0" and ckpt.epoch >= 1
    ious, f1s = [h["val_iou"] for h in result.history], [h["val_f1"] for h in result.history]
    assert ckpt.metrics["best_val_iou"] == max(ious) and ckpt.epoch == 1 + int(np.argmax(ious))
    # the other selection rule's pick is kept beside it: the epoch with the best object F1
    _, by_f1 = load_model(out / "best-f1.pt")
    assert max(f1s) > 0.5 and all(0 <= f <= 1 for f in f1s)
    assert by_f1.epoch == 1 + int(np.argmax(f1s)) and by_f1.metrics["val_f1"] == max(f1s)


def test_schedule_warms_up_then_decays():
    lrs = [lr_at(p, 1.0, 0.1) for p in np.linspace(0, 1, 101)]
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0, abs=0.02)
    assert lrs[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in pairwise(lrs[10:]))


def test_train_starts_from_a_named_recipe_and_each_flag_overrides_it():
    from pathoseg.cli import build_parser
    from pathoseg.cli.options import train_config
    from pathoseg.engine.settings import RECIPES, recipe

    def config(*flags):
        return train_config(build_parser().parse_args(["train", "--data", "d", *flags]))

    default = config()
    assert (default.crop, default.epochs, default.boundary_weight) == (384, 60, 5.0)  # the measured winner
    assert config("--recipe", "quick") == TrainConfig()  # the demo's and the app's
    mixed = config("--recipe", "glas", "--crop", "256", "--boundary-weight", "0", "--epochs", "3")
    assert (mixed.crop, mixed.boundary_weight, mixed.epochs, mixed.lr) == (256, 0.0, 3, TrainConfig().lr)
    assert set(RECIPES) == {"glas", "quick"} and recipe("quick", crop=96).crop == 96
    with pytest.raises(ValueError, match="recipe must be one of"):
        recipe("fast")
