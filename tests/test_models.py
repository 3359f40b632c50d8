from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from skimage import data, transform

from pathoseg.engine.predict import PredictConfig, predict_logits
from pathoseg.errors import PathosegError
from pathoseg.models import ModelConfig, build_model, get_preset
from pathoseg.models.weights import offline_state_dict


def test_offline_lite0_weights_recognise_a_cat():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(offline_state_dict("tf_efficientnet_lite0"))
    model.eval()
    img = transform.resize(data.chelsea(), (224, 224))
    x = torch.tensor((img - 0.5) / 0.5, dtype=torch.float32).permute(2, 0, 1)[None]
    top = model(x).argmax(1).item()
    assert 281 <= top <= 285  # ImageNet's domestic cat classes


def test_segmenter_encoder_gets_the_offline_weights():
    model = build_model(ModelConfig("lite0"))
    ref = offline_state_dict("tf_efficientnet_lite0")
    assert torch.equal(model.net.encoder.model.conv_stem.weight, ref["conv_stem.weight"])
    scratch = build_model(ModelConfig("lite0", weights="none"))
    assert not torch.equal(scratch.net.encoder.model.conv_stem.weight, ref["conv_stem.weight"])


@pytest.mark.parametrize("stride", [8, 16])
def test_any_image_size_and_stride(stride):
    model = build_model(ModelConfig("lite0", output_stride=stride, weights="none")).eval()
    image = np.random.default_rng(0).integers(0, 255, (75, 101, 3), dtype=np.uint8)
    logits = predict_logits(model, image, PredictConfig(scale=1.0))
    assert logits.shape == (2, 75, 101)  # gland + contour (the default head)


def test_tiled_prediction_matches_whole_image_shape():
    model = build_model(ModelConfig("lite0", weights="none")).eval()
    image = np.random.default_rng(1).integers(0, 255, (150, 260, 3), dtype=np.uint8)
    whole = predict_logits(model, image, PredictConfig(scale=0.5))
    tiled = predict_logits(model, image, PredictConfig(scale=0.5, tile=64))
    assert tiled.shape == whole.shape == (2, 150, 260)
    assert torch.isfinite(tiled).all()


class PixelModel(torch.nn.Module):
    """Logits that depend on each pixel alone, plus a bump at the window's edges (where a real
    network sees least context): tiling must reproduce the pixels and weigh the edges least."""

    stride = 32
    head = type("Head", (), {"channels": ("gland",)})()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        edge = torch.zeros(h, w)
        edge[:4], edge[-4:], edge[:, :4], edge[:, -4:] = 1, 1, 1, 1
        return x[:, :1] * 10 - 5 + edge


def test_tiles_blend_to_the_whole_image_away_from_window_edges():
    image = np.random.default_rng(2).integers(0, 255, (320, 480, 3), dtype=np.uint8)
    model = PixelModel()
    whole = predict_logits(model, image, PredictConfig(scale=1.0))
    tiled = predict_logits(model, image, PredictConfig(scale=1.0, tile=96))
    inner = (slice(None), slice(4, -4), slice(4, -4))  # the image's own border is every window's edge
    error = (tiled[inner] - whole[inner]).abs()
    # every pixel covered and the weights add up to 1 (most pixels exact); a window's outer 4 px
    # weigh at most 3.5/32 of the ramp (margin 16) per direction, where averaging gave them 1/2
    assert (error < 1e-4).float().mean() > 0.8
    assert error.max() < 2 * 3.5 / 32 + 1e-4


class SizeModel(torch.nn.Module):
    """Logits that say how tall the network's input was: multi-scale TTA must show each scale's."""

    stride = 32
    head = type("Head", (), {"channels": ("gland",)})()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], float(x.shape[-2]))


def test_multiscale_tta_averages_the_scales_at_the_image_size():
    image = np.zeros((64, 96, 3), np.uint8)
    plain = predict_logits(SizeModel(), image, PredictConfig(scale=1.0))
    multi = predict_logits(SizeModel(), image, PredictConfig(scale=1.0, tta_scales=(0.5, 2.0)))
    assert plain.shape == multi.shape == (1, 64, 96)
    assert torch.allclose(plain, torch.tensor(64.0))  # the input padded to the stride, then cropped
    assert torch.allclose(multi, torch.tensor((64 + 32 + 128) / 3))


def test_unknown_preset():
    with pytest.raises(PathosegError, match="unknown model preset 'lite9'"):
        get_preset("lite9")
