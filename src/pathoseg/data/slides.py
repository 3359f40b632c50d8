"""Whole-slide images: pyramidal TIFF-based scans (SVS, NDPI, generic pyramidal TIFF, ...)
read through tiffslide, and through OpenSlide (``pip install openslide-python
openslide-bin``, in the ``slides`` extra) for what tiffslide cannot open: MRXS, SCN, VMS, ...

Everything here reads bounded pieces: a region at any resolution is read from the best
pyramid level in chunks, so neither a thumbnail nor a tile ever needs the whole slide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pathoseg.data.resolution import MPP_RANGE, check_mpp
from pathoseg.errors import PathosegError

if TYPE_CHECKING:
    from pathoseg.data.mpp_estimate import MppEstimate

# Formats that are slides whatever their size; .tif/.tiff are slides when pyramidal or huge.
SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".svslide", ".qptiff")
TIFF_SUFFIXES = (".tif", ".tiff")
PLAIN_TIFF_MAX_PIXELS = 10_000 * 10_000  # a single-level TIFF above this is read as a slide
_MAX_READ_SIDE = 2048  # level pixels per side of one read


def is_slide(path: str | Path) -> bool:
    """True for slide formats, and for TIFFs that are pyramidal or too large for a plain
    image; a TIFF that cannot be parsed is left to the image reader (which names the problem)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix not in TIFF_SUFFIXES or not path.is_file():
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            page = tf.pages[0]
            pyramidal = len(series.levels) > 1 or bool(page.subifds) or tf.is_svs or tf.is_ndpi
            return pyramidal or page.imagewidth * page.imagelength > PLAIN_TIFF_MAX_PIXELS
    except Exception:  # tifffile raises many types on bad data
        return False


SLIDE_BACKENDS = ("auto", "tiffslide", "openslide")


def _open_backend(path: Path, backend: str = "auto"):
    """(reader, backend name). ``auto``: tiffslide first — it reads the TIFF family (SVS,
    NDPI, generic pyramidal TIFF with SubIFD levels) with its whole pyramid and needs no
    system library — then OpenSlide, when installed, for what tiffslide cannot open (MRXS,
    VMS, SCN, ...)."""
    if backend not in SLIDE_BACKENDS:
        raise PathosegError(f"unknown slide backend {backend!r}; choose from {', '.join(SLIDE_BACKENDS)}", path)
    errors = []
    if backend in ("auto", "tiffslide"):
        import tiffslide

        try:
            return tiffslide.TiffSlide(str(path)), "tiffslide"
        except Exception as exc:  # tifffile/tiffslide raise many types on bad or foreign data
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}".rstrip(": "))
    try:
        import openslide  # the binding imports only where the OpenSlide library is installed
    except Exception:
        openslide = None
    if openslide is not None and backend in ("auto", "openslide"):
        try:
            return openslide.OpenSlide(str(path)), "openslide"
        except Exception as exc:
            errors.append(f"OpenSlide: {type(exc).__name__}")
    if backend == "openslide" and openslide is None:
        errors.append("OpenSlide is not installed")
    hint = "" if openslide is not None else "; non-TIFF formats (MRXS, VMS, ...) need openslide-python + openslide-bin"
    raise PathosegError(f"not a readable slide ({'; '.join(errors)}){hint}", path)


@dataclass(frozen=True)
class Region:
    """A rectangle in level-0 pixels."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str, path: str | Path | None = None) -> Region:
        try:
            x, y, w, h = (int(v) for v in text.split(","))
        except ValueError:
            raise PathosegError(f"--region {text!r} is not x,y,w,h in level-0 pixels", path) from None
        return cls(x, y, w, h)


class Slide:
    """One open slide: level geometry, µm/px and region reads as RGB uint8 arrays."""

    def __init__(self, path: str | Path, mpp: float | None = None, backend: str = "auto",
                 require_mpp: bool = True) -> None:
        """``mpp`` overrides the metadata's µm/px; without either, ``require_mpp`` False leaves
        ``self.mpp`` None for the caller to estimate (``--mpp auto``), else it is an error."""
        self.path = Path(path)
        if not self.path.is_file():
            raise PathosegError("file not found", self.path)
        self._reader, self.backend = _open_backend(self.path, backend)
        try:
            self.dimensions: tuple[int, int] = tuple(int(v) for v in self._reader.dimensions)
            self.level_dimensions = [tuple(int(v) for v in d) for d in self._reader.level_dimensions]
            self.level_downsamples = [float(d) for d in self._reader.level_downsamples]
            properties = dict(self._reader.properties)
        except Exception as exc:
            self.close()
            raise PathosegError(f"not a readable slide ({type(exc).__name__})", self.path) from None
        if min(self.dimensions) <= 0:
            self.close()
            raise PathosegError("slide has no pixels", self.path)
        self.mpp_estimate = None  # the MppEstimate behind self.mpp, where it was estimated
        try:
            self.mpp: float | None = (check_mpp(mpp, "--mpp", self.path) if mpp is not None
                                      else self._metadata_mpp(properties, require_mpp))
        except PathosegError:
            self.close()
            raise

    def _metadata_mpp(self, properties: dict, required: bool = True) -> float | None:
        values = []
        for axis in ("x", "y"):
            for prefix in ("openslide", "tiffslide"):
                value = properties.get(f"{prefix}.mpp-{axis}")
                if value not in (None, "", 0, "0"):
                    values.append(value)
                    break
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            numbers = []
        if not numbers or not all(math.isfinite(v) and v > 0 for v in numbers):
            if not required:
                return None
            raise PathosegError("slide has no resolution metadata (µm/px); pass --mpp (e.g. --mpp 0.25 for a "
                                "40x scan, 0.5 for 20x), or --mpp auto to estimate it from the tissue", self.path)
        mpp = math.sqrt(numbers[0] * numbers[-1])
        lo, hi = MPP_RANGE
        if not lo <= mpp <= hi:
            raise PathosegError(f"slide resolution {mpp:.4g} µm/px (from its metadata) is outside {lo:g}–{hi:g} "
                                "µm/px; pass --mpp", self.path)
        return mpp

    def estimate_missing_mpp(self, estimator: Callable[[np.ndarray], MppEstimate]) -> None:
        """Without resolution metadata (``mpp`` None): the µm/px its tissue gives
        (:func:`estimate_slide_mpp`), kept in ``mpp_estimate`` too; a one-line error when
        it cannot be estimated with confidence."""
        if self.mpp is None:
            self.mpp_estimate = estimate_slide_mpp(self, estimator)
            self.mpp = self.mpp_estimate.mpp

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        reader, self._reader = getattr(self, "_reader", None), None
        if reader is not None:
            reader.close()

    @property
    def region(self) -> Region:
        return Region(0, 0, *self.dimensions)

    def check_region(self, region: Region) -> Region:
        w, h = self.dimensions
        if region.w <= 0 or region.h <= 0:
            raise PathosegError(f"--region {region.x},{region.y},{region.w},{region.h} is empty", self.path)
        if region.x < 0 or region.y < 0 or region.x + region.w > w or region.y + region.h > h:
            raise PathosegError(f"--region {region.x},{region.y},{region.w},{region.h} lies outside the slide "
                                f"({w}x{h} level-0 pixels)", self.path)
        return region

    def best_level(self, downsample: float) -> int:
        """The smallest pyramid level that is at least as fine as ``downsample``."""
        fine = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * 1.01]
        return max(fine, key=lambda i: self.level_downsamples[i]) if fine else 0

    def _read_level(self, level: int, lx: int, ly: int, lw: int, lh: int) -> np.ndarray:
        """Level pixels [lx, lx+lw) x [ly, ly+lh), clipped to the level (the caller keeps inside)."""
        d = self.level_downsamples[level]
        loc = (round(lx * d), round(ly * d))
        try:
            if self.backend == "tiffslide":
                arr = np.asarray(self._reader.read_region(loc, level, (lw, lh), as_array=True))
            else:
                rgba = np.asarray(self._reader.read_region(loc, level, (lw, lh)))
                alpha = rgba[..., 3:4].astype(np.float32) / 255  # transparent = no scan there: white
                arr = (rgba[..., :3] * alpha + 255 * (1 - alpha) + 0.5).astype(np.uint8)
        except Exception as exc:
            raise PathosegError(f"cannot read slide pixels at level {level} ({type(exc).__name__}: {exc})",
                                self.path) from None
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.dtype != np.uint8:
            raise PathosegError(f"unsupported slide pixel type {arr.dtype} (8-bit RGB expected)", self.path)
        return np.ascontiguousarray(arr[..., :3])

    def read_scaled(self, x: float, y: float, w: float, h: float, out_w: int, out_h: int) -> np.ndarray:
        """The level-0 rectangle (x, y, w, h) as an (out_h, out_w, 3) array, read from the best
        level for its downsample (area averaging when shrinking)."""
        downsample = min(w / out_w, h / out_h)
        level = self.best_level(downsample)
        d = self.level_downsamples[level]
        lw_max, lh_max = self.level_dimensions[level]
        lx0, ly0 = max(0, math.floor(x / d + 1e-6)), max(0, math.floor(y / d + 1e-6))
        lx1, ly1 = min(lw_max, math.ceil((x + w) / d - 1e-6)), min(lh_max, math.ceil((y + h) / d - 1e-6))
        if lx1 <= lx0 or ly1 <= ly0:
            return np.full((out_h, out_w, 3), 255, np.uint8)
        arr = self._read_level(level, lx0, ly0, lx1 - lx0, ly1 - ly0)
        if arr.shape[:2] == (out_h, out_w):
            return arr
        shrink = arr.shape[0] >= out_h and arr.shape[1] >= out_w
        return cv2.resize(arr, (out_w, out_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def read_chunked(self, region: Region, out_w: int, out_h: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """``region`` at (out_w, out_h) pixels as (top, left, chunk) pieces, each read from the
        best level with at most about 2048 level pixels a side, so memory stays bounded."""
        ds = region.w / out_w
        d = self.level_downsamples[self.best_level(ds)]
        step = max(16, int(_MAX_READ_SIDE * d / ds))
        for top in range(0, out_h, step):
            for left in range(0, out_w, step):
                ch, cw = min(step, out_h - top), min(step, out_w - left)
                yield top, left, self.read_scaled(region.x + left * ds, region.y + top * ds, cw * ds, ch * ds, cw, ch)

    def thumbnail(self, region: Region, max_side: int) -> tuple[np.ndarray, float]:
        """``region`` shrunk to at most ``max_side`` pixels a side, and its downsample (level-0
        pixels per thumbnail pixel)."""
        ds = max(1.0, max(region.w, region.h) / max_side)
        out_w, out_h = max(1, round(region.w / ds)), max(1, round(region.h / ds))
        thumb = np.empty((out_h, out_w, 3), np.uint8)
        for top, left, chunk in self.read_chunked(region, out_w, out_h):
            thumb[top:top + chunk.shape[0], left:left + chunk.shape[1]] = chunk
        return thumb, region.w / out_w


def tissue_mask(rgb: np.ndarray, min_area: int = 16) -> np.ndarray:
    """Tissue at low resolution: Otsu on the (median-blurred) HSV saturation, the threshold
    kept between 0.08 and 0.16 so that pale tissue counts and glass never does; holes
    filled, specks under ``min_area`` pixels dropped."""
    from scipy import ndimage as ndi
    from skimage import morphology
    from skimage.filters import threshold_otsu

    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    if min(sat.shape) >= 5:
        sat = cv2.medianBlur(sat, 5)
    t = threshold_otsu(sat) if sat.max() > sat.min() else 255
    mask = sat > float(np.clip(t, 20, 40))
    mask = ndi.binary_fill_holes(ndi.binary_closing(mask, iterations=2, border_value=0) | mask)
    return morphology.remove_small_objects(mask, max_size=min_area) if mask.any() else mask


@dataclass(frozen=True)
class TileSpec:
    """Tiles of a slide to correct in the app: ``side`` pixels square at the target
    resolution, at least ``min_tissue`` of them tissue, at most ``max_tiles`` per slide."""

    side: int = 512
    max_tiles: int = 16
    min_tissue: float = 0.5

    def __post_init__(self) -> None:
        if self.side < 32 or self.max_tiles < 1 or not 0 <= self.min_tissue <= 1:
            raise PathosegError(f"bad tiles: side {self.side} (>= 32), at most {self.max_tiles} (>= 1), "
                                f"tissue share {self.min_tissue} (0-1)")


def tissue_tiles(slide: Slide, region: Region, target_mpp: float, spec: TileSpec = TileSpec()) -> list[Region]:
    """Level-0 squares of ``region`` that hold ``spec.side`` pixels at ``target_mpp`` each,
    on a grid, with at least ``spec.min_tissue`` tissue (Otsu on a thumbnail); more than
    ``spec.max_tiles`` are thinned evenly along the grid order, so the picks spread over the
    tissue and the same slide always gives the same tiles."""
    side0 = spec.side * target_mpp / slide.mpp  # level-0 pixels per tile side
    cols, rows = int(region.w // side0), int(region.h // side0)
    if cols == 0 or rows == 0:
        raise PathosegError(f"the region ({region.w}x{region.h} level-0 px) is smaller than one {spec.side} px tile at "
                            f"{target_mpp:g} µm/px", slide.path)
    thumb, ds = slide.thumbnail(region, 2048)
    tissue = tissue_mask(thumb)
    tiles = []
    for r in range(rows):
        for c in range(cols):
            x, y = c * side0, r * side0
            t = tissue[int(y / ds):max(int(y / ds) + 1, int((y + side0) / ds)),
                       int(x / ds):max(int(x / ds) + 1, int((x + side0) / ds))]
            if t.size and t.mean() >= spec.min_tissue:
                tiles.append(Region(region.x + round(x), region.y + round(y), round(side0), round(side0)))
    if len(tiles) > spec.max_tiles:
        tiles = [tiles[k] for k in np.linspace(0, len(tiles) - 1, spec.max_tiles).round().astype(int)]
    return tiles


def write_pyramidal_tiff(path: str | Path, rgb: np.ndarray, mpp: float | None = None, tile: int = 256,
                         min_side: int = 256, compression: str = "zlib") -> Path:
    """Write an RGB array as a tiled pyramidal TIFF (levels halved down to ``min_side``,
    stored as SubIFDs) that tiffslide and OpenSlide read as a slide; ``mpp`` goes into the
    resolution tags (none written without it). For tests, demos and converting images."""
    import tifffile

    from pathoseg.io import atomic_path

    levels = [np.ascontiguousarray(rgb)]
    while min(levels[-1].shape[:2]) // 2 >= min_side:
        prev = levels[-1]
        levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes > 2**31) as tif:
        for n, level in enumerate(levels):
            kwargs: dict = {"tile": (tile, tile), "compression": compression, "photometric": "rgb", "metadata": None}
            if mpp is not None:
                f = rgb.shape[1] / level.shape[1]
                kwargs |= {"resolution": (1e4 / (mpp * f), 1e4 / (mpp * f)), "resolutionunit": "CENTIMETER"}
            if n == 0:
                kwargs["subifds"] = len(levels) - 1
            else:
                kwargs["subfiletype"] = 1
            tif.write(level, **kwargs)
    return Path(path)


SLIDE_MPP_TILE = (768, 512)  # level-0 px (w, h) read per window for --mpp auto: up to 16 of the estimator's own


def estimate_slide_mpp(slide: Slide, estimator: Callable[[np.ndarray], MppEstimate], tiles: int = 8) -> MppEstimate:
    """``--mpp auto`` for a slide without resolution metadata: the learned estimator on up to
    ``tiles`` level-0 windows spread over the tissue (found on a thumbnail), by ``estimator``
    (:class:`pathoseg.engine.mpp_regressor.MppRegressor`); their median in
    log, with their median confidence when at least half of them are confident. A one-line
    error naming the slide when they are not: a whole slide at a guessed scale is not worth
    predicting."""
    from pathoseg.data.mpp_estimate import MppEstimate

    thumb, ds = slide.thumbnail(slide.region, 1024)
    tissue = tissue_mask(thumb)
    tw, th = SLIDE_MPP_TILE
    # Centres whose whole window is tissue (cv2: a rectangle erodes in separable passes).
    window = np.ones((max(1, round(th / ds)), max(1, round(tw / ds))), np.uint8)
    inner = cv2.erode(tissue.astype(np.uint8), window, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    ys, xs = np.nonzero(inner if inner.any() else tissue)
    if len(ys) == 0:
        raise PathosegError("no tissue found to estimate the resolution from; pass --mpp", slide.path)
    width, height = slide.dimensions
    picks = np.unique(np.linspace(0, len(ys) - 1, tiles).round().astype(int))
    estimates = []
    for k in picks:
        x = int(np.clip(xs[k] * ds - tw / 2, 0, max(0, width - tw)))
        y = int(np.clip(ys[k] * ds - th / 2, 0, max(0, height - th)))
        w, h = min(tw, width), min(th, height)
        estimates.append(estimator(slide.read_scaled(x, y, w, h, w, h)))
    confident = [e for e in estimates if e.confident()]
    if 2 * len(confident) < len(estimates):
        raise PathosegError(f"resolution not estimated with confidence ({len(confident)} of {len(estimates)} "
                            "tissue windows); pass --mpp", slide.path)
    mpp = float(np.exp(np.median(np.log([e.mpp for e in confident]))))
    confidence = float(np.median([e.confidence for e in confident]))
    return MppEstimate(round(mpp, 4), round(confidence, 3), 0, method="encoder",
                       note=f"{len(confident)} of {len(estimates)} tissue windows")
