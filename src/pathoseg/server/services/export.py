"""Export: masks, instance maps, QuPath GeoJSON and status.csv of every image."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from sqlalchemy import select

from pathoseg.data.images import (
    label_components,
    write_label_png,
)
from pathoseg.io import atomic_path, write_text
from pathoseg.server.services.images import current_labels, predicted_instances
from pathoseg.server.storage import Image, Project


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
