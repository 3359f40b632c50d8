"""Reading and writing images and instance masks, with one-line errors for bad files."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError
from skimage import measure

from pathoseg.errors import PathosegError
from pathoseg.io import atomic_path

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
# Whole-slide tiles are larger than this; anything bigger is almost surely a decompression bomb.
MAX_PIXELS = 20_000 * 20_000


class BinaryMaskWarning(UserWarning):
    """A mask holds 0/255 only: gland ids come from connected components."""


def open_image(source: Path | BinaryIO, name: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image from a file or bytes; bombs, non-images and corrupt data become a
    one-line PathosegError naming ``name``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            if img.width * img.height > max_pixels:
                raise PathosegError(f"image too large ({img.width}x{img.height} pixels)", name)
            img.load()
    except PathosegError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PathosegError("image too large (decompression bomb?)", name) from None
    except UnidentifiedImageError:
        raise PathosegError("not a readable image", name) from None
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error, ...) on bad data
        raise PathosegError(f"corrupt or truncated image ({type(exc).__name__}: {exc})", name) from None
    return img


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise PathosegError("file not found", path)
    return open_image(path, path)


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 array of shape (H, W, 3)."""
    img = _open(Path(path))
    if img.mode not in ("RGB", "RGBA", "L", "P", "I;16", "I", "CMYK", "LA"):
        raise PathosegError(f"unsupported image mode {img.mode}", path)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """Instance label map (H, W) int32: 0 background, 1..N glands.

    Accepts 8/16-bit label maps, RGB masks with R=G=B (the original GlaS BMPs) and
    binary 0/255 masks, whose connected components become the instances.
    """
    img = _open(Path(path))
    arr = np.asarray(img)
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[..., :3]
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise PathosegError("mask is a colour image; expected a label map (R=G=B)", path)
        arr = arr[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise PathosegError(f"mask has non-integer dtype {arr.dtype}", path)
    labels = arr.astype(np.int32)
    if labels.min() < 0:
        raise PathosegError("mask has negative labels", path)
    if set(np.unique(labels).tolist()) <= {0, 255} and labels.any():
        warnings.warn(f"{Path(path).parent}: binary masks (0/255) without gland ids; their connected "
                      "components become the glands, so touching glands cannot be learned apart from them",
                      BinaryMaskWarning, stacklevel=2)
        labels = label_components(labels > 0)
    return labels


def read_target(path: str | Path) -> np.ndarray:
    """A stored training target (0 background, 1..N glands, 65535 ignore) exactly as written."""
    target = np.array(_open(Path(path)))
    if target.ndim != 2 or target.dtype not in (np.uint8, np.uint16, np.int32):
        raise PathosegError("training target must be an 8- or 16-bit single-channel PNG", path)
    return target.astype(np.uint16)


def label_components(binary: np.ndarray) -> np.ndarray:
    """Instance ids 1..N for the 8-connected components of a binary mask."""
    return measure.label(binary, connectivity=2).astype(np.int32)


def write_label_png(path: str | Path, labels: np.ndarray) -> Path:
    """Write a label map atomically as 8-bit PNG when it fits, else 16-bit."""
    labels = np.asarray(labels)
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    with atomic_path(path) as tmp:
        Image.fromarray(labels.astype(dtype)).save(tmp, format="PNG")
    return Path(path)


def write_rgb_png(path: str | Path, rgb: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")
    return Path(path)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def read_label_png_or_none(path: str | Path) -> np.ndarray | None:
    """A label map written by pathoseg itself, or None when it is not there."""
    return read_mask(path) if Path(path).is_file() else None
