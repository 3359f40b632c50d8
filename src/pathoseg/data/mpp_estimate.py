"""``--mpp auto``: an H&E image's µm/px estimated from the size of its nuclei.

Nuclei of colon tissue vary little in size, so their size in pixels tells the resolution:

1. the haematoxylin channel (colour deconvolution, :func:`skimage.color.rgb2hed`) of the
   tissue (not glass), thresholded by Otsu's method: nuclei against the rest; a 3×3 opening
   parts nuclei that touch by a pixel or two;
2. every blob's equivalent radius √(area/π); the round ones are kept (area ≤
   ``max_compactness`` × π r², r the blob's inscribed radius: chains of merged nuclei are not
   round), and their area-weighted mean between the 40th and 60th percentiles is the
   image's nucleus radius;
3. µm/px = ``reference_radius_um`` / that radius, the reference being what the same
   measurement gives on the GlaS *training* images at 0.62 µm/px.

Fixed pixel sizes (the opening, the smallest blob) mean something else at each resolution,
so the measurement is repeated on the image resampled to the resolution the first pass
found (``passes``): the last measurement is always made with nuclei at about the reference's
size in pixels, where it was calibrated. An image that had to be enlarged for it is blurred
by its coarse pixels, which makes thresholded nuclei look larger; that bias grows with the
enlargement and is divided out (``coarse_bias``, fitted on training images shrunk by known
factors). ``python bench/mpp_estimate.py --calibrate`` measures both numbers.

The confidence (0–1) grows with the number of round nuclei measured
(``full_confidence_nuclei``) and falls with the spread of their sizes: a blank image, glass,
or something that is not H&E tissue has few nuclei or sizes all over the place. Validation
on GlaS test images resampled by known factors: ``bench/mpp_estimate.py``,
docs/benchmarks.md.

``--mpp auto`` itself uses the learned estimator (:mod:`pathoseg.engine.mpp_regressor`), which
is right more often (~92 % against ~70 % within ±15 %); this module keeps the nucleus
measurement (a transparent second opinion, compared in the benchmark), the estimate's type and
:func:`auto_mpp`, which decides what to do with either estimator's answer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu

from pathoseg.data.resolution import MPP_RANGE, resample_image


class MppEstimateWarning(UserWarning):
    """``--mpp auto`` could not estimate an image's resolution with confidence."""


@dataclass(frozen=True)
class MppEstimateConfig:
    # The nucleus radius (below) of the GlaS training images at 0.62 µm/px, and the
    # exponent of the bias of enlarged coarse images: `python bench/mpp_estimate.py --calibrate`.
    reference_radius_um: float = 2.486
    coarse_bias: float = 0.257
    # The nucleus radius is the area-weighted mean of the round nuclei's radii between these
    # weighted quantiles (about the median, without a median's jumps between few blobs): on the
    # training images it varied least from image to image of the windows tried (0–25 % to 50–90 %).
    lower_quantile: float = 0.4
    upper_quantile: float = 0.6
    max_compactness: float = 2.0  # area / (π r²): 1 for a disc; merged chains of nuclei are more
    min_area_px: int = 6  # at the reference's size in pixels: smaller blobs are noise
    passes: int = 2  # measure, resample to the resolution found, measure again
    full_confidence_nuclei: int = 100  # this many round nuclei give full confidence on count
    max_spread: float = 1.5  # interquartile range of ln(radius) at which confidence reaches 0
    min_confidence: float = 0.5  # below this, --mpp auto falls back to the model's resolution
    # An estimate this close to the model's resolution is taken as the model's: the estimate is
    # no more precise than that (bench/mpp_estimate.py), and resampling by a few per cent only blurs.
    same_within: float = 0.15
    tissue_od: float = 0.15  # pixels whose optical density (summed over RGB) is below are glass
    reference_mpp: float = 0.62  # the calibration images' resolution (GlaS)


@dataclass(frozen=True)
class MppEstimate:
    mpp: float | None  # µm/px; None when nothing could be measured
    confidence: float  # 0–1
    n_nuclei: int  # round nuclei measured (last pass); 0 for the encoder's estimate
    method: str = "nuclei"  # or "encoder" (pathoseg.engine.mpp_regressor)
    note: str = ""  # why the confidence is low, when the estimator knows

    def confident(self, cfg: MppEstimateConfig = MppEstimateConfig()) -> bool:
        return self.mpp is not None and self.confidence >= cfg.min_confidence


@dataclass(frozen=True)
class NucleusRadii:
    radius_px: float  # area-weighted mean equivalent radius of the round nuclei about the median
    spread: float  # weighted interquartile range of their ln(radius)
    count: int


def haematoxylin(image: np.ndarray, tissue_od: float = MppEstimateConfig.tissue_od) -> tuple[np.ndarray, np.ndarray]:
    """(haematoxylin optical density, tissue mask) of an RGB uint8 image."""
    rgb = np.asarray(image)[..., :3]
    h = rgb2hed(rgb)[..., 0].astype(np.float32)
    optical_density = -np.log(np.maximum(rgb.astype(np.float32), 1.0) / 255.0).sum(axis=-1)
    return h, optical_density > tissue_od


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return values[order][np.minimum(np.searchsorted(cum, np.asarray(qs) * cum[-1]), len(values) - 1)]


def nucleus_radii(h: np.ndarray, tissue: np.ndarray, cfg: MppEstimateConfig) -> NucleusRadii | None:
    """Round nuclei of a haematoxylin image, measured; None when there are none."""
    values = h[tissue]
    if values.size < cfg.min_area_px or float(values.max() - values.min()) < 1e-6:
        return None
    nuclei = ndi.binary_opening((h > threshold_otsu(values)) & tissue)
    labels, n = ndi.label(nuclei)
    if n == 0:
        return None
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    inscribed = np.asarray(ndi.maximum(ndi.distance_transform_edt(nuclei), labels, np.arange(1, n + 1)))
    round_ = (area >= cfg.min_area_px) & (area <= cfg.max_compactness * math.pi * inscribed**2)
    if not round_.any():
        return None
    area = area[round_]
    radius = np.sqrt(area / math.pi)
    q1, q3 = _weighted_quantiles(radius, area, (0.25, 0.75))
    lo, hi = _weighted_quantiles(radius, area, (cfg.lower_quantile, cfg.upper_quantile))
    middle = (radius >= lo) & (radius <= hi)
    return NucleusRadii(float(np.average(radius[middle], weights=area[middle])), float(math.log(q3 / q1)),
                        int(round_.sum()))


def _confidence(found: NucleusRadii, cfg: MppEstimateConfig) -> float:
    on_count = min(1.0, found.count / cfg.full_confidence_nuclei)
    on_spread = max(0.0, 1.0 - found.spread / cfg.max_spread)
    return round(on_count * on_spread, 3)


@dataclass(frozen=True)
class NucleusMeasure:
    radius_px: float  # nucleus radius in the input's pixels, before the coarse-image correction
    enlarged: float  # how much the image was enlarged for the last measurement (1: not)
    found: NucleusRadii  # the last measurement


def measure_nuclei(image: np.ndarray, cfg: MppEstimateConfig = MppEstimateConfig()) -> NucleusMeasure | None:
    """The nucleus radius of an RGB image in its own pixels (the passes, without the
    coarse-image correction); None when no nucleus is found."""
    h, tissue = haematoxylin(image, cfg.tissue_od)
    found = nucleus_radii(h, tissue, cfg)
    if found is None:
        return None
    reference_px = cfg.reference_radius_um / cfg.reference_mpp
    scale = 1.0  # pixels of the measured image per pixel of the input
    for _ in range(cfg.passes - 1):
        step = reference_px / found.radius_px  # nuclei to about the reference's size
        if abs(math.log(step)) < math.log(1.05):
            break
        scale *= step
        again = nucleus_radii(resample_image(h, scale), resample_image(tissue.astype(np.uint8), scale) > 0, cfg)
        if again is None:
            break
        found = again
    return NucleusMeasure(found.radius_px / scale, max(1.0, scale), found)


def estimate_mpp(image: np.ndarray, cfg: MppEstimateConfig = MppEstimateConfig()) -> MppEstimate:
    """The µm/px of an RGB H&E image (uint8, H×W×3) from the size of its nuclei, with a
    confidence; see the module's documentation. Pure: reads nothing, writes nothing."""
    measured = measure_nuclei(image, cfg)
    if measured is None:
        return MppEstimate(None, 0.0, 0)
    radius_px = measured.radius_px / measured.enlarged**cfg.coarse_bias
    mpp = cfg.reference_radius_um / radius_px
    lo, hi = MPP_RANGE
    confidence = _confidence(measured.found, cfg) if lo <= mpp <= hi else 0.0
    return MppEstimate(round(mpp, 4), confidence, measured.found.count)


def auto_mpp(path: str | Path, image: np.ndarray, model_mpp: float, cfg: MppEstimateConfig | None = None,
             estimator: Callable[[np.ndarray], MppEstimate] | None = None) -> tuple[float, MppEstimate]:
    """``--mpp auto`` for one image: (the µm/px to predict it at, the estimate by ``estimator``,
    the nucleus measurement unless given). The estimate where confident; else the model's own
    (no resampling), with a one-line :class:`MppEstimateWarning` naming the file; the model's
    too where the estimate is within ``cfg.same_within`` of it (no estimate is closer than that)."""
    cfg = cfg or MppEstimateConfig()
    est = estimator(image) if estimator is not None else estimate_mpp(image, cfg)
    if not est.confident(cfg):
        why = est.note or ("no nuclei found" if est.mpp is None else
                           f"{est.mpp:.2f} µm/px from {est.n_nuclei} nuclei")
        if est.mpp is not None:
            why += f", confidence {est.confidence:.2f}"
        warnings.warn(f"{path}: resolution not estimated with confidence ({why}); predicted at the model's "
                      f"{model_mpp:g} µm/px (no resampling); pass --mpp to say it", MppEstimateWarning, stacklevel=2)
        return model_mpp, est
    if abs(math.log(est.mpp / model_mpp)) <= math.log1p(cfg.same_within):
        return model_mpp, est
    return est.mpp, est
