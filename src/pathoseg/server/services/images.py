"""Images: names and uploads checked, images imported (with a first mask and a flag when they
cannot hold a gland), and the masks an image shows (its latest saved one, or the active
model's glands)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from pathoseg.data.images import (
    label_components,
    open_image,
    read_target,
)
from pathoseg.data.resolution import resample_image
from pathoseg.data.slides import tissue_mask
from pathoseg.errors import PathosegError
from pathoseg.server.services.files import (
    as_labels,
    checked_ids,
    discard_staged,
    label_png_array,
    place_staged,
    read_labels,
    write_png,
)
from pathoseg.server.storage import Image, Mask, Project
from pathoseg.server.vocabulary import (
    MASK_KINDS,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    MIN_IMAGE_SIDE,
    MIN_TISSUE_SHARE,
    NAME,
    WINDOWS_DEVICES,
)

FLAG_THUMBNAIL = 1024  # longest side tissue is looked for at: cheap, and a share hardly moves with it


def safe_name(filename: str) -> str:
    """The image name from an upload's file name: no folders, no odd characters, and portable
    (it becomes file names: Windows refuses its device names and a trailing dot)."""
    stem = Path(filename.replace("\\", "/")).name.rsplit(".", 1)[0]
    if not NAME.match(stem) or stem in (".", ".."):
        raise PathosegError(f"file name {filename!r} not allowed: use letters, digits, '.', '_' and '-'")
    if stem.split(".")[0].upper() in WINDOWS_DEVICES:
        raise PathosegError(f"file name {filename!r} not allowed: {stem.split('.')[0]} is a device name on Windows")
    if stem.endswith("."):
        raise PathosegError(f"file name {filename!r} not allowed: a name ending in '.' is not portable (Windows)")
    return stem


def decode_upload(data: bytes, filename: str) -> np.ndarray:
    """RGB array from uploaded bytes; oversized uploads, non-images and bombs are refused."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise PathosegError(f"upload larger than {MAX_UPLOAD_BYTES // 2**20} MiB", filename)
    img = open_image(io.BytesIO(data), filename, MAX_UPLOAD_PIXELS)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def decode_mask(data: bytes, filename: str, kind: str = "auto") -> np.ndarray:
    """Instance label map (int32: 0 background, ids of glands) from uploaded PNG bytes.

    ``labels``: a single-channel PNG (8, 16 or 32 bit) whose values are gland ids.
    ``binary``: any non-zero value in any channel is gland (with an alpha channel that has
    fully transparent pixels, the visible pixels are); its 8-connected components become
    the glands. ``auto``: a single-channel PNG with two or more different non-zero values is
    a label map, anything else a binary mask. Ids above ``MAX_GLAND_ID`` are refused."""
    if kind not in MASK_KINDS:
        raise PathosegError(f"mask kind must be one of {', '.join(MASK_KINDS)}, not {kind!r:.40}")
    if len(data) > MAX_UPLOAD_BYTES:
        raise PathosegError(f"upload larger than {MAX_UPLOAD_BYTES // 2**20} MiB", filename)
    img = open_image(io.BytesIO(data), filename, MAX_UPLOAD_PIXELS)
    single = img.mode in ("1", "I", "F") or img.mode.startswith("I;") or (
        img.mode == "L" and "transparency" not in img.info)
    if kind == "labels" and (not single or img.mode in ("1", "F")):
        raise PathosegError(f"a label map must be a single-channel 8- or 16-bit PNG, not mode {img.mode}", filename)
    if single:
        values = np.array(img)
        if kind == "labels" or (kind == "auto" and img.mode not in ("1", "F")
                                and len(np.unique(values[values != 0])) >= 2):
            return checked_ids(values, filename)
        binary = values != 0  # one channel (1-, 8-, 16- or 32-bit)
    else:
        rgba = np.array(img.convert("RGBA"))  # palette, grey + alpha, RGB(A), CMYK, ...
        alpha = rgba[..., 3]
        binary = alpha > 0 if (alpha == 0).any() else (rgba[..., :3] > 0).any(axis=-1)
    return checked_ids(label_components(binary), filename)


def image_flag(rgb: np.ndarray) -> str | None:
    """Why an image cannot hold a gland ("too small", "no tissue"; see ``vocabulary``), or
    None. Tissue is the slide engine's (:func:`pathoseg.data.slides.tissue_mask`), found on
    a thumbnail."""
    if min(rgb.shape[:2]) < MIN_IMAGE_SIDE:
        return "too small"
    thumb = resample_image(rgb, min(1.0, FLAG_THUMBNAIL / max(rgb.shape[:2])))
    return "no tissue" if tissue_mask(thumb).mean() < MIN_TISSUE_SHARE else None


def add_image(project: Project, name: str, rgb: np.ndarray, mask: np.ndarray | None = None,
              user: str | None = None, grade: str | None = None) -> Image:
    """Import an image (and its mask as version 1); files are staged, the rows committed, then
    the files renamed into place, so a failed or racing import leaves no file behind."""
    if mask is not None and mask.shape != rgb.shape[:2]:
        raise PathosegError(f"mask size does not match image {name}")
    with project.session() as s:
        if s.scalars(select(Image).where(Image.name == name)).first():
            raise PathosegError(f"an image named {name!r} is already in the project")
        staged: list[tuple[Path, Path]] = []
        try:
            final = project.image_path(name)
            staged.append((project.staged_path(final), final))
            write_png(staged[-1][0], np.asarray(rgb, dtype=np.uint8))
            row = Image(name=name, width=rgb.shape[1], height=rgb.shape[0], updated_by=user, grade=grade,
                        flag=image_flag(rgb))
            s.add(row)
            s.flush()
            if mask is not None:
                final = project.mask_path(name, 1)
                staged.append((project.staged_path(final), final))
                write_png(staged[-1][0], label_png_array(as_labels(mask)))
                s.add(Mask(image_id=row.id, version=1, source="import", user=user))
                row.mask_version, row.status = 1, "approved"
            s.commit()
        except IntegrityError:  # the same name imported at the same moment
            discard_staged(s, staged)
            raise PathosegError(f"an image named {name!r} is already in the project") from None
        except BaseException:
            discard_staged(s, staged)
            raise
        place_staged(staged)
        return row


def current_labels(project: Project, image: Image) -> np.ndarray | None:
    """The latest saved mask of ``image`` as a label map, or None before the first."""
    if image.mask_version == 0:
        return None
    return read_labels(project.mask_path(image.name, image.mask_version))


def predicted_instances(project: Project, image: Image) -> np.ndarray | None:
    """The active model's glands for ``image`` (instance label map), when predicted."""
    with project.session() as s:
        active = project.active_model(s)
    path = project.instances_path(active.version, image.name) if active is not None else None
    return read_target(path).astype(np.int32) if path is not None and path.is_file() else None
