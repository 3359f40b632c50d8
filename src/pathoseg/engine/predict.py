"""Prediction on whole images of any size: resize to the working scale, pad to the network
stride, optionally tile and flip, and bring the logits back to native resolution."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pathoseg.data.cache import resize_image
from pathoseg.engine.instances import InstanceConfig, decode_instances
from pathoseg.models import GlandSegmenter


@dataclass(frozen=True)
class PredictConfig:
    scale: float = 0.5
    tta: bool = False  # average over horizontal and vertical flips
    tile: int | None = None  # window side at working scale; None = whole image
    threshold: float = 0.5


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def forward_padded(model: GlandSegmenter, x: torch.Tensor, tta: bool) -> torch.Tensor:
    x, (h, w) = _pad_to(x, model.stride)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda")
    with autocast:
        logits = model(x).float()
        if tta:
            logits = logits + model(x.flip(-1)).float().flip(-1)
            logits = logits + model(x.flip(-2)).float().flip(-2)
            logits = logits / 3
    return logits[..., :h, :w]


def _windows(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    return [*starts, size - tile]


def _tiled(model: GlandSegmenter, x: torch.Tensor, tile: int, tta: bool) -> torch.Tensor:
    """Sliding windows with a quarter overlap; overlapping logits are averaged."""
    h, w = x.shape[-2:]
    step = max(1, tile * 3 // 4)
    out = torch.zeros((x.shape[0], len(model.head.channels), h, w), device=x.device)
    weight = torch.zeros((1, 1, h, w), device=x.device)
    for top in _windows(h, tile, step):
        for left in _windows(w, tile, step):
            patch = x[..., top:top + tile, left:left + tile]
            out[..., top:top + tile, left:left + tile] += forward_padded(model, patch, tta)
            weight[..., top:top + tile, left:left + tile] += 1
    return out / weight


@torch.inference_mode()
def predict_logits(model: GlandSegmenter, image: np.ndarray, cfg: PredictConfig,
                   device: torch.device | str = "cpu", native: bool = True) -> torch.Tensor:
    """Logits (C, H, W) of the model's output channels on the CPU (channel 0: gland), at
    native size when ``native`` else at working scale."""
    model.eval()  # batch statistics of a single image would be meaningless
    small = resize_image(image, cfg.scale)
    x = torch.from_numpy(np.ascontiguousarray(small)).to(device).permute(2, 0, 1)[None].float().div_(255)
    if cfg.tile and max(x.shape[-2:]) > cfg.tile:
        logits = _tiled(model, x, cfg.tile, cfg.tta)
    else:
        logits = forward_padded(model, x, cfg.tta)
    if native and logits.shape[-2:] != image.shape[:2]:
        logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits[0].float().cpu()


def predict_maps(model: GlandSegmenter, image: np.ndarray, cfg: PredictConfig,
                 device: torch.device | str = "cpu", native: bool = True) -> dict[str, np.ndarray]:
    """Probability maps (H, W) float32 in [0, 1], keyed by the head's channel names."""
    probs = torch.sigmoid(predict_logits(model, image, cfg, device, native)).numpy()
    return dict(zip(model.head.channels, probs, strict=True))


def predict_probs(model: GlandSegmenter, image: np.ndarray, cfg: PredictConfig,
                  device: torch.device | str = "cpu", native: bool = True) -> np.ndarray:
    """Gland probability (H, W) float32 in [0, 1]."""
    return predict_maps(model, image, cfg, device, native)["gland"]


def predict_instances(model: GlandSegmenter, image: np.ndarray, cfg: PredictConfig, icfg: InstanceConfig,
                      device: torch.device | str = "cpu") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Gland instances (H, W) int32 at native size through the one decoder, and the maps."""
    maps = predict_maps(model, image, cfg, device)
    return decode_instances(maps, icfg), maps
