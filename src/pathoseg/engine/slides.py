"""Whole-slide prediction in bounded memory, resumable, with glands whole across tile borders.

The slide (or a region of it) is seen at the model's working resolution, ``model µm/px /
working scale``, on a grid of cells (cores of at most ``tile - 2 * margin`` pixels). Each
cell's window is its core plus ``margin`` pixels on every side (clipped to the region), read
from the best pyramid level, so neighbouring windows overlap by ``2 * margin``:

1. Tissue is found once on a thumbnail (Otsu on saturation); windows without tissue are
   never read or run.
2. Each window's logits are computed once and kept on disk (float16) until the last cell
   that needs them is done. A cell's maps are the logits of the (up to 3x3) windows over
   its window, blended with linear ramps across every overlap (weights add up to 1 there).
3. The one instance decoder runs on the cell's window (core + margin of context); the core
   keeps its labels. Two labels that touch across a core border become one gland when the
   decoders on both sides saw the gland go on across the border (their labels one pixel
   past their own core agree), so a gland cut by a border is one gland and two touching
   glands whose boundary is the border stay two. The gland size floor is applied to whole
   glands after stitching.
4. Each finished cell is written as ``cells/<k>.npz`` and only then appended to
   ``manifest.jsonl``; a rerun with the same settings skips every cell listed there.
5. Outputs are written from the cell files at the end, each in one pass with a few cells in
   memory: QuPath GeoJSON (level-0 pixel coordinates), a pyramidal label TIFF at level-0
   resolution and an overview PNG with the glands outlined.

Memory therefore depends on the tile size, not on the slide size (the per-gland bookkeeping
of step 5 grows with the number of glands, a few dozen bytes each).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pathoseg.engine.instances import InstanceConfig, decode_instances
from pathoseg.errors import PathosegError
from pathoseg.io import atomic_path, write_json

MANIFEST = "manifest.jsonl"
SETTINGS = "settings.json"
GLAND_CLASS = {"name": "Gland", "color": [0, 160, 0]}

WindowLogits = Callable[[tuple[int, int, int, int]], np.ndarray]  # (v0, v1, u0, u1) -> (C, h, w) float


# -- the grid -------------------------------------------------------------------------------------------------------
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
        wy = _ramp(v1 - v0, self.margin, a > 0, a < rows - 1)
        wx = _ramp(u1 - u0, self.margin, b > 0, b < cols - 1)
        return wy[:, None] * wx[None, :]


def _ramp(n: int, margin: int, start: bool, end: bool) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) + 0.5
    w = np.ones(n, np.float32)
    if start:
        w = np.minimum(w, t / (2 * margin))
    if end:
        w = np.minimum(w, (n - t) / (2 * margin))
    return w


# -- window logits, kept on disk until their last cell is done -----------------------------------------------------
def window_path(folder: Path, a: int, b: int) -> Path:
    return folder / f"{a}_{b}.npy"


class _WindowStore:
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


def blended_maps(grid: Grid, store: _WindowStore, i: int, j: int,
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


# -- stitching across core borders ---------------------------------------------------------------------------------
def border_matches(left_own: np.ndarray, left_view: np.ndarray, right_own: np.ndarray,
                   right_view: np.ndarray) -> list[tuple[int, int]]:
    """Label pairs (left, right) that are one gland across a border. ``left_own`` and
    ``right_own`` are the owners' labels on the two pixel lines either side of the border;
    ``left_view`` is the left decoder's labels on the right line, ``right_view`` the right
    decoder's on the left line. A touching pair is one gland when, on at least half of the
    pixels where they touch, both decoders saw the gland go on across the border."""
    touch = (left_own > 0) & (right_own > 0)
    if not touch.any():
        return []
    agree = touch & (left_view == left_own) & (right_view == right_own)
    touching = _pair_counts(left_own[touch], right_own[touch])
    agreed = _pair_counts(left_own[agree], right_own[agree])
    return [pair for pair, n in touching.items() if agreed.get(pair, 0) * 2 >= n]


def _pair_counts(a: np.ndarray, b: np.ndarray) -> dict[tuple[int, int], int]:
    if not len(a):
        return {}
    pairs, counts = np.unique(np.stack([a, b]), axis=1, return_counts=True)
    return {(int(x), int(y)): int(n) for (x, y), n in zip(pairs.T, counts, strict=True)}


@dataclass
class _Cell:
    """A finished cell: its labels over core ± 1 px (clipped to its window) and where they lie."""

    labels: np.ndarray
    top: int
    left: int

    def at(self, rows: slice | int, cols: slice | int) -> np.ndarray:
        """Labels at canvas rows/cols (slices or single indices, inside core ± 1 px)."""
        def shift(s, off):
            return slice(s.start - off, s.stop - off) if isinstance(s, slice) else s - off
        return self.labels[shift(rows, self.top), shift(cols, self.left)]


def _cell_path(work: Path, k: int) -> Path:
    return work / "cells" / f"{k}.npz"


def _load_cell(work: Path, k: int) -> _Cell:
    with np.load(_cell_path(work, k)) as z:
        return _Cell(z["labels"].astype(np.int32), int(z["origin"][0]), int(z["origin"][1]))


def read_manifest(work: Path) -> dict[int, int]:
    """Finished cells -> their number of local labels; a torn last line is ignored."""
    done: dict[int, int] = {}
    path = work / MANIFEST
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            k, n = int(rec["cell"]), int(rec["glands"])
        except (ValueError, KeyError, TypeError):
            continue
        if n == 0 or _cell_path(work, k).is_file():
            done[k] = n
    return done


def _append_manifest(work: Path, k: int, n: int) -> None:
    with (work / MANIFEST).open("a", encoding="utf-8") as f:
        f.write(json.dumps({"cell": k, "glands": n}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def stitch_cells(grid: Grid, window_logits: WindowLogits, channels: tuple[str, ...], icfg: InstanceConfig,
                 work: Path, has_tissue: Callable[[int, int], bool] = lambda a, b: True,
                 progress: bool = False, desc: str = "slide",
                 on_cell: Callable[[int], None] | None = None) -> dict[str, int]:
    """Steps 2-4 of the module doc: every cell of ``grid`` decoded and matched with its left
    and upper neighbours into ``work``. ``icfg`` is in pixels of the canvas; its size floor
    is left for :func:`resolve_glands`. Cells listed in the manifest are skipped."""
    from dataclasses import replace

    from tqdm import tqdm

    work.mkdir(parents=True, exist_ok=True)
    (work / "cells").mkdir(exist_ok=True)
    done = read_manifest(work)
    store = _WindowStore(work / "logits", grid, window_logits, has_tissue)
    decode_cfg = replace(icfg, min_size=0)
    rows, cols = grid.shape
    prev: _Cell | None = None
    with tqdm(total=len(grid), initial=len(done), desc=desc, unit="tile", disable=not progress,
              leave=False) as bar:
        for i in range(rows):
            prev = None
            for j in range(cols):
                k = i * cols + j
                if k in done:
                    prev = None
                    continue
                cell = _decode_cell(grid, store, i, j, channels, decode_cfg)
                n = 0
                if cell is not None:
                    n = int(cell.labels.max(initial=0))
                    left = prev if prev is not None and j > 0 and done.get(k - 1, 0) else None
                    if left is None and j > 0 and done.get(k - 1, 0):
                        left = _load_cell(work, k - 1)
                    up = _load_cell(work, k - cols) if i > 0 and done.get(k - cols, 0) else None
                    matches = _matches(grid, i, j, cell, left, up, k, cols)
                    v0, v1, u0, u1 = grid.core(i, j)
                    areas = np.bincount(cell.at(slice(v0, v1), slice(u0, u1)).ravel(), minlength=n + 1)
                    dtype = np.uint16 if n < 65536 else np.int32
                    with atomic_path(_cell_path(work, k)) as tmp, tmp.open("wb") as f:
                        np.savez_compressed(f, labels=cell.labels.astype(dtype), origin=np.array([cell.top, cell.left]),
                                            areas=areas, matches=np.asarray(matches, np.int64).reshape(-1, 3))
                _append_manifest(work, k, n)
                done[k] = n
                prev = cell if n else None
                for a, b in ((i - 1, j - 1), (i - 1, j), (i, j - 1), (i, j)):
                    if a >= 0 and b >= 0 and grid.last_user(a, b) == (i, j):
                        store.drop(a, b)
                bar.update(1)
                if on_cell is not None:
                    on_cell(k)
    shutil.rmtree(work / "logits", ignore_errors=True)
    return {"cells": len(grid), "computed_windows": store.computed, "computed_px": store.computed_px}


def windows_to_compute(grid: Grid, work: Path, has_tissue: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    """The windows :func:`stitch_cells` will compute, in the order it will ask for them: those
    with tissue around the tissue cells not yet in the manifest, first use first, less the
    ones an earlier run left on disk. Known ahead, they can be computed ahead (elsewhere)."""
    done = read_manifest(work)
    cols = grid.shape[1]
    order: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for k in range(len(grid)):
        i, j = divmod(k, cols)
        if k in done or not has_tissue(i, j):
            continue
        for a, b in grid.neighbours(i, j):
            if (a, b) not in seen and has_tissue(a, b) and not window_path(work / "logits", a, b).is_file():
                order.append((a, b))
            seen.add((a, b))
    return order


def _decode_cell(grid: Grid, store: _WindowStore, i: int, j: int, channels: tuple[str, ...],
                 cfg: InstanceConfig) -> _Cell | None:
    if not store.has_tissue(i, j):
        return None
    maps = blended_maps(grid, store, i, j, channels)
    if maps is None:
        return None
    labels = decode_instances(maps, cfg)
    if not labels.any():
        return None
    v0, v1, u0, u1 = grid.core(i, j)
    w0, w1, x0, x1 = grid.window(i, j)
    top, left = max(w0, v0 - 1), max(x0, u0 - 1)
    crop = labels[top - w0:min(w1, v1 + 1) - w0, left - x0:min(x1, u1 + 1) - x0]
    core = crop[v0 - top:v1 - top, u0 - left:u1 - left]
    if not core.any():
        return None
    return _Cell(np.ascontiguousarray(crop), top, left)


def _matches(grid: Grid, i: int, j: int, cell: _Cell, left: _Cell | None, up: _Cell | None,
             k: int, cols: int) -> list[tuple[int, int, int]]:
    """(neighbour cell, neighbour label, own label) for glands that go on across the left
    and upper borders."""
    v0, v1, u0, u1 = grid.core(i, j)
    out = []
    if left is not None:
        rows = slice(v0, v1)
        pairs = border_matches(left.at(rows, u0 - 1), left.at(rows, u0), cell.at(rows, u0), cell.at(rows, u0 - 1))
        out += [(k - 1, a, b) for a, b in pairs]
    if up is not None:
        cs = slice(u0, u1)
        pairs = border_matches(up.at(v0 - 1, cs), up.at(v0, cs), cell.at(v0, cs), cell.at(v0 - 1, cs))
        out += [(k - cols, a, b) for a, b in pairs]
    return out


# -- from local labels to glands -------------------------------------------------------------------------------------
@dataclass
class Glands:
    """The stitched glands: per finished cell, a lookup from its local labels to final ids
    (0 = dropped), and how many cells each final gland has pixels in."""

    luts: dict[int, np.ndarray]
    cells_of: np.ndarray  # final id -> number of cells holding part of it
    areas: np.ndarray  # final id -> area in canvas pixels
    count: int = 0
    dtype: type = field(default=np.uint16)


def resolve_glands(work: Path, grid: Grid, min_size: int) -> Glands:
    """Union-find over the recorded matches, the size floor on whole glands, final ids
    1..N in raster order of first appearance."""
    done = read_manifest(work)
    missing = [k for k in range(len(grid)) if k not in done]
    if missing:
        raise PathosegError(f"{len(missing)} tiles are not finished yet", work)
    offsets, total = {}, 0
    records = {}
    for k in sorted(done):
        if done[k]:
            offsets[k] = total
            total += done[k] + 1
            with np.load(_cell_path(work, k)) as z:
                records[k] = (z["areas"].astype(np.int64), z["matches"].astype(np.int64))
    parent = np.arange(total, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for k, (_, matches) in records.items():
        for other, a, b in matches.tolist():
            if other in offsets:
                ra, rb = find(offsets[other] + a), find(offsets[k] + b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(x) for x in range(total)], np.int64) if total else np.zeros(0, np.int64)
    area = np.zeros(total, np.int64)
    for k, (areas, _) in records.items():
        np.add.at(area, roots[offsets[k] + np.arange(1, len(areas))], areas[1:])
    final = np.zeros(total, np.int64)
    count = 0
    luts: dict[int, np.ndarray] = {}
    for k in sorted(records):  # raster order
        areas = records[k][0]
        lut = np.zeros(len(areas), np.int64)
        for local in range(1, len(areas)):
            r = roots[offsets[k] + local]
            if area[r] < max(1, min_size):
                continue
            if final[r] == 0:
                count += 1
                final[r] = count
            lut[local] = final[r]
        luts[k] = lut
    cells_of = np.zeros(count + 1, np.int64)
    areas_of = np.zeros(count + 1, np.int64)
    for k, (areas, _) in records.items():
        ids = luts[k][1:]
        present = (areas[1:] > 0) & (ids > 0)
        np.add.at(areas_of, ids[present], areas[1:][present])
        for g in np.unique(ids[present]):
            cells_of[g] += 1
    dtype = np.uint16 if count < 65536 else np.uint32
    return Glands(luts, cells_of, areas_of, count, dtype)


class _CoreCache:
    """Final-id labels of cell cores, a few at a time (least recently used dropped)."""

    def __init__(self, work: Path, grid: Grid, glands: Glands, capacity: int = 16) -> None:
        self.work, self.grid, self.glands, self.capacity = work, grid, glands, capacity
        self.cache: OrderedDict[int, np.ndarray | None] = OrderedDict()

    def core(self, k: int) -> np.ndarray | None:
        if k in self.cache:
            self.cache.move_to_end(k)
            return self.cache[k]
        lut = self.glands.luts.get(k)
        out = None
        if lut is not None and lut.any():
            i, j = divmod(k, self.grid.shape[1])
            v0, v1, u0, u1 = self.grid.core(i, j)
            cell = _load_cell(self.work, k)
            out = lut[cell.at(slice(v0, v1), slice(u0, u1))].astype(self.glands.dtype)
        self.cache[k] = out
        if len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return out

    def sample(self, vs: np.ndarray, us: np.ndarray) -> np.ndarray:
        """Final labels at canvas rows ``vs`` x cols ``us`` (sorted index arrays)."""
        out = np.zeros((len(vs), len(us)), self.glands.dtype)
        ci = np.searchsorted(self.grid.rows_at, vs, side="right") - 1
        cj = np.searchsorted(self.grid.cols_at, us, side="right") - 1
        cols = self.grid.shape[1]
        for a in np.unique(ci):
            rsel = np.flatnonzero(ci == a)
            for b in np.unique(cj):
                core = self.core(int(a) * cols + int(b))
                if core is None:
                    continue
                csel = np.flatnonzero(cj == b)
                v0, _, u0, _ = self.grid.core(int(a), int(b))
                out[np.ix_(rsel, csel)] = core[np.ix_(vs[rsel] - v0, us[csel] - u0)]
        return out


def stitched_labels(work: Path, grid: Grid, glands: Glands) -> np.ndarray:
    """The whole canvas as one label map (for tests and small regions; slides use the
    streaming writers)."""
    cache = _CoreCache(work, grid, glands)
    return cache.sample(np.arange(grid.height), np.arange(grid.width)).astype(np.int32)


# -- outputs -------------------------------------------------------------------------------------------------------
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


def mask_shape(mask: np.ndarray, top: int = 0, left: int = 0, simplify: float = 0.5):
    """The pixels of a boolean mask as one shapely (Multi)Polygon in canvas coordinates
    (pixel edges; holes kept), smoothed by at most ``simplify`` pixels."""
    import shapely
    from shapely.geometry.polygon import orient

    padded = np.pad(mask, ((0, 0), (1, 1)))
    r, c = np.nonzero(np.diff(padded.astype(np.int8), axis=1))
    starts, ends = c[0::2], c[1::2]  # np.nonzero is row-major, runs alternate start/end within a row
    rows = r[0::2]
    boxes = shapely.box(left + starts, top + rows, left + ends, top + rows + 1)
    shape = shapely.union_all(boxes)
    if simplify:
        shape = shape.simplify(simplify, preserve_topology=True)
    parts = [orient(p, 1.0) for p in getattr(shape, "geoms", [shape]) if p.area > 0]
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


def gland_feature(gland: int, shape, place: Placement) -> dict:
    from shapely.geometry import mapping

    geom = place.level0(shape)
    return {"type": "Feature", "geometry": mapping(geom),
            "properties": {"objectType": "annotation", "name": f"gland {gland}", "gland_id": gland,
                           "classification": dict(GLAND_CLASS),
                           "measurements": {"Area µm^2": round(geom.area * place.mpp**2, 2),
                                            "Perimeter µm": round(geom.length * place.mpp, 2)}}}


def write_geojson(path: Path, work: Path, grid: Grid, glands: Glands, place: Placement) -> int:
    """One feature per gland, streamed to disk; glands over several cells are put together
    from their pieces once the last piece is read."""
    cache = _CoreCache(work, grid, glands, capacity=2)
    pieces: dict[int, list[tuple[int, int, np.ndarray]]] = {}
    written = 0
    cols = grid.shape[1]
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')

        def emit(g: int, shape) -> None:
            nonlocal written
            f.write((",\n" if written else "") + json.dumps(gland_feature(g, shape, place)))
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
                    emit(g, mask_shape(piece, v0 + sy.start, u0 + sx.start))
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
    return mask_shape(mask, top, left)


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
    cache = _CoreCache(work, grid, glands)
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
    return _CoreCache(work, grid, glands).sample(vs, us).astype(np.int32)


# -- settings for resuming ---------------------------------------------------------------------------------------------
def prepare_work(work: Path, settings: dict) -> str | None:
    """Keep ``work`` when it was made with ``settings``; otherwise empty it and return the
    first setting that differs (None when nothing was there or nothing differs)."""
    path = work / SETTINGS
    changed = None
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
        changed = next((k for k in settings if old.get(k) != settings[k]), None)
        if changed is None:
            return None
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json(path, settings)
    return changed


@dataclass
class SlideRun:
    glands: int
    cells: int
    tissue_cells: int
    computed_windows: int
    tissue_mpx: float  # tissue area in megapixels at the working resolution
    computed_mpx: float  # pixels through the network (windows with tissue, overlaps included)
    seconds: float
    outputs: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def now() -> float:
    return time.perf_counter()


# -- a slide through a model ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlideConfig:
    tile: int = 1024  # window side at the working resolution
    margin: int | None = None  # overlap on each side; default max(32, tile // 16)
    tta: bool = False
    thumbnail: int = 2048  # longest side of the tissue-detection thumbnail and the overview
    mask_tile: int = 512  # tile side of the label TIFF

    def __post_init__(self) -> None:
        if self.tile < 6 * self.overlap or self.overlap < 1:
            raise PathosegError(f"--tile {self.tile} is too small for slides (at least {6 * max(1, self.overlap)} "
                                f"with an overlap of {self.overlap} px a side)")

    @property
    def overlap(self) -> int:
        return self.margin if self.margin is not None else max(32, self.tile // 16)


@dataclass(frozen=True)
class WindowRead:
    """A window of the working canvas as what is read for it: the level-0 rectangle
    (x, y, w, h) of the slide, resampled to (out_w, out_h) working pixels."""

    box: tuple[int, int, int, int]  # (v0, v1, u0, u1) on the canvas
    x: float
    y: float
    w: float
    h: float
    out_w: int
    out_h: int

    @classmethod
    def of(cls, box: tuple[int, int, int, int], place: Placement) -> WindowRead:
        v0, v1, u0, u1 = box
        return cls(box, place.x + u0 * place.kx, place.y + v0 * place.ky, (u1 - u0) * place.kx,
                   (v1 - v0) * place.ky, u1 - u0, v1 - v0)


def window_logits(model, slide, read: WindowRead, tta: bool, device="cpu") -> np.ndarray:
    """(C, h, w) float16 logits of one window: what every window source runs, here or on a
    Ray worker, so a slide's outputs do not depend on where its windows were computed."""
    import torch

    from pathoseg.engine.predict import forward_padded

    rgb = slide.read_scaled(read.x, read.y, read.w, read.h, read.out_w, read.out_h)
    x = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float().div_(255)
    with torch.inference_mode():
        return forward_padded(model, x, tta)[0].float().cpu().numpy().astype(np.float16)


class WindowSource(Protocol):
    """Computes the logits of a slide's windows, yielded in the order of ``reads``; it may
    compute ahead of what has been taken (a pool of workers), by a bounded number."""

    channels: tuple[str, ...]

    def logits(self, slide, reads: Sequence[WindowRead], tta: bool) -> Iterator[np.ndarray]: ...


@dataclass
class LocalWindows:
    """Windows through ``model`` in this process, one at a time, as they are taken."""

    model: Any
    device: Any = "cpu"

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.model.head.channels)

    def logits(self, slide, reads: Sequence[WindowRead], tta: bool) -> Iterator[np.ndarray]:
        self.model.eval()
        for read in reads:
            yield window_logits(self.model, slide, read, tta, self.device)


def _planned(stream: Iterator[np.ndarray], reads: Sequence[WindowRead]) -> WindowLogits:
    """The stitcher's ``box -> logits`` over a stream computed in a planned order; a request
    out of that order is a bug in :func:`windows_to_compute`, not something to paper over."""
    expected = iter(reads)

    def take(box: tuple[int, int, int, int]) -> np.ndarray:
        read = next(expected, None)
        if read is None or read.box != tuple(box):
            raise RuntimeError(f"window {box} asked for out of the planned order (expected {read})")
        return next(stream)

    return take


def slide_outputs(out: Path, stem: str) -> dict[str, Path]:
    return {"geojson": out / f"{stem}.geojson", "mask": out / f"{stem}.mask.tif",
            "overview": out / f"{stem}.overview.png", "work": out / f"{stem}.tiles"}


def predict_slide(model, slide, region, out: Path, model_mpp: float, scale: float, icfg: InstanceConfig,
                  cfg: SlideConfig = SlideConfig(), device="cpu", identity: dict | None = None,
                  progress: bool = True, on_cell: Callable[[int], None] | None = None,
                  windows: WindowSource | None = None) -> SlideRun:
    """Predict ``region`` (level-0 pixels) of an open :class:`~pathoseg.data.slides.Slide`
    at the model's working resolution (``model_mpp / scale`` µm/px) and write
    ``<stem>.geojson``, ``<stem>.mask.tif`` and ``<stem>.overview.png`` into ``out``.
    ``icfg`` is in native pixels of the model's training resolution. ``identity``
    (checkpoint hash, ...) joins the settings a resumed run must share. ``windows``
    computes the window logits (default: ``model`` on ``device`` here; ``model`` is not used
    otherwise); this process reads the thumbnail, stitches and writes the outputs."""
    import warnings

    from scipy import ndimage as ndi

    from pathoseg.data.images import write_rgb_png
    from pathoseg.data.slides import tissue_mask
    from pathoseg.viz.overlay import outline_instances

    windows = windows if windows is not None else LocalWindows(model, device)

    start = now()
    timings: dict[str, float] = {}
    work_mpp = model_mpp / scale
    ds = work_mpp / slide.mpp  # level-0 pixels per working pixel
    height, width = max(1, round(region.h / ds)), max(1, round(region.w / ds))
    grid = Grid(height, width, cfg.tile, cfg.overlap)
    place = Placement(region.x, region.y, region.w / width, region.h / height, slide.mpp)
    icfg_work = icfg.scaled(scale)  # model-native pixels -> working pixels

    paths = slide_outputs(out, slide.path.stem)
    stat = slide.path.stat()
    settings = {"slide": str(slide.path.resolve()), "slide_bytes": stat.st_size, "slide_mtime": stat.st_mtime,
                "region": [region.x, region.y, region.w, region.h], "slide_mpp": slide.mpp, "model_mpp": model_mpp,
                "scale": scale, "tile": cfg.tile, "margin": cfg.overlap, "tta": cfg.tta,
                "instances": asdict(icfg), **(identity or {})}
    changed = prepare_work(paths["work"], settings)
    if changed:
        warnings.warn(f"{slide.path}: {changed} differs from the unfinished earlier run; this slide starts over",
                      UserWarning, stacklevel=2)

    thumb, _ = slide.thumbnail(region, cfg.thumbnail)
    found = tissue_mask(thumb)
    tissue = ndi.binary_dilation(found, iterations=2)  # a little beyond the edge, where glands may start
    th, tw = tissue.shape
    timings["thumbnail_s"] = now() - start

    def has_tissue(a: int, b: int) -> bool:
        v0, v1, u0, u1 = grid.window(a, b)
        return bool(tissue[math.floor(v0 * th / height):math.ceil(v1 * th / height),
                           math.floor(u0 * tw / width):math.ceil(u1 * tw / width)].any())

    reads = [WindowRead.of(grid.window(a, b), place) for a, b in windows_to_compute(grid, paths["work"], has_tissue)]
    stream = windows.logits(slide, reads, cfg.tta)
    t = now()
    try:
        stats = stitch_cells(grid, _planned(stream, reads), windows.channels, icfg_work, paths["work"], has_tissue,
                             progress=progress, desc=slide.path.name, on_cell=on_cell)
    finally:
        getattr(stream, "close", lambda: None)()  # a pool stops computing ahead
    timings["cells_s"] = now() - t
    t = now()
    glands = resolve_glands(paths["work"], grid, icfg_work.min_size)
    write_geojson(paths["geojson"], paths["work"], grid, glands, place)
    description = {"pathoseg": "gland instance labels", "slide": slide.path.name,
                   "region": settings["region"], "mpp": slide.mpp, "glands": glands.count}
    write_label_tiff(paths["mask"], paths["work"], grid, glands, (region.w, region.h), slide.mpp, description,
                     cfg.mask_tile)
    overview = outline_instances(thumb, overview_labels(paths["work"], grid, glands, thumb.shape[:2]), width=2)
    write_rgb_png(paths["overview"], overview)
    timings["outputs_s"] = now() - t
    tissue_cells = sum(has_tissue(*divmod(k, grid.shape[1])) for k in range(len(grid)))
    shutil.rmtree(paths["work"], ignore_errors=True)
    tissue_mpx = float(found.sum()) * (height / th) * (width / tw) / 1e6
    return SlideRun(glands.count, len(grid), tissue_cells, stats["computed_windows"], tissue_mpx,
                    stats["computed_px"] / 1e6, now() - start,
                    {k: str(v) for k, v in paths.items() if k != "work"}, timings)
