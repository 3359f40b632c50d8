"""A slide through a model: settings for resuming, window reads, and :func:`predict_slide`,
which runs the grid, stitching and outputs."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pathoseg.engine.instances import InstanceConfig
from pathoseg.engine.wsi.grid import Grid, WindowLogits, default_margin
from pathoseg.engine.wsi.outputs import Placement, overview_labels, write_geojson, write_label_tiff
from pathoseg.engine.wsi.stitch import resolve_glands, stitch_cells, windows_to_compute
from pathoseg.errors import PathosegError
from pathoseg.io import write_json

SETTINGS = "settings.json"


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
        return self.margin if self.margin is not None else default_margin(self.tile)


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
