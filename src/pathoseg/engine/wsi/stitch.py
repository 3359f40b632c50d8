"""Stitching: each cell decoded on its window, labels matched across core borders so a gland
cut by a border is one gland, finished cells written and listed in a manifest (resume)."""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathoseg.engine.instances import InstanceConfig, decode_instances
from pathoseg.engine.wsi.grid import Grid, WindowLogits, WindowStore, blended_maps, window_path
from pathoseg.errors import PathosegError
from pathoseg.io import atomic_path

MANIFEST = "manifest.jsonl"


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
    touching = pair_counts(left_own[touch], right_own[touch])
    agreed = pair_counts(left_own[agree], right_own[agree])
    return [pair for pair, n in touching.items() if agreed.get(pair, 0) * 2 >= n]


def pair_counts(a: np.ndarray, b: np.ndarray) -> dict[tuple[int, int], int]:
    if not len(a):
        return {}
    pairs, counts = np.unique(np.stack([a, b]), axis=1, return_counts=True)
    return {(int(x), int(y)): int(n) for (x, y), n in zip(pairs.T, counts, strict=True)}


@dataclass
class Cell:
    """A finished cell: its labels over core ± 1 px (clipped to its window) and where they lie."""

    labels: np.ndarray
    top: int
    left: int

    def at(self, rows: slice | int, cols: slice | int) -> np.ndarray:
        """Labels at canvas rows/cols (slices or single indices, inside core ± 1 px)."""
        def shift(s, off):
            return slice(s.start - off, s.stop - off) if isinstance(s, slice) else s - off
        return self.labels[shift(rows, self.top), shift(cols, self.left)]


def cell_path(work: Path, k: int) -> Path:
    return work / "cells" / f"{k}.npz"


def load_cell(work: Path, k: int) -> Cell:
    with np.load(cell_path(work, k)) as z:
        return Cell(z["labels"].astype(np.int32), int(z["origin"][0]), int(z["origin"][1]))


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
        if n == 0 or cell_path(work, k).is_file():
            done[k] = n
    return done


def append_manifest(work: Path, k: int, n: int) -> None:
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
    store = WindowStore(work / "logits", grid, window_logits, has_tissue)
    decode_cfg = replace(icfg, min_size=0)
    rows, cols = grid.shape
    prev: Cell | None = None
    with tqdm(total=len(grid), initial=len(done), desc=desc, unit="tile", disable=not progress,
              leave=False) as bar:
        for i in range(rows):
            prev = None
            for j in range(cols):
                k = i * cols + j
                if k in done:
                    prev = None
                    continue
                cell = decode_cell(grid, store, i, j, channels, decode_cfg)
                n = 0
                if cell is not None:
                    n = int(cell.labels.max(initial=0))
                    left = prev if prev is not None and j > 0 and done.get(k - 1, 0) else None
                    if left is None and j > 0 and done.get(k - 1, 0):
                        left = load_cell(work, k - 1)
                    up = load_cell(work, k - cols) if i > 0 and done.get(k - cols, 0) else None
                    matches = match_borders(grid, i, j, cell, left, up, k, cols)
                    v0, v1, u0, u1 = grid.core(i, j)
                    areas = np.bincount(cell.at(slice(v0, v1), slice(u0, u1)).ravel(), minlength=n + 1)
                    dtype = np.uint16 if n < 65536 else np.int32
                    with atomic_path(cell_path(work, k)) as tmp, tmp.open("wb") as f:
                        np.savez_compressed(f, labels=cell.labels.astype(dtype), origin=np.array([cell.top, cell.left]),
                                            areas=areas, matches=np.asarray(matches, np.int64).reshape(-1, 3))
                append_manifest(work, k, n)
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


def decode_cell(grid: Grid, store: WindowStore, i: int, j: int, channels: tuple[str, ...],
                 cfg: InstanceConfig) -> Cell | None:
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
    return Cell(np.ascontiguousarray(crop), top, left)


def match_borders(grid: Grid, i: int, j: int, cell: Cell, left: Cell | None, up: Cell | None,
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
            with np.load(cell_path(work, k)) as z:
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


class CoreCache:
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
            cell = load_cell(self.work, k)
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
