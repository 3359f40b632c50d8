"""Mask files: label maps as the project stores them (8-bit PNG, 16-bit when the ids need it),
and staged writes (a file is written beside its final name, the rows committed, then the
file renamed into place; ``Project.settle_staged_files`` settles what a crash left)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from skimage import segmentation
from sqlalchemy.orm import Session

from pathoseg.data.images import (
    BinaryMaskWarning,
    label_components,
    read_mask,
)
from pathoseg.errors import PathosegError
from pathoseg.server.vocabulary import MAX_GLAND_ID


def checked_ids(values: np.ndarray, filename: str) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind not in "biu":
        raise PathosegError(f"gland ids must be whole numbers, not {values.dtype}", filename)
    if values.size and values.min() < 0:
        raise PathosegError(f"gland ids must not be negative (found {int(values.min())})", filename)
    top = int(values.max(initial=0))
    if top > MAX_GLAND_ID:
        raise PathosegError(f"gland ids go up to {MAX_GLAND_ID} (65535 marks unlabelled pixels), "
                            f"this mask has id {top}", filename)
    return values.astype(np.int32)


def as_labels(mask: np.ndarray) -> np.ndarray:
    """Ids numbered 1..N in order (int32); a boolean mask becomes its 8-connected components."""
    mask = np.asarray(mask)
    labels = label_components(mask) if mask.dtype == bool else checked_ids(mask, "mask")
    labels = segmentation.relabel_sequential(labels)[0].astype(np.int32)
    if labels.max(initial=0) > MAX_GLAND_ID:
        raise PathosegError(f"at most {MAX_GLAND_ID} glands per mask, not {int(labels.max())}")
    return labels


def label_png_array(labels: np.ndarray) -> np.ndarray:
    """A label map as the PNG stores it: 8-bit when its ids fit, else 16-bit."""
    return labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(array).save(path, format="PNG")


def place_staged(staged: list[tuple[Path, Path]]) -> None:
    """Move committed files into place (after their rows committed)."""
    for tmp, final in staged:
        try:
            os.replace(tmp, final)
        except FileNotFoundError:
            if not final.is_file():
                raise


def discard_staged(session: Session, staged: list[tuple[Path, Path]]) -> None:
    """A save failed: drop its staged files and roll its rows back."""
    for tmp, _ in staged:
        tmp.unlink(missing_ok=True)
    session.rollback()


def read_labels(path: Path) -> np.ndarray:
    """A stored mask as a label map (int32): a label map as written, an older binary (0/255)
    mask as its 8-connected components."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BinaryMaskWarning)
        return read_mask(path)
