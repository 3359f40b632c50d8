"""Prediction on whole images of any size: resize to the working scale, pad to the network
stride, optionally tile, flip and rescale, and bring the logits back to native resolution."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pathoseg.data.resolution import resample_image
from pathoseg.engine.instances import InstanceConfig, decode_instances
from pathoseg.engine.wsi.grid import Grid, default_margin
from pathoseg.models import GlandSegmenter


@dataclass(frozen=True)
class PredictConfig:
    scale: float = 0.5
    tta: bool = False  # average over horizontal and vertical flips
    # Multi-scale test-time augmentation: also run the network on the input resized by each of
    # these factors (relative to ``scale``) and average the logits, brought back to one size.
    tta_scales: tuple[float, ...] = ()
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


def _tiled(model: GlandSegmenter, x: torch.Tensor, tile: int, tta: bool) -> torch.Tensor:
    """The slide engine's grid over one image: windows of at most ``tile`` overlapping by twice
    the slides' :func:`default_margin` (at most a third of the tile), their logits blended with
    linear ramps across every overlap (a window's edge, where it saw least context, counts least)."""
    h, w = x.shape[-2:]
    grid = Grid(h, w, tile, max(1, min(default_margin(tile), tile // 6)))
    out = torch.zeros((x.shape[0], len(model.head.channels), h, w), device=x.device)
    rows, cols = grid.shape
    for a in range(rows):
        for b in range(cols):
            v0, v1, u0, u1 = grid.window(a, b)
            weights = torch.from_numpy(grid.weights(a, b)).to(x.device)
            # the network's input grown to a multiple of its stride with the image itself where
            # there is more (padding only at the image's own edge): real context, not a mirror
            s = model.stride
            v2, u2 = min(h, v0 + -(-(v1 - v0) // s) * s), min(w, u0 + -(-(u1 - u0) // s) * s)
            logits = forward_padded(model, x[..., v0:v2, u0:u2], tta)[..., :v1 - v0, :u1 - u0]
            out[..., v0:v1, u0:u1] += logits * weights
    return out  # the ramps of overlapping windows add up to 1


def _network(model: GlandSegmenter, x: torch.Tensor, cfg: PredictConfig) -> torch.Tensor:
    if cfg.tile and max(x.shape[-2:]) > cfg.tile:
        return _tiled(model, x, cfg.tile, cfg.tta)
    return forward_padded(model, x, cfg.tta)


@torch.inference_mode()
def predict_logits(model: GlandSegmenter, image: np.ndarray, cfg: PredictConfig,
                   device: torch.device | str = "cpu", native: bool = True) -> torch.Tensor:
    """Logits (C, H, W) of the model's output channels on the CPU (channel 0: gland), at
    native size when ``native`` else at working scale."""
    model.eval()  # batch statistics of a single image would be meaningless
    small = resample_image(image, cfg.scale)
    x = torch.from_numpy(np.ascontiguousarray(small)).to(device).permute(2, 0, 1)[None].float().div_(255)
    del small  # x is a copy: a large image's working-scale bytes need not wait for the network
    logits = _network(model, x, cfg)
    for factor in cfg.tta_scales:
        resized = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False, antialias=factor < 1)
        logits += F.interpolate(_network(model, resized, cfg), size=x.shape[-2:], mode="bilinear",
                                align_corners=False)
    logits /= 1 + len(cfg.tta_scales)
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
