"""Export: masks, instance maps, QuPath GeoJSON and status.csv of every image."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from sqlalchemy import select

from pathoseg.data.geojson import feature_collection, gland_features
from pathoseg.data.images import (
    write_label_png,
)
from pathoseg.io import atomic_path, write_text
from pathoseg.server.services.images import current_labels, predicted_instances
from pathoseg.server.services.imports import project_mpp
from pathoseg.server.storage import Image, Project


def export(project: Project, out: str | Path) -> Path:
    """masks/ (0/255), instances/ (label maps with the saved ids), geojson/ (QuPath: one feature
    per gland, holes as interior rings, area and perimeter in µm), status.csv (status and effort).

    Images nobody corrected yet are exported with the active model's glands (status
    ``predicted`` in status.csv), straight from the instance decoder."""
    out = Path(out)
    mpp = project_mpp(project)  # the images' µm/px: glands get their area and perimeter in µm
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
            write_text(out / "geojson" / f"{image.name}.geojson",
                       json.dumps(feature_collection(gland_features(instances, mpp))))
    with atomic_path(out / "status.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "status", "mask_version", "updated_by", "seconds", "edits"])
        writer.writeheader()
        writer.writerows(rows)
    return out
