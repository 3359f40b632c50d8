"""``--mpp auto``: an H&E image's µm/px from how an ImageNet encoder sees it.

A ridge regression from pooled features of EfficientNet-Lite0 (the ImageNet weights that ship
offline) to ln(scale), where scale = reference µm/px / the image's µm/px, fitted on windows of
the 85 GlaS training images resized by random factors between 0.36 and 3 (``python
bench/mpp_estimate.py --fit``, which writes ``mpp_regressor.json`` beside this module). The
features are, for each of the encoder's five stages, the mean and standard deviation of every
channel over the window, as ln(|value| + 0.001): what sizes of structure each channel responds
to, and how sharply, which shifts with the scale.

**Fixed-size windows.** The regression only ever sees square windows of ``window`` pixels (up
to ``max_windows`` of them, those with the most tissue), and an image's estimate is the median
of its windows'. An input's size in pixels then says nothing: the first version pooled whole
images, and since the fitting images were whole GlaS images (775 f pixels wide at factor f) it
learned to read the scale from the image's size (at a fixed 256x192 pixels, 7.2 % of test crops
within ±15 %, all of them "confident"; ``docs/benchmarks.md``, "Automatic resolution").

Why learned, and why this: the nucleus-size estimator (:mod:`pathoseg.data.mpp_estimate`)
stops at ~70 % of resampled GlaS test images within ±15 % because nuclei differ in size by
~12 % from image to image (benign against carcinoma); the encoder's features see more than
nuclei (cell, lumen and texture scale, and the blur of an enlarged image). A frozen encoder
and a linear fit need no training run and no shipped network: the encoder's weights are the
ImageNet ones pathoseg already carries.

Confidence comes from how familiar the features are: the median over the windows of their
mean squared z-score against the fitting windows (a blank slide or noise is far off).
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
    window: int = 160  # px a side of the windows the regression sees (smaller images cannot be estimated)
    max_windows: int = 16  # per image: those with the most tissue; the estimate is their median
    # Median over the windows of the mean squared z-score of their features against the fitting
    # windows: full confidence up to `familiar`, none from `unfamiliar` on (set from the fit's
    # own spread, printed by --fit).
    familiar: float = 4.0
    unfamiliar: float = 8.0


@dataclass(frozen=True)
class RidgeFit:
    """The fitted regression: standardise the features, then a dot product."""
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float
    reference_mpp: float  # the µm/px of scale 1 (the fitting images': GlaS, 0.62)
    alpha: float  # the ridge penalty the fit chose
    about: str  # how it was made

    @classmethod
    def load(cls, path: Path = COEFFICIENTS) -> RidgeFit:
        try:
            d = json.loads(Path(path).read_text())
            return cls(np.asarray(d["mean"]), np.asarray(d["std"]), np.asarray(d["weights"]), float(d["bias"]),
                       float(d["reference_mpp"]), float(d["alpha"]), str(d.get("about", "")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PathosegError(f"cannot read the resolution estimator's coefficients ({exc}); "
                                "rebuild them with python bench/mpp_estimate.py --fit", path) from None

    def save(self, path: Path = COEFFICIENTS) -> None:
        write_json(path, {"about": self.about, "reference_mpp": self.reference_mpp, "alpha": self.alpha,
                          "bias": self.bias, "mean": [float(f"{v:.6g}") for v in self.mean],
                          "std": [float(f"{v:.6g}") for v in self.std],
                          "weights": [float(f"{v:.6g}") for v in self.weights]})

    def z(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.std

    def log_scale(self, features: np.ndarray) -> np.ndarray:
        return self.z(features) @ self.weights + self.bias

    def unfamiliarity(self, features: np.ndarray) -> np.ndarray:
        return np.mean(self.z(features) ** 2, axis=-1)


def fit_ridge(features: np.ndarray, log_scale: np.ndarray, alpha: float, reference_mpp: float,
              about: str = "") -> RidgeFit:
    """Ridge regression on standardised features (the intercept not penalised). Written out
    rather than taken from scikit-learn: it is one linear solve, and pathoseg does not
    otherwise depend on scikit-learn."""
    mean, std = features.mean(0), features.std(0) + 1e-9
    z = (features - mean) / std
    centred = log_scale - log_scale.mean()
    weights = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ centred)
    return RidgeFit(mean, std, weights, float(log_scale.mean()), reference_mpp, alpha, about)


class MppRegressor:
    """Estimates µm/px per image; build one per command (it loads the encoder once, at its
    first estimate, so building one that may not be needed costs nothing)."""

    def __init__(self, fit: RidgeFit | None = None, cfg: MppRegressorConfig = MppRegressorConfig()) -> None:
        self.fit = fit
        self.cfg = cfg

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

    def windows(self, image: np.ndarray) -> np.ndarray:
        """Up to ``max_windows`` windows (n, side, side, 3) of a grid over the image (the last
        row and column flush with its ends), those with the most tissue first."""
        side = self.cfg.window
        h, w = image.shape[:2]
        tissue = haematoxylin(image)[1].astype(np.float32)
        integral = np.pad(tissue.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        starts = [(y, x) for y in _starts(h, side) for x in _starts(w, side)]
        amounts = [integral[y + side, x + side] - integral[y, x + side] - integral[y + side, x] + integral[y, x]
                   for y, x in starts]
        order = sorted(range(len(starts)), key=lambda k: -amounts[k])[:self.cfg.max_windows]
        return np.stack([image[starts[k][0]:starts[k][0] + side, starts[k][1]:starts[k][1] + side] for k in order])

    def estimate(self, image: np.ndarray) -> MppEstimate:
        """The µm/px of an RGB H&E image (uint8, H×W×3), with a confidence in 0–1."""
        side = self.cfg.window
        if min(image.shape[:2]) < side:
            return MppEstimate(None, 0.0, 0, method="encoder", note=f"smaller than {side} px a side")
        fit = self.fit = self.fit or RidgeFit.load()
        features = self.features(self.windows(image))
        mpp = fit.reference_mpp / math.exp(float(np.median(fit.log_scale(features))))
        distance = float(np.median(fit.unfamiliarity(features)))
        c = self.cfg
        confidence = min(1.0, max(0.0, (c.unfamiliar - distance) / (c.unfamiliar - c.familiar)))
        lo, hi = MPP_RANGE
        familiar = confidence >= MppEstimateConfig.min_confidence
        note = "" if familiar else "does not look like the H&E tissue it was fitted on"
        if not lo <= mpp <= hi:
            confidence, note = 0.0, f"{mpp:.2f} µm/px is outside {lo:g}–{hi:g}"
        return MppEstimate(round(mpp, 4), round(confidence, 3), 0, method="encoder", note=note)

    def __call__(self, image: np.ndarray) -> MppEstimate:
        return self.estimate(image)


def _starts(length: int, side: int) -> list[int]:
    """Window starts every side, the last flush with the end."""
    if length <= side:
        return [0]
    starts = list(range(0, length - side + 1, side))
    return starts if starts[-1] == length - side else [*starts, length - side]
