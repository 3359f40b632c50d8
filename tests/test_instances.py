"""Glands as objects: instance targets, the one decoder, heads in checkpoints."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from skimage.draw import disk

from pathoseg.data.images import BinaryMaskWarning, read_mask, write_label_png
from pathoseg.data.targets import IGNORE, boundary_weights, contour_target, head_targets
from pathoseg.engine.checkpoint import FORMAT, Checkpoint, load_model
from pathoseg.engine.instances import InstanceConfig, InstanceFallbackWarning, decode_instances
from pathoseg.engine.predict import PredictConfig, predict_logits
from pathoseg.metrics import object_metrics, object_tally
from pathoseg.models import ModelConfig, build_model


def touching_discs(shape=(100, 160)) -> np.ndarray:
    """Two discs whose rims share a straight line (ids 1 and 2, no gap)."""
    labels = np.zeros(shape, np.uint16)
    labels[disk((50, 52), 32, shape=shape)] = 1
    second = np.zeros(shape, bool)
    second[disk((50, 108), 32, shape=shape)] = True
    labels[second & (labels == 0)] = 2
    return labels


def test_contour_target_marks_the_line_between_two_touching_ids():
    labels = touching_discs()
    contour = contour_target(labels, width=2)
    line = np.argwhere((labels[:, :-1] == 1) & (labels[:, 1:] == 2))
    assert len(line) > 10
    assert all(contour[r, c] == 1 and contour[r, c + 1] == 1 for r, c in line)
    assert contour[50, 52] == 0 and contour[50, 108] == 0  # centres are interior
    assert contour[5, 5] == 0  # far background
    # The line is not a boundary of the binary mask: only the ids make it learnable.
    middle = line[np.abs(line[:, 0] - 50) < 10]
    assert contour_target((labels > 0).astype(np.uint16))[middle[:, 0], middle[:, 1]].sum() == 0


def test_targets_ignore_ignored_pixels():
    labels = touching_discs()
    labels[:, :20] = IGNORE
    targets, valid = head_targets(labels, ("gland", "contour"))
    assert targets.shape == (2, *labels.shape)
    assert not valid[:, :20].any() and valid[:, 20:].all()
    assert targets[0][:, :20].sum() == 0  # ignored pixels are never glands


def test_boundary_weights_peak_on_outlines_and_skip_unlabelled_pixels():
    labels = touching_discs()
    labels[:, :10] = IGNORE
    plain = boundary_weights(labels, 0.0, 5.0)
    assert set(np.unique(plain)) == {0.0, 1.0} and not plain[:, :10].any() and plain[:, 10:].all()
    w = boundary_weights(labels, 4.0, 5.0)
    assert not w[:, :10].any()
    line = np.argwhere((labels[:, :-1] == 1) & (labels[:, 1:] == 2))
    assert np.allclose(w[line[:, 0], line[:, 1]], 5.0)  # the line between touching glands: 1 + 4
    assert w[50, 52] == pytest.approx(1.0, abs=1e-3) and w[50, 108] == pytest.approx(1.0, abs=1e-3)  # centres
    assert w[95, 150] == pytest.approx(1.0, abs=1e-3)  # background far from any outline
    assert 1.0 < w[50, 24] < 5.0  # 4 px inside the left disc's rim: part of the extra weight
    assert np.array_equal(boundary_weights(np.zeros((8, 8), np.uint16), 4.0, 5.0), np.ones((8, 8), np.float32))


def test_loss_with_weights_0_and_1_is_smp_bce_plus_dice_and_outline_errors_cost_more():
    from segmentation_models_pytorch.losses import DiceLoss, SoftBCEWithLogitsLoss

    from pathoseg.engine.train import SegmentationLoss

    torch.manual_seed(0)
    labels = touching_discs()
    targets, valid = head_targets(labels, ("gland", "contour"))
    valid[:, :10] = False
    y = torch.from_numpy(targets)[None]
    logits = torch.randn(1, 2, *labels.shape)
    loss = SegmentationLoss(("gland", "contour"))
    masked = torch.where(torch.from_numpy(valid)[None, None], y, torch.full_like(y, -1.0))
    bce, dice = SoftBCEWithLogitsLoss(ignore_index=-1.0), DiceLoss("binary", from_logits=True, ignore_index=-1.0)
    expected = sum(bce(logits[:, c:c + 1], masked[:, c:c + 1]) + dice(logits[:, c:c + 1], masked[:, c:c + 1])
                   for c in range(2))
    assert loss(logits, y, torch.from_numpy(valid)[None]).item() == pytest.approx(expected.item(), rel=1e-5)
    # One wrong pixel on the outline against one wrong pixel at a gland's centre.
    weights = torch.from_numpy(boundary_weights(labels, 4.0, 5.0))[None]
    right = torch.where(y > 0, 8.0, -8.0)
    costs = []
    on_line = tuple(np.argwhere((labels[:, :-1] == 1) & (labels[:, 1:] == 2))[10])
    for r, c in (on_line, (50, 52)):  # on the line between the glands, at the left one's centre
        wrong = right.clone()
        wrong[0, 0, r, c] = -wrong[0, 0, r, c]
        costs.append(loss(wrong, y, weights).item() - loss(right, y, weights).item())
    assert costs[0] > 3 * costs[1] > 0


def test_decoder_separates_touching_discs_that_components_merge():
    labels = touching_discs()
    targets, _ = head_targets(labels, ("gland", "contour"))
    maps = {"gland": targets[0], "contour": targets[1]}
    cfg = InstanceConfig(min_size=50)
    merged = decode_instances({"gland": targets[0]}, cfg)
    assert merged.max() == 1  # connected components: one blob
    split = decode_instances(maps, cfg)
    assert split.max() == 2
    for gland in (1, 2):
        true = labels == gland
        best = max(np.sum(true & (split == k)) / np.sum(true | (split == k)) for k in (1, 2))
        assert best > 0.95


def test_semantic_model_asked_for_contours_falls_back_to_components_and_says_so():
    labels = touching_discs()
    with pytest.warns(InstanceFallbackWarning, match="no contour output"):
        out = decode_instances({"gland": (labels > 0).astype(np.float32)}, InstanceConfig(method="contour"))
    assert out.max() == 1


def test_decoder_drops_glands_below_min_size():
    labels = np.zeros((60, 60), np.float32)
    labels[5:35, 5:35] = 1  # 900 px
    labels[45:50, 45:50] = 1  # 25 px
    out = decode_instances({"gland": labels}, InstanceConfig(min_size=100))
    assert out.max() == 1 and out[10, 10] == 1 and out[47, 47] == 0


def test_old_checkpoint_without_head_loads_and_predicts_as_before(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(weights="none", head="semantic")).eval()
    path = Checkpoint.of(model, 0.5).save(tmp_path / "new.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT
    del payload["model_config"]["head"]  # what checkpoints written before heads hold
    torch.save(payload, tmp_path / "old.pt")
    old, ckpt = load_model(tmp_path / "old.pt")
    assert ckpt.model_config.head == "semantic" and old.head.channels == ("gland",)
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    expected = predict_logits(model, image, PredictConfig(scale=1.0))
    assert torch.equal(predict_logits(old, image, PredictConfig(scale=1.0)), expected)


def test_default_model_has_an_instance_head():
    model = build_model(ModelConfig(weights="none")).eval()
    assert model.head.is_instance
    out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, len(model.head.channels), 64, 64)


def test_binary_mask_becomes_components_with_a_one_line_warning(tmp_path):
    labels = touching_discs()
    for i in range(3):
        write_label_png(tmp_path / f"m{i}.png", (labels > 0).astype(np.uint8) * 255)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        masks = [read_mask(tmp_path / f"m{i}.png") for i in range(3)]
    binary = [w for w in caught if issubclass(w.category, BinaryMaskWarning)]
    assert binary and all("touching glands cannot be learned apart" in str(w.message) for w in binary)
    assert "\n" not in str(binary[0].message) and str(tmp_path) in str(binary[0].message)
    assert all(m.max() == 1 for m in masks)  # the two touching discs are one component


def test_object_f1_of_decoded_instances_beats_components_on_touching_glands():
    """The metric the decoder is for: on ideal maps, splitting merged glands raises F1."""
    labels = touching_discs()
    targets, _ = head_targets(labels, ("gland", "contour"))
    cfg = InstanceConfig(min_size=50)
    f1_components = object_metrics([object_tally(labels, decode_instances({"gland": targets[0]}, cfg))])["f1"]
    f1_contour = object_metrics([object_tally(labels, decode_instances(
        {"gland": targets[0], "contour": targets[1]}, cfg))])["f1"]
    assert f1_components <= 0.67 and f1_contour == 1.0


@pytest.mark.slow
def test_tiny_training_on_touching_glands_beats_connected_components(tmp_path):
    """A contour head trained for ~15 s on crowded synthetic glands (1 px of stroma between
    neighbours) separates glands that the connected components of its own mask merge."""
    from pathoseg.data import load_dataset
    from pathoseg.data.cache import load_scaled
    from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample, write_synthetic
    from pathoseg.engine.predict import predict_instances
    from pathoseg.engine.train import TrainConfig, fit

    crowded = SyntheticConfig(size=(128, 160), glands=(8, 12), radius=(16, 28), gap=1)
    pairs = load_scaled(load_dataset(write_synthetic(tmp_path, n=16, seed=11, cfg=crowded)).samples, 1.0, False)
    cfg = TrainConfig(model=ModelConfig("lite0", head="contour"), epochs=14, batch_size=4, crop=96, scale=1.0,
                      lr=3e-3, repeats=2, progress=False)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    fit(model, pairs, [], cfg, torch.device("cpu"))
    scores = {}
    for method in ("auto", "components"):
        tallies = []
        for seed in range(900, 906):  # held-out images
            image, labels = synthetic_sample(seed, crowded)
            pred, _ = predict_instances(model, image, PredictConfig(scale=1.0), InstanceConfig(method, min_size=50))
            tallies.append(object_tally(labels, pred))
        scores[method] = object_metrics(tallies)
    assert scores["auto"]["f1"] >= scores["components"]["f1"] + 0.03, scores
    assert scores["auto"]["object_dice"] >= scores["components"]["object_dice"] + 0.02, scores


def test_checkpoint_carries_the_gland_size_floor_learned_from_training_masks(tmp_path):
    from pathoseg.engine.instances import learned_min_size

    # 60 glands of 100 px at working scale 0.5 = 400 native px; a few tiny ones below the 2nd percentile
    labels = [np.kron(np.arange(1, 11).reshape(2, 5), np.ones((10, 10), int)) for _ in range(6)]
    assert learned_min_size(labels, 0.5) == 400
    assert learned_min_size(labels[:2], 0.5) is None  # 20 glands are too few to learn from
    model = build_model(ModelConfig(weights="none"))
    Checkpoint.of(model, 0.5, instances={"min_size": 400}).save(tmp_path / "m.pt")
    _, ckpt = load_model(tmp_path / "m.pt")
    assert ckpt.instance_config().min_size == 400
    assert ckpt.instance_config(min_size=50, method=None).min_size == 50  # a command-line flag wins
    assert ckpt.instance_config().method == "auto"
