"""Export: masks, instance maps, QuPath GeoJSON and status.csv of every image."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from sqlalchemy import select

from pathoseg.data.geojson import feature_collection, gland_features
from pathoseg.data.images import (
    write_label_png,
)
from pathoseg.errors import PathosegError
from pathoseg.io import atomic_path, write_text
from pathoseg.server.services.images import current_labels, predicted_instances
from pathoseg.server.services.imports import project_mpp
from pathoseg.server.storage import Image, Project

MARKER = ".pathoseg-export"  # written into every export folder: a later export may replace it
OURS = ("masks", "instances", "geojson", "predicted")


def check_target(out: Path, project: Project) -> None:
    """An export goes into a new or empty folder, or over an earlier export; never into a file,
    the project itself, or a folder holding other things (one-line errors)."""
    if out.exists() and not out.is_dir():
        raise PathosegError("the export target is a file, not a folder", out)
    target = out.resolve()
    inside = [project.root / sub for sub in ("images", "masks", "models", "predictions")]
    if target == project.root or any(target == d or d in target.parents for d in inside):
        raise PathosegError("the export target is the project's own folder; choose another (default PROJECT/export)",
                            out)
    earlier = (out / MARKER).is_file() or (out / "status.csv").is_file()  # older exports have no marker
    if out.is_dir() and any(out.iterdir()) and not earlier:
        raise PathosegError("the export target holds other files and is not an earlier pathoseg export; choose a new "
                            "or empty folder", out)


def export(project: Project, out: str | Path) -> Path:
    """masks/ (0/255), instances/ (label maps with the saved ids), geojson/ (QuPath: one feature
    per gland, holes as interior rings, area and perimeter in µm) of every image someone saved a
    mask for; the same under predicted/ for images nobody corrected yet (the active model's
    glands, straight from the instance decoder), so the two are never mistaken for each other;
    status.csv (status, mask version and effort of every image)."""
    out = Path(out)
    check_target(out, project)
    for sub in OURS:  # an earlier export's files: images may have moved from predicted to corrected since
        shutil.rmtree(out / sub, ignore_errors=True)
    mpp = project_mpp(project)  # the images' µm/px: glands get their area and perimeter in µm
    rows = []
    with project.session() as s:
        for image in s.scalars(select(Image).order_by(Image.name)):
            instances = current_labels(project, image)
            where = out
            if instances is None:
                instances, where = predicted_instances(project, image), out / "predicted"
            seconds = sum(m.seconds for m in image.masks)
            rows.append({"name": image.name, "status": image.status, "mask_version": image.mask_version,
                         "updated_by": image.updated_by or "", "seconds": round(seconds, 1),
                         "edits": sum(sum(m.operations.values()) for m in image.masks if m.operations)})
            if instances is None:
                continue
            write_label_png(where / "masks" / f"{image.name}.png", (instances > 0).astype(np.uint8) * 255)
            write_label_png(where / "instances" / f"{image.name}.png", instances)
            write_text(where / "geojson" / f"{image.name}.geojson",
                       json.dumps(feature_collection(gland_features(instances, mpp))))
    with atomic_path(out / "status.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "status", "mask_version", "updated_by", "seconds", "edits"])
        writer.writeheader()
        writer.writerows(rows)
    write_text(out / MARKER, json.dumps({"project": str(project.root)}))
    return out
