"""Project operations shared by the CLI and the API: import, save masks, export."""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from skimage import measure
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pathoseg.data.folder import images_in
from pathoseg.data.images import (
    BinaryMaskWarning,
    label_components,
    open_image,
    read_image,
    read_mask,
    read_target,
    write_label_png,
)
from pathoseg.errors import PathosegError
from pathoseg.io import atomic_path, write_text
from pathoseg.server.storage import MAX_ID, Image, Mask, Project, now

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
MAX_UPLOAD_BYTES = 50 * 2**20
MAX_UPLOAD_PIXELS = 40_000_000  # 40 MP: a GlaS tile is 0.4 MP; bigger is a bomb or a whole slide
MAX_SECONDS = 86_400  # effort logged with one save: at most a day
MAX_OPERATIONS = 10**6  # edits of one kind logged with one save
MAX_OPERATION_KINDS = 100
MAX_OPERATION_NAME = 64


class ConflictError(PathosegError):
    """Someone saved this image since the editor loaded it."""


def safe_name(filename: str) -> str:
    """The image name from an upload's file name: no folders, no odd characters."""
    stem = Path(filename.replace("\\", "/")).name.rsplit(".", 1)[0]
    if not NAME.match(stem) or stem in (".", ".."):
        raise PathosegError(f"file name {filename!r} not allowed: use letters, digits, '.', '_' and '-'")
    return stem


def decode_upload(data: bytes, filename: str) -> np.ndarray:
    """RGB array from uploaded bytes; oversized uploads, non-images and bombs are refused."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise PathosegError(f"upload larger than {MAX_UPLOAD_BYTES // 2**20} MiB", filename)
    img = open_image(io.BytesIO(data), filename, MAX_UPLOAD_PIXELS)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def decode_mask(data: bytes, filename: str) -> np.ndarray:
    """Boolean mask from uploaded bytes: any non-zero value in any channel is gland. With an
    alpha channel that has fully transparent pixels, the visible (alpha > 0) pixels are gland,
    whatever colour they or the transparent ones have."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise PathosegError(f"upload larger than {MAX_UPLOAD_BYTES // 2**20} MiB", filename)
    img = open_image(io.BytesIO(data), filename, MAX_UPLOAD_PIXELS)
    if img.mode in ("1", "I", "F") or img.mode.startswith("I;") or (img.mode == "L" and "transparency" not in img.info):
        return np.array(img) != 0  # one channel (1-, 8-, 16- or 32-bit)
    rgba = np.array(img.convert("RGBA"))  # palette, grey + alpha, RGB(A), CMYK, ...
    alpha = rgba[..., 3]
    if (alpha == 0).any():
        return alpha > 0
    return (rgba[..., :3] > 0).any(axis=-1)


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(array).save(path, format="PNG")


def _place(staged: list[tuple[Path, Path]]) -> None:
    """Move committed files into place (after their rows committed)."""
    for tmp, final in staged:
        try:
            os.replace(tmp, final)
        except FileNotFoundError:
            if not final.is_file():
                raise
            # a reader found it missing and settled the staged files first


def _discard(session: Session, staged: list[tuple[Path, Path]]) -> None:
    """A save failed: drop its staged files and roll its rows back."""
    for tmp, _ in staged:
        tmp.unlink(missing_ok=True)
    session.rollback()


def add_image(project: Project, name: str, rgb: np.ndarray, mask: np.ndarray | None = None,
              user: str | None = None) -> Image:
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
            _write_png(staged[-1][0], np.asarray(rgb, dtype=np.uint8))
            row = Image(name=name, width=rgb.shape[1], height=rgb.shape[0], updated_by=user)
            s.add(row)
            s.flush()
            if mask is not None:
                final = project.mask_path(name, 1)
                staged.append((project.staged_path(final), final))
                _write_png(staged[-1][0], (mask > 0).astype(np.uint8) * 255)
                s.add(Mask(image_id=row.id, version=1, source="import", user=user))
                row.mask_version, row.status = 1, "approved"
            s.commit()
        except IntegrityError:  # the same name imported at the same moment
            _discard(s, staged)
            raise PathosegError(f"an image named {name!r} is already in the project") from None
        except BaseException:
            _discard(s, staged)
            raise
        _place(staged)
        return row


def add_folder(project: Project, folder: str | Path) -> int:
    """Import every image of ``folder`` (or of ``folder/images`` with ``folder/masks``)."""
    folder = Path(folder)
    img_dir = folder / "images" if (folder / "images").is_dir() else folder
    masks = {p.stem.removesuffix("_anno").removesuffix("_mask"): p
             for p in (folder / "masks").iterdir()} if (folder / "masks").is_dir() else {}
    n = 0
    for path in images_in(img_dir):
        name = safe_name(path.name)
        with warnings.catch_warnings():  # the app stores binary masks for now: nothing is lost
            warnings.simplefilter("ignore", BinaryMaskWarning)
            mask = read_mask(masks[name]) if name in masks else None
        add_image(project, name, read_image(path), mask)
        n += 1
    return n


def current_mask(project: Project, image: Image) -> np.ndarray | None:
    if image.mask_version == 0:
        return None
    return read_target(project.mask_path(image.name, image.mask_version)) > 0


def predicted_instances(project: Project, image: Image) -> np.ndarray | None:
    """The active model's glands for ``image`` (instance label map), when predicted."""
    with project.session() as s:
        active = project.active_model(s)
    path = project.instances_path(active.version, image.name) if active is not None else None
    return read_target(path).astype(np.int32) if path is not None and path.is_file() else None


def effort(seconds: float, operations: dict | None) -> tuple[float, dict[str, int]]:
    """The effort logged with a save, checked: finite seconds within a day, and at most
    ``MAX_OPERATION_KINDS`` named edit counts of 0..``MAX_OPERATIONS``."""
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        raise PathosegError(f"seconds must be a number, not {seconds!r}") from None
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_SECONDS):
        raise PathosegError(f"seconds must be from 0 to {MAX_SECONDS}, not {seconds}")
    operations = dict(operations or {})
    if len(operations) > MAX_OPERATION_KINDS:
        raise PathosegError(f"at most {MAX_OPERATION_KINDS} kinds of operations, not {len(operations)}")
    for kind, count in operations.items():
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_OPERATION_NAME:
            raise PathosegError(f"operation names are 1 to {MAX_OPERATION_NAME} characters, not {kind!r:.80}")
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or not 0 <= count <= MAX_OPERATIONS:
            raise PathosegError(f"operation counts are whole numbers from 0 to {MAX_OPERATIONS}, not {count!r:.80}")
    return seconds, {kind: int(count) for kind, count in operations.items()}


def _conflict(image: Image, base_version: int) -> ConflictError:
    return ConflictError(f"{image.name} was saved by {image.updated_by} since you opened it "
                         f"(version {image.mask_version}, yours {base_version}); reload to see it")


def save_mask(project: Project, image_id: int, mask: np.ndarray, base_version: int, user: str,
              seconds: float = 0.0, operations: dict | None = None, approve: bool = False) -> Image:
    """Store a corrected mask as a new version; refuse when ``base_version`` is stale.

    The version is claimed with a compare-and-set (``UPDATE images ... WHERE mask_version =
    base``) in the same transaction as the new masks row, so of several saves from one base
    version exactly one wins, on SQLite and PostgreSQL alike; the others get a ConflictError
    naming who saved. The PNG is staged, the rows committed, then the PNG renamed into place."""
    seconds, operations = effort(seconds, operations)
    if isinstance(base_version, bool) or not isinstance(base_version, numbers.Integral) \
            or not 0 <= base_version < MAX_ID:
        raise PathosegError(f"base_version must be from 0 to {MAX_ID - 1}, not {base_version!r:.80}")
    base_version = int(base_version)
    with project.session() as s:
        image = s.get(Image, image_id) if 1 <= image_id <= MAX_ID else None
        if image is None:
            raise PathosegError(f"no image with id {image_id}")
        if image.mask_version != base_version:
            raise _conflict(image, base_version)
        if mask.shape != (image.height, image.width):
            raise PathosegError(f"mask is {mask.shape[1]}x{mask.shape[0]}, image {image.width}x{image.height}")
        version = base_version + 1
        final = project.mask_path(image.name, version)
        staged = [(project.staged_path(final), final)]
        try:
            claim = s.execute(update(Image)
                              .where(Image.id == image.id, Image.mask_version == base_version)
                              .values(mask_version=version, updated_by=user, updated_at=now(),
                                      status="approved" if approve else "corrected")
                              .execution_options(synchronize_session=False))
            lost = claim.rowcount != 1
            if not lost:
                _write_png(staged[0][0], (mask > 0).astype(np.uint8) * 255)
                s.add(Mask(image_id=image.id, version=version, source="correction", user=user, seconds=seconds,
                           operations=operations))
                s.commit()
        except IntegrityError:  # the unique (image, version) index: another save got there first
            lost = True
        except BaseException:
            _discard(s, staged)
            raise
        if lost:
            _discard(s, staged)
            s.expire_all()
            current = s.get(Image, image.id)
            raise _conflict(current, base_version) if current is not None else PathosegError(
                f"no image with id {image_id}")
        _place(staged)
        s.refresh(image)
        return image


def polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """Outer contours (x, y) of each gland, closed, for GeoJSON; ``mask`` is an instance
    label map (a binary mask: its components are the glands)."""
    out = []
    labels = np.pad(mask if mask.dtype != bool else label_components(mask), 1)
    for region in measure.regionprops(labels):
        contour = max(measure.find_contours(labels == region.label, 0.5), key=len)
        ring = [[float(c - 1), float(r - 1)] for r, c in contour]
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        if len(ring) >= 4:
            out.append(ring)
    return out


def export(project: Project, out: str | Path) -> Path:
    """masks/ (0/255), instances/ (label maps), geojson/ (QuPath), status.csv (status and effort).

    Images nobody corrected yet are exported with the active model's glands (status
    ``predicted`` in status.csv), straight from the instance decoder."""
    out = Path(out)
    rows = []
    with project.session() as s:
        for image in s.scalars(select(Image).order_by(Image.name)):
            mask = current_mask(project, image)
            instances = label_components(mask) if mask is not None else predicted_instances(project, image)
            seconds = sum(m.seconds for m in image.masks)
            rows.append({"name": image.name, "status": image.status, "mask_version": image.mask_version,
                         "updated_by": image.updated_by or "", "seconds": round(seconds, 1),
                         "edits": sum(sum(m.operations.values()) for m in image.masks if m.operations)})
            if instances is None:
                continue
            write_label_png(out / "masks" / f"{image.name}.png", (instances > 0).astype(np.uint8) * 255)
            write_label_png(out / "instances" / f"{image.name}.png", instances)
            features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"objectType": "annotation",
                                        "classification": {"name": "Gland", "color": [0, 160, 0]}}}
                        for ring in polygons(instances)]
            write_text(out / "geojson" / f"{image.name}.geojson",
                       json.dumps({"type": "FeatureCollection", "features": features}))
    with atomic_path(out / "status.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "status", "mask_version", "updated_by", "seconds", "edits"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def register_model(project: Project, checkpoint: str | Path) -> int:
    """Copy a trained checkpoint in as the next model version and make it active."""
    from pathoseg.engine.checkpoint import load_checkpoint
    from pathoseg.server.storage import ModelVersion

    ckpt = load_checkpoint(checkpoint)  # refuses foreign files with a one-line error
    with project.session() as s:
        version = max([m.version for m in s.scalars(select(ModelVersion))], default=0) + 1
        ckpt.save(project.model_path(version))
        for m in s.scalars(select(ModelVersion).where(ModelVersion.active)):
            m.active = False
        s.add(ModelVersion(version=version, val_iou=ckpt.metrics.get("best_val_iou"), active=True,
                           trained_on=[["(imported checkpoint)", 0]]))
        s.commit()
    return version
