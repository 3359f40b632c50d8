"""Physical resolution: micrometres per pixel (µm/px) of data sets, checkpoints and inputs.

A model sees tissue at one physical resolution: the µm/px of its training data (GlaS: 0.62
µm/px at native resolution, Sirinukunwattana et al. 2017) divided by its working scale.
Inputs at another resolution are resampled to it before prediction:

    resize factor = input µm/px / model µm/px × model working scale

:class:`~pathoseg.engine.instances.InstanceConfig` keeps its sizes in native pixels of the
model's training resolution and scales itself (``InstanceConfig.scaled``) where the maps are
at another resolution; :func:`um2_to_px` turns a gland area in µm² into those pixels. GlaS's
own facts (its 0.62 µm/px, its image names) live in :mod:`pathoseg.data.glas`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pathoseg.data.glas import GLAS_MPP, find_release_root, split_is_glas
from pathoseg.errors import PathosegError

MPP_RANGE = (0.1, 10.0)  # from 100x oil immersion to a 1x overview; anything else is a unit mistake
MPP_SIDECARS = ("mpp.txt", "dataset.json")
AUTO = "auto"  # "--mpp auto": estimate the resolution from the tissue


def check_mpp(value: Any, what: str = "µm/px", path: str | Path | None = None) -> float:
    """A resolution in µm/px within :data:`MPP_RANGE`, else a one-line PathosegError."""
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        raise PathosegError(f"{what} {value!r} is not a number of µm/px", path) from None
    lo, hi = MPP_RANGE
    if not math.isfinite(mpp) or not lo <= mpp <= hi:
        raise PathosegError(f"{what} {value} is outside {lo:g}–{hi:g} µm/px", path)
    return mpp


def parse_mpp(value: Any, what: str = "--mpp", path: str | Path | None = None) -> float | str | None:
    """A "µm/px or auto" setting: None (not given), :data:`AUTO`, or a checked µm/px. Parsed
    where the input it describes is known, so an error names the file."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    return check_mpp(value, what, path)


def read_mpp_sidecar(root: str | Path) -> float | None:
    """The µm/px a folder data set declares: ``mpp.txt`` (one number) or ``dataset.json``
    (``{"mpp": 0.5}``); None when it has neither."""
    root = Path(root)
    text_file, json_file = (root / name for name in MPP_SIDECARS)
    if text_file.is_file():
        try:
            return check_mpp(text_file.read_text(encoding="utf-8").strip(), "resolution", text_file)
        except OSError as exc:
            raise PathosegError(f"cannot read ({exc.strerror})", text_file) from None
    if json_file.is_file():
        try:
            meta = json.loads(json_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PathosegError(f"not a readable JSON file ({type(exc).__name__})", json_file) from None
        value = meta.get("mpp", meta.get("microns_per_pixel")) if isinstance(meta, dict) else None
        return None if value is None else check_mpp(value, "mpp", json_file)
    return None


def dataset_mpp(root: str | Path) -> float | None:
    """A data set folder's µm/px: its sidecar file, else 0.62 for GlaS, else None (unknown)."""
    root = Path(root)
    if not root.is_dir():
        return None
    declared = read_mpp_sidecar(root)
    if declared is not None:
        return declared
    return GLAS_MPP if find_release_root(root) is not None else None


def checkpoint_mpp(ckpt: Any) -> float | None:
    """The µm/px at native resolution of the data a checkpoint was trained on: its ``mpp``
    field, else (checkpoints from before it) the training data's (sidecar or GlaS) when that
    folder is still there, else 0.62 when its split names GlaS images, else None."""
    if getattr(ckpt, "mpp", None) is not None:
        return float(ckpt.mpp)
    split = getattr(ckpt, "split", None) or {}
    root = split.get("data_root")
    if root:
        try:
            found = dataset_mpp(root)
        except PathosegError:
            found = None
        if found is not None:
            return found
    return GLAS_MPP if split_is_glas(split) else None


def resize_factor(input_mpp: float, model_mpp: float, scale: float) -> float:
    """Input pixels to working pixels: input µm/px / model µm/px × working scale."""
    return input_mpp / model_mpp * scale


def um2_to_px(area_um2: float, mpp: float) -> int:
    """An area in µm² as pixels at ``mpp`` µm/px."""
    return max(0, round(area_um2 / mpp**2))


def _resampled_size(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    return max(1, round(shape[1] * factor)), max(1, round(shape[0] * factor))  # (width, height) for cv2


def resample_image(image: np.ndarray, factor: float, enlarge_with: int = cv2.INTER_LINEAR) -> np.ndarray:
    """An image (or a float map) resized by ``factor``: area averaging when shrinking,
    ``enlarge_with`` (linear interpolation) when enlarging."""
    if factor == 1:
        return image
    return cv2.resize(image, _resampled_size(image.shape, factor),
                      interpolation=cv2.INTER_AREA if factor < 1 else enlarge_with)


def resample_labels(labels: np.ndarray, factor: float) -> np.ndarray:
    """A label map resized by ``factor`` (nearest neighbour: ids stay ids)."""
    if factor == 1:
        return labels
    return cv2.resize(labels, _resampled_size(labels.shape, factor), interpolation=cv2.INTER_NEAREST)
