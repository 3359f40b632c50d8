"""``pathoseg predict``: images and whole slides in; masks, instance label maps, overlays
(images) or GeoJSON, a pyramidal label TIFF and an overview (slides) out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pathoseg.data.images import is_image_file, read_image, write_label_png, write_rgb_png
from pathoseg.data.mpp_estimate import MppEstimate, MppEstimateConfig, auto_mpp
from pathoseg.data.resolution import check_mpp, checkpoint_mpp, resize_factor, um2_to_px
from pathoseg.data.slides import SLIDE_SUFFIXES, Region, Slide, is_slide
from pathoseg.engine.instances import InstanceConfig
from pathoseg.engine.mpp_regressor import MppRegressor
from pathoseg.engine.predict import PredictConfig, predict_instances
from pathoseg.errors import PathosegError
from pathoseg.io import file_digest as file_digest  # re-exported: it moved to io for the engine
from pathoseg.models import GlandSegmenter
from pathoseg.viz.overlay import mask_overlay


def collect_inputs(sources: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(plain images, slides) named by files and folders; anything else is an error naming it."""
    images: list[Path] = []
    slides: list[Path] = []
    for src in sources:
        path = Path(src)
        if path.is_file():
            if is_slide(path):
                slides.append(path)
            elif is_image_file(path):
                images.append(path)
            else:
                raise PathosegError("not an image or slide file", path)
        elif path.is_dir():
            found = 0
            for f in sorted(path.iterdir()):
                if f.is_file() and (f.suffix.lower() in SLIDE_SUFFIXES or is_slide(f)):
                    slides.append(f)
                    found += 1
                elif is_image_file(f):
                    images.append(f)
                    found += 1
            if not found:
                raise PathosegError("folder holds no images or slides", path)
        else:
            raise PathosegError("no such file or folder", path)
    stems = [p.stem for p in slides]
    dup = next((p for p in slides if stems.count(p.stem) > 1), None)
    if dup is not None:
        raise PathosegError(f"two slides share the name {dup.stem!r}; their outputs would collide", dup)
    return images, slides


def model_mpp_of(ckpt, given: float | None, path: str | Path) -> float | None:
    """The µm/px at native resolution of the model's training data: ``--model-mpp``, the
    checkpoint's record, 0.62 for GlaS-trained checkpoints from before it, else None."""
    if given is not None:
        return check_mpp(given, "--model-mpp", path)
    return checkpoint_mpp(ckpt)


def need_model_mpp(model_mpp: float | None, path: str | Path, why: str) -> float:
    if model_mpp is None:
        raise PathosegError(f"the checkpoint does not record the µm/px it was trained at, needed {why}; "
                            "pass --model-mpp", path)
    return model_mpp


def resolution_configs(pcfg: PredictConfig, icfg: InstanceConfig, input_mpp: float | None,
                       model_mpp: float | None) -> tuple[PredictConfig, InstanceConfig]:
    """Prediction settings for images at ``input_mpp`` µm/px: resized by input µm/px /
    model µm/px × working scale, decoder sizes converted to the input's pixels. Unchanged
    when the input's resolution is unknown (taken to be the model's)."""
    if input_mpp is None or model_mpp is None:
        return pcfg, icfg
    factor = resize_factor(input_mpp, model_mpp, pcfg.scale)
    return replace(pcfg, scale=factor), icfg.scaled(model_mpp / input_mpp)


def min_size_from_area(icfg: InstanceConfig, area_um2: float | None, model_mpp: float | None,
                       path: str | Path) -> InstanceConfig:
    """``--min-area`` (µm²) as the decoder's size floor in native pixels of the model."""
    if area_um2 is None:
        return icfg
    if area_um2 < 0:
        raise PathosegError(f"--min-area {area_um2} is negative", path)
    return replace(icfg, min_size=um2_to_px(area_um2, need_model_mpp(model_mpp, path, "for --min-area")))


def estimate_input_mpps(images: Sequence[Path], model_mpp: float,
                        cfg: MppEstimateConfig | None = None) -> dict[Path, tuple[float, MppEstimate]]:
    """:func:`auto_mpp` for every image, before anything is predicted (the learned estimator)."""
    estimator = MppRegressor()
    return {path: auto_mpp(path, read_image(path), model_mpp, cfg, estimator) for path in images}


def estimate_line(path: Path, used_mpp: float, est: MppEstimate, model_mpp: float) -> str | None:
    """What ``--mpp auto`` reports for one image (None where it warned instead)."""
    if not est.confident() or est.mpp is None:
        return None
    kept = f"; within {MppEstimateConfig.same_within:.0%} of the model's {model_mpp:g}, not resampled" \
        if used_mpp == model_mpp else ""
    return f"estimated {est.mpp:.2f} µm/px (confidence {est.confidence:.1f}) for {path.name}{kept}"


def predict_files(model: GlandSegmenter, images: Sequence[Path], out: Path, pcfg: PredictConfig,
                  icfg: InstanceConfig, device: torch.device, progress: bool = True,
                  input_mpps: Mapping[Path, float] | None = None, model_mpp: float | None = None) -> list[Path]:
    """Write ``masks/<stem>.png`` (0/255), ``instances/<stem>.png`` and ``overlays/<stem>.png``;
    ``input_mpps`` (µm/px per image, e.g. from :func:`estimate_input_mpps`) resamples each
    image from its own resolution to ``model_mpp``'s."""
    written = []
    for path in tqdm(images, desc="predicting", unit="img", disable=not progress, leave=False):
        image = read_image(path)
        image_pcfg, image_icfg = (resolution_configs(pcfg, icfg, input_mpps.get(path), model_mpp)
                                  if input_mpps else (pcfg, icfg))
        labels, _ = predict_instances(model, image, image_pcfg, image_icfg, device)
        write_label_png(out / "masks" / f"{path.stem}.png", (labels > 0).astype(np.uint8) * 255)
        write_label_png(out / "instances" / f"{path.stem}.png", labels)
        write_rgb_png(out / "overlays" / f"{path.stem}.png", mask_overlay(image, labels))
        written.append(out / "masks" / f"{path.stem}.png")
    return written


def open_slides(paths: Sequence[Path], mpp: float | None, region: str | None,
                estimate: bool = False) -> list[tuple[Slide, Region]]:
    """Open every slide and check its resolution and the region before anything is written;
    with ``estimate`` (``--mpp auto``) a slide without resolution metadata gets the one its
    tissue gives (:meth:`~pathoseg.data.slides.Slide.estimate_missing_mpp`)."""
    opened: list[tuple[Slide, Region]] = []
    estimator = MppRegressor()  # its encoder loads only if a slide needs it
    try:
        for path in paths:
            slide = Slide(path, mpp, require_mpp=not estimate)
            opened.append((slide, slide.region))
            slide.estimate_missing_mpp(estimator)
            if region is not None:
                opened[-1] = (slide, slide.check_region(Region.parse(region, path)))
    except BaseException:
        for slide, _ in opened:
            slide.close()
        raise
    return opened


def slide_config(tile: int | None, tta: bool, path: str | Path | None = None):
    """Slide settings from the command line's ``--tile`` (default 1024) and ``--tta``; a tile
    too small for the overlap is a one-line error naming ``path``."""
    from pathoseg.engine.wsi.run import SlideConfig

    try:
        return SlideConfig(tile=tile or SlideConfig.tile, tta=tta)
    except PathosegError as exc:
        raise PathosegError(str(exc), path) from None


def predict_slides(model: GlandSegmenter, slides: Sequence[tuple[Slide, Region]], out: Path, model_mpp: float,
                   scale: float, icfg: InstanceConfig, device: torch.device, cfg=None,
                   identity: dict | None = None, progress: bool = True, windows=None) -> list:
    """Each slide through :func:`pathoseg.engine.wsi.run.predict_slide` into ``out``
    (``cfg``: a :class:`~pathoseg.engine.wsi.run.SlideConfig`, default :func:`slide_config`;
    ``windows``: where the window logits are computed, default ``model`` here)."""
    from pathoseg.engine.wsi.run import predict_slide

    cfg = cfg or slide_config(None, False)
    runs = []
    try:
        for slide, region in slides:
            runs.append(predict_slide(model, slide, region, out, model_mpp, scale, icfg, cfg, device, identity,
                                      progress, windows=windows))
    finally:
        for slide, _ in slides:
            slide.close()
    return runs
