"""The outputs of a slide, each written in one pass over the cell files: QuPath GeoJSON
(level-0 pixel coordinates), a pyramidal label TIFF, the overview's labels."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathoseg.data.geojson import gland_feature, mask_shape
from pathoseg.engine.wsi.grid import Grid
from pathoseg.engine.wsi.stitch import CoreCache, Glands
from pathoseg.io import atomic_path

SMOOTHING = 0.5  # px: slide outlines are smoothed by at most half a pixel (fewer vertices)

@dataclass(frozen=True)
class Placement:
    """Where the canvas lies on the slide: level-0 origin and level-0 pixels per canvas pixel."""

    x: float
    y: float
    kx: float
    ky: float
    mpp: float  # level-0 µm/px

    def level0(self, shape):
        from shapely import affinity

        return affinity.affine_transform(shape, [self.kx, 0, 0, self.ky, self.x, self.y])


def write_geojson(path: Path, work: Path, grid: Grid, glands: Glands, place: Placement) -> int:
    """One feature per gland, streamed to disk; glands over several cells are put together
    from their pieces once the last piece is read."""
    cache = CoreCache(work, grid, glands, capacity=2)
    pieces: dict[int, list[tuple[int, int, np.ndarray]]] = {}
    written = 0
    cols = grid.shape[1]
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')

        def emit(g: int, shape) -> None:
            nonlocal written
            feature = gland_feature(g, place.level0(shape), place.mpp)
            f.write((",\n" if written else "") + json.dumps(feature))
            written += 1

        for k in range(len(grid)):
            core = cache.core(k)
            if core is None:
                continue
            i, j = divmod(k, cols)
            v0, _, u0, _ = grid.core(i, j)
            objects = _bounding_boxes(core)
            for g, (sy, sx) in objects.items():
                piece = core[sy, sx] == g
                if glands.cells_of[g] <= 1:
                    emit(g, mask_shape(piece, v0 + sy.start, u0 + sx.start, SMOOTHING))
                    continue
                pieces.setdefault(g, []).append((v0 + sy.start, u0 + sx.start, piece))
                if len(pieces[g]) == glands.cells_of[g]:
                    emit(g, _assemble(pieces.pop(g)))
        for g, parts in sorted(pieces.items()):  # unreachable unless a file changed under us
            emit(g, _assemble(parts))
        f.write("\n]}\n")
    return written


def _bounding_boxes(labels: np.ndarray) -> dict[int, tuple[slice, slice]]:
    from scipy import ndimage as ndi

    return {g + 1: s for g, s in enumerate(ndi.find_objects(labels)) if s is not None}


def _assemble(parts: list[tuple[int, int, np.ndarray]]):
    top = min(p[0] for p in parts)
    left = min(p[1] for p in parts)
    bottom = max(p[0] + p[2].shape[0] for p in parts)
    right = max(p[1] + p[2].shape[1] for p in parts)
    mask = np.zeros((bottom - top, right - left), bool)
    for t, lft, m in parts:
        mask[t - top:t - top + m.shape[0], lft - left:lft - left + m.shape[1]] |= m
    return mask_shape(mask, top, left, SMOOTHING)


def _level_sizes(width: int, height: int, min_side: int = 512) -> list[int]:
    factors = [1]
    while max(math.ceil(width / (factors[-1] * 2)), math.ceil(height / (factors[-1] * 2))) >= min_side:
        factors.append(factors[-1] * 2)
    return factors


def write_label_tiff(path: Path, work: Path, grid: Grid, glands: Glands, size: tuple[int, int],
                     mpp: float, description: dict, tile: int = 512) -> Path:
    """A pyramidal tiled TIFF (zlib) of the final labels at level-0 resolution ``size``
    (width, height), sub-resolutions as SubIFDs (each half the one before, nearest
    neighbour), resolution tags in pixels per centimetre from ``mpp``. Tiles are made one at
    a time from the cell files."""
    import tifffile

    width, height = size
    factors = _level_sizes(width, height)
    cache = CoreCache(work, grid, glands)
    sy, sx = grid.height / height, grid.width / width

    def tiles(f: int) -> Iterator[np.ndarray]:
        lw, lh = math.ceil(width / f), math.ceil(height / f)
        for top in range(0, lh, tile):
            vs = np.minimum(((np.arange(top, min(lh, top + tile)) + 0.5) * f * sy).astype(int), grid.height - 1)
            for left in range(0, lw, tile):
                us = np.minimum(((np.arange(left, min(lw, left + tile)) + 0.5) * f * sx).astype(int), grid.width - 1)
                out = np.zeros((tile, tile), glands.dtype)
                out[:len(vs), :len(us)] = cache.sample(vs, us)
                yield out

    common = {"dtype": glands.dtype, "tile": (tile, tile), "compression": "zlib", "photometric": "minisblack",
              "resolutionunit": "CENTIMETER", "metadata": None}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=width * height * 4 > 2**31) as tif:
        for n, f in enumerate(factors):
            res = 1e4 / (mpp * f)
            extra = {"subifds": len(factors) - 1, "description": json.dumps(description)} if n == 0 else {
                "subfiletype": 1}
            tif.write(tiles(f), shape=(math.ceil(height / f), math.ceil(width / f)), resolution=(res, res),
                      **common, **extra)
    return path


def overview_labels(work: Path, grid: Grid, glands: Glands, shape: tuple[int, int]) -> np.ndarray:
    """The final labels at a thumbnail's (height, width)."""
    h, w = shape
    vs = np.minimum(((np.arange(h) + 0.5) * grid.height / h).astype(int), grid.height - 1)
    us = np.minimum(((np.arange(w) + 0.5) * grid.width / w).astype(int), grid.width - 1)
    return CoreCache(work, grid, glands).sample(vs, us).astype(np.int32)
