"""Saving corrections: versioned masks claimed with a compare-and-set, with the effort and the
editor's operation log checked."""

from __future__ import annotations

import math
import numbers
from datetime import datetime

import numpy as np
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from pathoseg.errors import PathosegError
from pathoseg.server.services.files import as_labels, discard_staged, label_png_array, place_staged, write_png
from pathoseg.server.storage import MAX_ID, Image, Mask, Project, now
from pathoseg.server.vocabulary import (
    MAX_GLAND_ID,
    MAX_LOG,
    MAX_OPERATION_KINDS,
    MAX_OPERATION_NAME,
    MAX_OPERATIONS,
    MAX_SECONDS,
    OPERATION_TYPES,
)


class ConflictError(PathosegError):
    """Someone saved this image since the editor loaded it."""


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
                write_png(staged[0][0], label_png_array(labels))
                s.add(Mask(image_id=image.id, version=version, source="correction", user=user, seconds=seconds,
                           operations=operations, operation_log=log))
                s.commit()
        except IntegrityError:  # the unique (image, version) index: another save got there first
            lost = True
        except BaseException:
            discard_staged(s, staged)
            raise
        if lost:
            discard_staged(s, staged)
            s.expire_all()
            current = s.get(Image, image.id)
            raise _conflict(current, base_version) if current is not None else PathosegError(
                f"no image with id {image_id}")
        place_staged(staged)
        s.refresh(image)
        return image
