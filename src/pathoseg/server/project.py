"""Project operations shared by the CLI and the API: import, save masks, export.

Masks are instance label maps: 0 background, 1..N glands (numbered in order when saved;
8-bit PNG, 16-bit when N > 255). Binary masks (from older projects, or uploaded) are read
as their 8-connected components."""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import re
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from skimage import segmentation
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pathoseg.data.folder import images_in
from pathoseg.data.glas import GLAS_MPP, read_grades
from pathoseg.data.images import (
    BinaryMaskWarning,
    is_image_file,
    label_components,
    open_image,
    read_image,
    read_mask,
    read_target,
    write_label_png,
)
from pathoseg.data.mpp_estimate import auto_mpp
from pathoseg.data.resolution import AUTO, checkpoint_mpp, parse_mpp, resample_image, resample_labels
from pathoseg.data.slides import Region, Slide, TileSpec, is_slide, tissue_tiles
from pathoseg.data.targets import IGNORE
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
MAX_LOG = 10_000  # entries of the operation log saved with one mask
MAX_GLAND_ID = IGNORE - 1  # 65534: 65535 marks unlabelled pixels in training targets
# What the editor logs: the simulated pathologist's vocabulary (pathoseg.hitl.annotator) plus
# its own helpers. Brush and eraser strokes on a gland are "redraw_boundary".
OPERATION_TYPES = ("accept", "accept_all", "delete", "add_click", "add_polygon", "split", "merge",
                   "redraw_boundary", "fill_holes", "undo", "redo")
MASK_KINDS = ("auto", "labels", "binary")


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
            return _checked_ids(values, filename)
        binary = values != 0  # one channel (1-, 8-, 16- or 32-bit)
    else:
        rgba = np.array(img.convert("RGBA"))  # palette, grey + alpha, RGB(A), CMYK, ...
        alpha = rgba[..., 3]
        binary = alpha > 0 if (alpha == 0).any() else (rgba[..., :3] > 0).any(axis=-1)
    return _checked_ids(label_components(binary), filename)


def _checked_ids(values: np.ndarray, filename: str) -> np.ndarray:
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
    labels = label_components(mask) if mask.dtype == bool else _checked_ids(mask, "mask")
    labels = segmentation.relabel_sequential(labels)[0].astype(np.int32)
    if labels.max(initial=0) > MAX_GLAND_ID:
        raise PathosegError(f"at most {MAX_GLAND_ID} glands per mask, not {int(labels.max())}")
    return labels


def label_png_array(labels: np.ndarray) -> np.ndarray:
    """A label map as the PNG stores it: 8-bit when its ids fit, else 16-bit."""
    return labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)


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
            _write_png(staged[-1][0], np.asarray(rgb, dtype=np.uint8))
            row = Image(name=name, width=rgb.shape[1], height=rgb.shape[0], updated_by=user, grade=grade)
            s.add(row)
            s.flush()
            if mask is not None:
                final = project.mask_path(name, 1)
                staged.append((project.staged_path(final), final))
                _write_png(staged[-1][0], label_png_array(as_labels(mask)))
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


def project_model_mpp(project: Project, model_mpp: float | None = None) -> float:
    """The µm/px the project's active model was trained at (``model_mpp``: what the user says
    it is, for checkpoints from before it was recorded); a one-line error without one."""
    from pathoseg.engine.checkpoint import load_checkpoint

    with project.session() as s:
        active = project.active_model(s)
        version = active.version if active is not None else None
    if version is None:
        raise PathosegError("--mpp resamples images to the model's resolution, and the project has no model "
                            "yet (pathoseg project init --model)", project.root)
    mpp = checkpoint_mpp(load_checkpoint(project.model_path(version)))
    if mpp is None and model_mpp is None:
        raise PathosegError(f"model v{version} does not record the µm/px it was trained at; say it with "
                            "--model-mpp, or import the images without --mpp", project.model_path(version))
    return mpp if mpp is not None else model_mpp


def add_slide(project: Project, path: str | Path, mpp: str | float | None = None, region: str | None = None,
              tiles: TileSpec | None = None, model_mpp: float | None = None) -> int:
    """Import tissue tiles of a whole-slide image as images to correct, read at the active
    model's resolution (GlaS's 0.62 µm/px when the project has no model yet, or one that does
    not record it). Tiles are named ``<slide>_x<X>_y<Y>`` (level-0 pixels), so the same tile
    imported again replaces nothing and is refused as a duplicate."""
    parsed = parse_mpp(mpp, "--mpp", path)
    auto, given = parsed == AUTO, parsed if parsed != AUTO else None
    target, tiles = project_mpp(project, model_mpp), tiles or TileSpec()
    with _open_slide(path, given, _estimator() if auto else None) as slide:
        area = slide.check_region(Region.parse(region, path)) if region else slide.region
        found = [(safe_name(f"{Path(path).stem}_x{t.x}_y{t.y}"), t) for t in tissue_tiles(slide, area, target, tiles)]
        with project.session() as s:
            taken = set(s.scalars(select(Image.name).where(Image.name.in_([name for name, _ in found]))))
        if taken:
            raise PathosegError(f"{len(taken)} of its {len(found)} tiles are already in the project (e.g. "
                                f"{min(taken)}); nothing imported", path)
        for name, tile in found:
            add_image(project, name, slide.read_scaled(tile.x, tile.y, tile.w, tile.h, tiles.side, tiles.side))
    return len(found)


def project_mpp(project: Project, model_mpp: float | None = None) -> float:
    """The µm/px the project shows, predicts and retrains at: its active model's, else
    ``model_mpp`` (``--model-mpp``), else (no model yet, or one that does not record it)
    GlaS's, which a project's first model records."""
    with project.session() as s:
        has_model = project.active_model(s) is not None
    if has_model:
        try:
            return project_model_mpp(project, model_mpp)
        except PathosegError:  # a model that does not record its resolution: GlaS's, like training
            pass
    return model_mpp or GLAS_MPP


def add_folder(project: Project, folder: str | Path, mpp: str | float | None = None, region: str | None = None,
               tiles: TileSpec | None = None, model_mpp: float | None = None) -> int:
    """Import every image of ``folder`` (or of ``folder/images`` with ``folder/masks``), and
    tissue tiles of every whole-slide image there (or of ``folder`` itself when it is a slide;
    see :func:`add_slide`). With ``mpp`` (the images' µm/px, or ``"auto"``: estimated per image,
    :mod:`pathoseg.engine.mpp_regressor`), images and masks are resampled to the active model's resolution first,
    so that the app shows, predicts and retrains at one resolution (``model_mpp``: the active
    model's µm/px when its checkpoint does not record it). A GlaS folder's grades (Grade.csv)
    come along: the validation set is drawn per grade. Every file is checked before the first
    is imported, so a bad one leaves the project as it was."""
    folder = Path(folder)
    if folder.is_file() and is_slide(folder):
        return add_slide(project, folder, mpp, region, tiles, model_mpp)
    if region is not None:
        raise PathosegError("--region applies to a whole-slide image; give one slide", folder)
    slides = sorted(p for p in folder.iterdir() if is_slide(p)) if folder.is_dir() else []
    only_slides = bool(slides) and not (folder / "images").is_dir() \
        and not any(is_image_file(p) and p not in slides for p in folder.iterdir())
    img_dir = folder / "images" if (folder / "images").is_dir() else folder
    masks = {p.stem.removesuffix("_anno").removesuffix("_mask"): p
             for p in (folder / "masks").iterdir()} if (folder / "masks").is_dir() else {}
    parsed = parse_mpp(mpp, "--mpp", folder)
    auto, given = parsed == AUTO, parsed if parsed != AUTO else None
    images = [] if only_slides else [p for p in images_in(img_dir) if p not in slides]
    target_mpp = project_model_mpp(project, model_mpp) if mpp is not None and images else None
    grades = read_grades(folder / "Grade.csv") if (folder / "Grade.csv").is_file() else {}
    estimator = _estimator() if auto else None  # one per command: its encoder loads at its first estimate
    slide_mpps = _check_folder(project, slides, images, masks, given, estimator)
    n = sum(add_slide(project, p, slide_mpps[p], None, tiles, model_mpp) for p in slides)
    for path in images:
        name = safe_name(path.name)
        image, mask = read_image(path), _read_import_mask(masks.get(name))
        if target_mpp is not None:
            image_mpp = auto_mpp(path, image, target_mpp, estimator=estimator)[0] if auto else given
            factor = image_mpp / target_mpp
            image = resample_image(image, factor)
            mask = resample_labels(mask, factor) if mask is not None else None
        add_image(project, name, image, mask, grade=grades.get(path.stem))
        n += 1
    return n


def _read_import_mask(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    with warnings.catch_warnings():  # a binary mask's components become its glands, as the app reads them
        warnings.simplefilter("ignore", BinaryMaskWarning)
        return read_mask(path)


def _open_slide(path: Path, mpp: float | None, estimator=None) -> Slide:
    """A slide at ``mpp``, else its metadata's, else (with an ``estimator``, ``--mpp auto``)
    the µm/px its tissue gives."""
    slide = Slide(path, mpp=mpp, require_mpp=estimator is None)
    try:
        if estimator is not None:
            slide.estimate_missing_mpp(estimator)
    except BaseException:
        slide.close()
        raise
    return slide


def _estimator():
    from pathoseg.engine.mpp_regressor import MppRegressor  # loads torch: only when estimating

    return MppRegressor()


def _check_folder(project: Project, slides: list[Path], images: list[Path], masks: dict[str, Path],
                  mpp: float | None, estimator=None) -> dict[Path, float]:
    """What :func:`add_folder` would refuse half-way, refused before anything is imported:
    a slide that does not open or has no resolution (none estimated by ``estimator``), an image or
    mask that does not read, a mask of another size, two files with one name, a name already in
    the project; the slides' µm/px. Images are decoded here and again on import: holding a
    whole folder in memory costs more than reading twice."""
    slide_mpps = {}
    for path in slides:
        with _open_slide(path, mpp, estimator) as slide:
            slide_mpps[path] = slide.mpp
    with project.session() as s:
        taken = set(s.scalars(select(Image.name)))
    seen: dict[str, Path] = {}
    for path in images:
        name = safe_name(path.name)
        if name in taken:
            raise PathosegError(f"an image named {name!r} is already in the project; nothing imported", path)
        if name in seen:
            raise PathosegError(f"{seen[name].name} and {path.name} would both be named {name!r}; "
                                "nothing imported", path)
        seen[name] = path
        image, mask = read_image(path), _read_import_mask(masks.get(name))
        if mask is not None and mask.shape != image.shape[:2]:
            raise PathosegError(f"mask {masks[name].name} is {mask.shape[1]}x{mask.shape[0]}, its image "
                                f"{image.shape[1]}x{image.shape[0]}; nothing imported", path)
    return slide_mpps


def read_labels(path: Path) -> np.ndarray:
    """A stored mask as a label map (int32): a label map as written, an older binary (0/255)
    mask as its 8-connected components."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BinaryMaskWarning)
        return read_mask(path)


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


def effort(seconds: float, operations: dict | list | None
           ) -> tuple[float, dict[str, int], list[dict] | None]:
    """The effort logged with a save, checked: finite seconds within a day, and either at most
    ``MAX_OPERATION_KINDS`` named edit counts of 0..``MAX_OPERATIONS``, or an operation log
    (see :func:`operation_log`), whose per-type counts are returned with it."""
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        raise PathosegError(f"seconds must be a number, not {seconds!r}") from None
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_SECONDS):
        raise PathosegError(f"seconds must be from 0 to {MAX_SECONDS}, not {seconds}")
    if isinstance(operations, list | tuple):
        log = operation_log(operations)
        counts: dict[str, int] = {}
        for entry in log:
            counts[entry["type"]] = counts.get(entry["type"], 0) + 1
        return seconds, counts, log
    operations = dict(operations or {})
    if len(operations) > MAX_OPERATION_KINDS:
        raise PathosegError(f"at most {MAX_OPERATION_KINDS} kinds of operations, not {len(operations)}")
    for kind, count in operations.items():
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_OPERATION_NAME:
            raise PathosegError(f"operation names are 1 to {MAX_OPERATION_NAME} characters, not {kind!r:.80}")
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or not 0 <= count <= MAX_OPERATIONS:
            raise PathosegError(f"operation counts are whole numbers from 0 to {MAX_OPERATIONS}, not {count!r:.80}")
    return seconds, {kind: int(count) for kind, count in operations.items()}, None


def _gland_id(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_GLAND_ID:
        raise PathosegError(f"{what} must be a gland id from 0 to {MAX_GLAND_ID}, not {value!r:.40}")
    return int(value)


def operation_log(entries: list | tuple) -> list[dict]:
    """An editor's operation log, checked: at most ``MAX_LOG`` entries, each
    ``{"type": one of OPERATION_TYPES, "timestamp": ISO 8601 time, "gland": id or None}``
    (``"other"``: the second gland of a merge or the new one of a split). Stored as given,
    timestamps in ISO form."""
    if len(entries) > MAX_LOG:
        raise PathosegError(f"at most {MAX_LOG} logged operations per save, not {len(entries)}")
    out = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"type", "timestamp"} <= set(entry) \
                or not set(entry) <= {"type", "timestamp", "gland", "other"}:
            raise PathosegError(f"operation {k}: expected type, timestamp and gland, not {entry!r:.80}")
        if entry["type"] not in OPERATION_TYPES:
            raise PathosegError(f"operation {k}: unknown type {entry['type']!r:.40}; "
                                f"known: {', '.join(OPERATION_TYPES)}")
        stamp = entry["timestamp"]
        try:
            stamp = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(stamp)
        except (TypeError, ValueError):
            raise PathosegError(f"operation {k}: timestamp must be an ISO 8601 time, not {stamp!r:.40}") from None
        item = {"type": entry["type"], "timestamp": stamp.isoformat(),
                "gland": _gland_id(entry.get("gland"), f"operation {k}: gland")}
        if entry.get("other") is not None:
            item["other"] = _gland_id(entry["other"], f"operation {k}: other")
        out.append(item)
    return out


def _conflict(image: Image, base_version: int) -> ConflictError:
    return ConflictError(f"{image.name} was saved by {image.updated_by} since you opened it "
                         f"(version {image.mask_version}, yours {base_version}); reload to see it")


def save_mask(project: Project, image_id: int, mask: np.ndarray, base_version: int, user: str,
              seconds: float = 0.0, operations: dict | list | None = None, approve: bool = False) -> Image:
    """Store a corrected mask as a new version; refuse when ``base_version`` is stale.

    ``mask``: an instance label map (ids are numbered 1..N in order) or a boolean mask (its
    components become the glands). ``operations``: edit counts by name, or the editor's
    operation log (stored with its per-type counts).

    The version is claimed with a compare-and-set (``UPDATE images ... WHERE mask_version =
    base``) in the same transaction as the new masks row, so of several saves from one base
    version exactly one wins, on SQLite and PostgreSQL alike; the others get a ConflictError
    naming who saved. The PNG is staged, the rows committed, then the PNG renamed into place."""
    seconds, operations, log = effort(seconds, operations)
    labels = as_labels(mask)
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
                _write_png(staged[0][0], label_png_array(labels))
                s.add(Mask(image_id=image.id, version=version, source="correction", user=user, seconds=seconds,
                           operations=operations, operation_log=log))
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


def gland_geometries(labels: np.ndarray) -> list[tuple[int, dict]]:
    """One GeoJSON geometry per gland of a label map (a binary mask: per component), in
    pixel coordinates (x right, y down; a pixel covers [x, x+1) x [y, y+1)): the union of
    its pixels, so holes stay as interior rings and the area is the pixel count exactly.
    A gland in pieces is a MultiPolygon."""
    from shapely import geometry, ops
    from shapely.geometry.polygon import orient

    labels = label_components(labels) if labels.dtype == bool else np.asarray(labels)
    out = []
    for gland in np.unique(labels[labels > 0]).tolist():
        boxes = []
        rows = np.flatnonzero((labels == gland).any(axis=1))
        for r in rows.tolist():
            line = np.concatenate([[False], labels[r] == gland, [False]])
            edges = np.flatnonzero(line[1:] != line[:-1])  # run starts, ends (exclusive)
            boxes += [geometry.box(a, r, b, r + 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]
        shape = ops.unary_union(boxes).simplify(0)  # drops the vertices along straight edges
        parts = [orient(p, 1.0) for p in getattr(shape, "geoms", [shape])]
        shape = parts[0] if len(parts) == 1 else geometry.MultiPolygon(parts)
        out.append((int(gland), geometry.mapping(shape)))
    return out


def export(project: Project, out: str | Path) -> Path:
    """masks/ (0/255), instances/ (label maps with the saved ids), geojson/ (QuPath: one feature
    per gland, holes as interior rings), status.csv (status and effort).

    Images nobody corrected yet are exported with the active model's glands (status
    ``predicted`` in status.csv), straight from the instance decoder."""
    out = Path(out)
    rows = []
    with project.session() as s:
        for image in s.scalars(select(Image).order_by(Image.name)):
            instances = current_labels(project, image)
            if instances is None:
                instances = predicted_instances(project, image)
            seconds = sum(m.seconds for m in image.masks)
            rows.append({"name": image.name, "status": image.status, "mask_version": image.mask_version,
                         "updated_by": image.updated_by or "", "seconds": round(seconds, 1),
                         "edits": sum(sum(m.operations.values()) for m in image.masks if m.operations)})
            if instances is None:
                continue
            write_label_png(out / "masks" / f"{image.name}.png", (instances > 0).astype(np.uint8) * 255)
            write_label_png(out / "instances" / f"{image.name}.png", instances)
            features = [{"type": "Feature", "geometry": shape,
                         "properties": {"objectType": "annotation", "name": f"gland {gland}", "gland_id": gland,
                                        "classification": {"name": "Gland", "color": [0, 160, 0]}}}
                        for gland, shape in gland_geometries(instances)]
            write_text(out / "geojson" / f"{image.name}.geojson",
                       json.dumps({"type": "FeatureCollection", "features": features}))
    with atomic_path(out / "status.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "status", "mask_version", "updated_by", "seconds", "edits"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def store_model(project: Project, checkpoint, *, val_iou: float | None, trained_on: list | None,
                only_if_active: int | str | None = "always",
                in_transaction: Callable[[Session, int], None] | None = None, scores: dict | None = None,
                note: str | None = None) -> tuple[int, bool]:
    """Store ``checkpoint`` as the next model version; returns (version, activated).

    ``only_if_active``: ``"always"`` activates it, ``"never"`` stores it inactive (the gate
    refused it); a version number (or None: no model)
    activates it only when that version is the active one at this moment (a compare-and-set
    in the same transaction), else it is stored inactive. ``in_transaction(session, version)``
    runs before the commit (a job checks that it still owns itself). The file is staged, the
    row committed, then the file renamed into place; a version number taken at the same
    moment by another process is retried with the next one."""
    from pathoseg.server.storage import ModelVersion, lock_models

    tmp: Path | None = None
    try:
        for _ in range(20):
            with project.session() as s:
                version = (s.scalar(select(func.max(ModelVersion.version))) or 0) + 1
                final = project.model_path(version)
                staged = project.staged_path(final)
                final.parent.mkdir(parents=True, exist_ok=True)
                if tmp is None:
                    checkpoint.save(staged)
                else:
                    os.replace(tmp, staged)
                tmp = staged
                try:
                    if in_transaction is not None:
                        in_transaction(s, version)
                    lock_models(s)
                    s.add(ModelVersion(version=version, val_iou=val_iou, active=False, trained_on=trained_on or [],
                                       scores=scores, note=note))
                    s.flush()
                    if only_if_active == "never":
                        activate = False
                    elif only_if_active == "always":
                        s.execute(update(ModelVersion).where(ModelVersion.active).values(active=False))
                        activate = True
                    elif only_if_active is None:
                        activate = s.scalars(select(ModelVersion.id).where(ModelVersion.active)).first() is None
                    else:
                        activate = s.execute(update(ModelVersion).where(ModelVersion.version == only_if_active,
                                                                        ModelVersion.active)
                                             .values(active=False)).rowcount == 1
                    if activate:
                        s.execute(update(ModelVersion).where(ModelVersion.version == version).values(active=True))
                    s.commit()
                except IntegrityError:  # the version number, or the one active slot, was taken meanwhile
                    s.rollback()
                    continue
                os.replace(tmp, final)
                tmp = None
                return version, activate
        raise PathosegError("could not store the model: other processes keep taking the version numbers")
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def register_model(project: Project, checkpoint: str | Path) -> int:
    """Copy a trained checkpoint in as the next model version and make it active."""
    from pathoseg.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)  # refuses foreign files with a one-line error
    version, _ = store_model(project, ckpt, val_iou=ckpt.metrics.get("best_val_iou"),
                             trained_on=[["(imported checkpoint)", 0]], note=f"imported from {Path(checkpoint).name}")
    return version
