"""One large image in memory, the slide engine's way: logits at the working scale through the
tiler (:func:`pathoseg.engine.predict.predict_logits` with a tile, the grid of :mod:`.grid`),
glands decoded cell by cell and stitched across cell borders (:mod:`.stitch`, the one
decoder on each cell's window), and the native-size outputs made a band of rows at a time.

So no native-size float map is ever held whole: beyond its own pixels a large image costs
the tiler's working-scale input and logits (float32), then the logits as float16, a byte per
native pixel of probability and two of glands, one window's activations and a few bands.
Whole-image prediction held native-size float32 logits of every channel, their sigmoid and
the decoder's and the entropy's float64 intermediates: a 6300 x 6300 image peaked at 5.5 GB,
1.5 GB tiled (``docs/benchmarks.md``, "Prediction memory of large images").
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pathoseg.engine.instances import InstanceConfig
from pathoseg.engine.predict import PredictConfig, predict_logits
from pathoseg.engine.wsi.grid import Grid, default_margin
from pathoseg.engine.wsi.stitch import CoreCache, resolve_glands, stitch_cells
from pathoseg.metrics.uncertainty import binary_entropy
from pathoseg.models import GlandSegmenter

BAND_ROWS = 256  # native rows made at a time (a float32 band of a 10000 px wide image: 10 MB)


@dataclass
class LargeMaps:
    probs: np.ndarray  # uint8, gland probability x 255, native size
    glands: np.ndarray  # uint16 instance ids (uint32 past 65535 glands), native size
    entropy: float  # mean binary entropy (bits) of the native-size gland probability


def _bilinear_axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resizing along one axis, as PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)`` computes them."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.minimum(src.astype(np.int64), n_in - 1)
    return low, np.minimum(low + 1, n_in - 1), (src - low).astype(np.float32)


def _nearest_axis(n_out: int, n_in: int) -> np.ndarray:
    """The source index of each output pixel (the one whose area holds its centre)."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def large_image_maps(model: GlandSegmenter, image: np.ndarray, scale: float, icfg: InstanceConfig, tile: int,
                     device: torch.device | str) -> LargeMaps:
    """Review maps of a large ``image`` in bounded memory (see the module's doc). ``icfg``
    is in native pixels; the cells are decoded at the working scale with it scaled."""
    height, width = image.shape[:2]
    logits = predict_logits(model, image, PredictConfig(scale=scale, tile=tile), device, native=False)
    logits = logits.numpy().astype(np.float16)  # the stitching keeps windows as float16 as well
    h, w = logits.shape[-2:]

    # native gland probability: bilinear logits (as whole-image prediction), then the sigmoid
    rows0, rows1, wy = _bilinear_axis(height, h)
    cols0, cols1, wx = _bilinear_axis(width, w)
    probs = np.empty((height, width), np.uint8)
    entropy = 0.0
    for top in range(0, height, BAND_ROWS):
        r = slice(top, min(height, top + BAND_ROWS))
        ry = wy[r, None]
        rows = logits[0, rows0[r]].astype(np.float32) * (1 - ry) + logits[0, rows1[r]].astype(np.float32) * ry
        band = torch.sigmoid(torch.from_numpy(rows[:, cols0] * (1 - wx) + rows[:, cols1] * wx)).numpy()
        probs[r] = np.round(band * 255).astype(np.uint8)
        entropy += float(binary_entropy(band).sum())

    with tempfile.TemporaryDirectory(prefix="pathoseg-image-") as work:
        grid = Grid(h, w, tile, default_margin(tile))
        cell_cfg = icfg.scaled(scale)  # native pixels -> working pixels

        def window(box: tuple[int, int, int, int]) -> np.ndarray:
            v0, v1, u0, u1 = box
            return logits[:, v0:v1, u0:u1]

        stitch_cells(grid, window, tuple(model.head.channels), cell_cfg, Path(work))
        found = resolve_glands(Path(work), grid, cell_cfg.min_size)
        cores = CoreCache(Path(work), grid, found)
        glands = np.empty((height, width), found.dtype)
        ys, xs = _nearest_axis(height, h), _nearest_axis(width, w)
        for top in range(0, height, BAND_ROWS):
            glands[top:top + BAND_ROWS] = cores.sample(ys[top:top + BAND_ROWS], xs)
    return LargeMaps(probs, glands, entropy / (height * width))
