"""``--mpp auto``: an H&E image's µm/px from how an ImageNet encoder sees it.

Ridge regressions from pooled features of EfficientNet-Lite0 (the ImageNet weights that ship
offline) to ln(scale), where scale = reference µm/px / the image's µm/px, fitted on windows of
the 85 GlaS training images resized by random factors (``python bench/mpp_estimate.py --fit``,
which writes ``mpp_regressor.json`` beside this module). The features are, for each of the
encoder's five stages, the mean and standard deviation of every channel over the window, as
ln(|value| + 0.001): what sizes of structure each channel responds to, and how sharply, which
shifts with the scale.

**Fixed-size windows.** A regression only ever sees square windows of one size (up to
``max_windows`` of them, those with the most tissue), and its estimate for an image is the
median of its windows'. An input's size in pixels then says nothing: the first version pooled
whole images, and since the fitting images were whole GlaS images (775 f pixels wide at
factor f) it learned to read the scale from the image's size (at a fixed 256x192 pixels, 7.2 %
of test crops within ±15 %, all of them "confident"; ``docs/benchmarks.md``, "Automatic
resolution").

**Two window sizes.** There is one regression per window size (128 and 160 px), and the
estimate is the mean of their ln-scale medians: their errors are partly independent (on the
training images' cross-validation the pair beats either alone), and the 128-px one can be
fitted down to 0.27x, where 160-px windows no longer fit in a shrunk GlaS image (an estimate
near the end of the fitted range is drawn to its middle). An image smaller than 160 px a side
gets the 128-px estimate alone. The fitting images are re-encoded as JPEG and re-stained at
random (scanners store JPEG; labs stain differently), and the never-resampled scans weigh
more: a scan as it comes from a scanner is sharper than any resampled image.

Why learned, and why this: the nucleus-size estimator (:mod:`pathoseg.data.mpp_estimate`)
stops at ~70 % of resampled GlaS test images within ±15 % because nuclei differ in size by
~12 % from image to image (benign against carcinoma); the encoder's features see more than
nuclei (cell, lumen and texture scale, and the blur of an enlarged image). A frozen encoder
and linear fits need no training run and no shipped network: the encoder's weights are the
ImageNet ones pathoseg already carries.

Confidence comes from how familiar the features are: the median over the windows of their
mean squared z-score against the fitting windows (a blank slide or noise is far off), averaged
over the window sizes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from pathoseg.data.mpp_estimate import MppEstimate, MppEstimateConfig, haematoxylin
from pathoseg.data.resolution import MPP_RANGE
from pathoseg.errors import PathosegError
from pathoseg.io import write_json

COEFFICIENTS = Path(__file__).with_name("mpp_regressor.json")
ENCODER_PRESET = "lite0"


@dataclass(frozen=True)
class MppRegressorConfig:
    max_windows: int = 16  # per image: those with the most tissue; the estimate is their median
    # Median over the windows of the mean squared z-score of their features against the fitting
    # windows: full confidence up to `familiar`, none from `unfamiliar` on (set from the fit's
    # own spread, printed by --fit).
    familiar: float = 4.0
    unfamiliar: float = 8.0


@dataclass(frozen=True)
class RidgeFit:
    """One fitted regression (for windows of ``window`` px): standardise the features, then a
    dot product."""
    window: int
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float
    reference_mpp: float  # the µm/px of scale 1 (the fitting images': GlaS, 0.62)
    alpha: float  # the ridge penalty the fit chose
    about: str  # how it was made

    def to_json(self) -> dict:
        return {"window": self.window, "about": self.about, "reference_mpp": self.reference_mpp,
                "alpha": self.alpha, "bias": self.bias, "mean": [float(f"{v:.6g}") for v in self.mean],
                "std": [float(f"{v:.6g}") for v in self.std],
                "weights": [float(f"{v:.6g}") for v in self.weights]}

    @classmethod
    def from_json(cls, d: dict) -> RidgeFit:
        return cls(int(d["window"]), np.asarray(d["mean"]), np.asarray(d["std"]), np.asarray(d["weights"]),
                   float(d["bias"]), float(d["reference_mpp"]), float(d["alpha"]), str(d.get("about", "")))

    def z(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.std

    def log_scale(self, features: np.ndarray) -> np.ndarray:
        return self.z(features) @ self.weights + self.bias

    def unfamiliarity(self, features: np.ndarray) -> np.ndarray:
        return np.mean(self.z(features) ** 2, axis=-1)


def load_fits(path: Path = COEFFICIENTS) -> tuple[RidgeFit, ...]:
    """The fitted regressions, smallest window first."""
    try:
        d = json.loads(Path(path).read_text())
        fits = tuple(sorted((RidgeFit.from_json(f) for f in d["fits"]), key=lambda f: f.window))
        if not fits:
            raise ValueError("no fits")
        return fits
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PathosegError(f"cannot read the resolution estimator's coefficients ({exc}); "
                            "rebuild them with python bench/mpp_estimate.py --fit", path) from None


def save_fits(fits: tuple[RidgeFit, ...], about: str, path: Path = COEFFICIENTS) -> None:
    write_json(path, {"about": about, "fits": [f.to_json() for f in fits]})


def fit_ridge(features: np.ndarray, log_scale: np.ndarray, alpha: float, reference_mpp: float, window: int,
              sample_weight: np.ndarray | None = None, about: str = "") -> RidgeFit:
    """Weighted ridge regression on standardised features (the intercept not penalised).
    ``sample_weight`` is relative: the penalty ``alpha`` is that of ``len(features)`` rows
    whatever the weights (a row of weight 3 counts as 3 rows of a set that size). Written out
    rather than taken from scikit-learn: it is one linear solve, and pathoseg does not
    otherwise depend on scikit-learn."""
    w = np.ones(len(log_scale)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    w = w / w.mean()  # relative: they sum to the number of rows
    mean = np.average(features, axis=0, weights=w)
    std = np.sqrt(np.average((features - mean) ** 2, axis=0, weights=w)) + 1e-9
    z = (features - mean) / std
    target = float(np.average(log_scale, weights=w))
    weighted = z * w[:, None]
    weights = np.linalg.solve(weighted.T @ z + alpha * np.eye(z.shape[1]), weighted.T @ (log_scale - target))
    return RidgeFit(window, mean, std, weights, target, reference_mpp, alpha, about)


class MppRegressor:
    """Estimates µm/px per image; build one per command (it loads the encoder once, at its
    first estimate, so building one that may not be needed costs nothing)."""

    def __init__(self, fits: tuple[RidgeFit, ...] | None = None,
                 cfg: MppRegressorConfig = MppRegressorConfig()) -> None:
        self._fits = fits
        self.cfg = cfg

    @property
    def fits(self) -> tuple[RidgeFit, ...]:
        if self._fits is None:
            self._fits = load_fits()
        return self._fits

    @cached_property
    def _model(self):
        from pathoseg.models import ModelConfig, build_model

        return build_model(ModelConfig(ENCODER_PRESET)).eval()  # ImageNet weights, offline

    @torch.inference_mode()
    def features(self, windows: np.ndarray) -> np.ndarray:
        """The pooled encoder features (n, D) of RGB uint8 windows (n, side, side, 3) (see the
        module's documentation)."""
        x = torch.from_numpy(np.ascontiguousarray(windows[..., :3], dtype=np.float32)).permute(0, 3, 1, 2) / 255
        model = self._model
        pooled = []
        for stage in model.net.encoder((x - model.mean) / model.std)[1:]:
            pooled += [stage.mean((2, 3)), stage.std((2, 3))]
        return np.log(np.abs(torch.cat(pooled, dim=1).numpy().astype(np.float64)) + 1e-3)

    def windows(self, image: np.ndarray, side: int) -> np.ndarray:
        """Up to ``max_windows`` windows (n, side, side, 3) of a grid over the image (the last
        row and column flush with its ends), those with the most tissue first."""
        return self._windows(image, side, _tissue_integral(image))

    def _windows(self, image: np.ndarray, side: int, integral: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        starts = [(y, x) for y in _starts(h, side) for x in _starts(w, side)]
        amounts = [integral[y + side, x + side] - integral[y, x + side] - integral[y + side, x] + integral[y, x]
                   for y, x in starts]
        order = sorted(range(len(starts)), key=lambda k: -amounts[k])[:self.cfg.max_windows]
        return np.stack([image[starts[k][0]:starts[k][0] + side, starts[k][1]:starts[k][1] + side] for k in order])

    def estimate(self, image: np.ndarray) -> MppEstimate:
        """The µm/px of an RGB H&E image (uint8, H×W×3), with a confidence in 0–1."""
        fits = [f for f in self.fits if min(image.shape[:2]) >= f.window]
        if not fits:
            return MppEstimate(None, 0.0, 0, method="encoder", note=f"smaller than {self.fits[0].window} px a side")
        log_scales, distances = [], []
        integral = _tissue_integral(image)  # one tissue mask for every window size
        for fit in fits:
            features = self.features(self._windows(image, fit.window, integral))
            log_scales.append(float(np.median(fit.log_scale(features))))
            distances.append(float(np.median(fit.unfamiliarity(features))))
        mpp = fits[0].reference_mpp / math.exp(float(np.mean(log_scales)))
        c = self.cfg
        confidence = min(1.0, max(0.0, (c.unfamiliar - float(np.mean(distances))) / (c.unfamiliar - c.familiar)))
        lo, hi = MPP_RANGE
        familiar = confidence >= MppEstimateConfig.min_confidence
        note = "" if familiar else "does not look like the H&E tissue it was fitted on"
        if not lo <= mpp <= hi:
            confidence, note = 0.0, f"{mpp:.2f} µm/px is outside {lo:g}–{hi:g}"
        return MppEstimate(round(mpp, 4), round(confidence, 3), 0, method="encoder", note=note)

    def __call__(self, image: np.ndarray) -> MppEstimate:
        return self.estimate(image)


def _tissue_integral(image: np.ndarray) -> np.ndarray:
    """The summed-area table of the image's tissue mask (a window's tissue in four lookups)."""
    tissue = haematoxylin(image)[1].astype(np.float32)
    return np.pad(tissue.cumsum(0).cumsum(1), ((1, 0), (1, 0)))


def _starts(length: int, side: int) -> list[int]:
    """Window starts every side, the last flush with the end."""
    if length <= side:
        return [0]
    starts = list(range(0, length - side + 1, side))
    return starts if starts[-1] == length - side else [*starts, length - side]
