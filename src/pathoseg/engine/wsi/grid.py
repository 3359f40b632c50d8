"""The window grid of a slide region at working resolution: cells, their windows, and window
logits kept on disk (float16) until the last cell that needs them is done, blended with
linear ramps across every overlap."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathoseg.errors import PathosegError
from pathoseg.io import atomic_path


def default_margin(tile: int) -> int:
    """The overlap on each side of a window of side ``tile``: 1/16 of the window, at least 32 px
    (slides refuse a tile too small for that; a tiled image takes at most a sixth of its tile)."""
    return max(32, tile // 16)


WindowLogits = Callable[[tuple[int, int, int, int]], np.ndarray]  # (v0, v1, u0, u1) -> (C, h, w) float


@dataclass(frozen=True)
class Grid:
    """Cells over a (height, width) working-resolution canvas: core borders spread evenly
    so that no core is much smaller than the others, windows = core ± margin."""

    height: int
    width: int
    tile: int = 1024
    margin: int = 64

    def __post_init__(self) -> None:
        if self.tile - 2 * self.margin < 4 * self.margin or self.margin < 1:
            raise PathosegError(f"tile {self.tile} is too small for an overlap of {self.margin} px a side "
                                f"(needs at least {6 * self.margin})")

    @staticmethod
    def _borders(size: int, core: int) -> np.ndarray:
        n = max(1, math.ceil(size / core))
        return np.round(np.arange(n + 1) * size / n).astype(int)

    @property
    def rows_at(self) -> np.ndarray:
        return self._borders(self.height, self.tile - 2 * self.margin)

    @property
    def cols_at(self) -> np.ndarray:
        return self._borders(self.width, self.tile - 2 * self.margin)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows_at) - 1, len(self.cols_at) - 1

    def __len__(self) -> int:
        r, c = self.shape
        return r * c

    def core(self, i: int, j: int) -> tuple[int, int, int, int]:
        r, c = self.rows_at, self.cols_at
        return int(r[i]), int(r[i + 1]), int(c[j]), int(c[j + 1])

    def window(self, i: int, j: int) -> tuple[int, int, int, int]:
        v0, v1, u0, u1 = self.core(i, j)
        m = self.margin
        return max(0, v0 - m), min(self.height, v1 + m), max(0, u0 - m), min(self.width, u1 + m)

    def neighbours(self, i: int, j: int) -> Iterator[tuple[int, int]]:
        rows, cols = self.shape
        for a in range(max(0, i - 1), min(rows, i + 2)):
            for b in range(max(0, j - 1), min(cols, j + 2)):
                yield a, b

    def last_user(self, a: int, b: int) -> tuple[int, int]:
        """The cell, in raster order, after which window (a, b) is needed no more."""
        rows, cols = self.shape
        return min(a + 1, rows - 1), min(b + 1, cols - 1)

    def weights(self, a: int, b: int) -> np.ndarray:
        """Blending weights (h, w) of window (a, b): linear ramps over 2 * margin on every
        side that overlaps a neighbour, 1 elsewhere."""
        rows, cols = self.shape
        v0, v1, u0, u1 = self.window(a, b)
        wy = ramp(v1 - v0, self.margin, a > 0, a < rows - 1)
        wx = ramp(u1 - u0, self.margin, b > 0, b < cols - 1)
        return wy[:, None] * wx[None, :]


def ramp(n: int, margin: int, start: bool, end: bool) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) + 0.5
    w = np.ones(n, np.float32)
    if start:
        w = np.minimum(w, t / (2 * margin))
    if end:
        w = np.minimum(w, (n - t) / (2 * margin))
    return w


def window_path(folder: Path, a: int, b: int) -> Path:
    return folder / f"{a}_{b}.npy"


class WindowStore:
    def __init__(self, folder: Path, grid: Grid, compute: WindowLogits,
                 has_tissue: Callable[[int, int], bool], capacity: int = 12) -> None:
        self.folder, self.grid, self.compute, self.has_tissue = folder, grid, compute, has_tissue
        self.cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self.capacity = capacity
        self.computed = 0
        self.computed_px = 0
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, a: int, b: int) -> Path:
        return window_path(self.folder, a, b)

    def get(self, a: int, b: int) -> np.ndarray | None:
        key = (a, b)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        if not self.has_tissue(a, b):
            logits = None
        elif self._path(a, b).is_file():
            logits = np.load(self._path(a, b))
        else:
            logits = np.asarray(self.compute(self.grid.window(a, b)), dtype=np.float16)
            self.computed += 1
            self.computed_px += logits.shape[1] * logits.shape[2]
            with atomic_path(self._path(a, b)) as tmp, tmp.open("wb") as f:
                np.save(f, logits)
        self.cache[key] = logits
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return logits

    def drop(self, a: int, b: int) -> None:
        self.cache.pop((a, b), None)
        self._path(a, b).unlink(missing_ok=True)


def blended_maps(grid: Grid, store: WindowStore, i: int, j: int,
                 channels: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Probability maps over cell (i, j)'s window from the blended logits of every window
    overlapping it; None when none of them holds tissue."""
    v0, v1, u0, u1 = grid.window(i, j)
    acc = np.zeros((len(channels), v1 - v0, u1 - u0), np.float32)
    wsum = np.zeros((v1 - v0, u1 - u0), np.float32)
    for a, b in grid.neighbours(i, j):
        logits = store.get(a, b)
        if logits is None:
            continue
        s0, s1, t0, t1 = grid.window(a, b)
        y0, y1, x0, x1 = max(v0, s0), min(v1, s1), max(u0, t0), min(u1, t1)
        if y0 >= y1 or x0 >= x1:
            continue
        w = grid.weights(a, b)[y0 - s0:y1 - s0, x0 - t0:x1 - t0]
        acc[:, y0 - v0:y1 - v0, x0 - u0:x1 - u0] += logits[:, y0 - s0:y1 - s0, x0 - t0:x1 - t0] * w
        wsum[y0 - v0:y1 - v0, x0 - u0:x1 - u0] += w
    if not wsum.any():
        return None
    covered = wsum > 0
    logits = np.where(covered, acc / np.where(covered, wsum, 1), -30.0)
    probs = 1 / (1 + np.exp(-np.clip(logits, -30, 30)))
    return dict(zip(channels, probs.astype(np.float32), strict=True))
