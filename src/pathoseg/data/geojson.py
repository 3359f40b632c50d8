"""Glands as QuPath GeoJSON, for the slide engine's output and the app's export alike: one
feature per gland, the union of its pixels (x right, y down; a pixel covers [x, x+1) x
[y, y+1)), so holes stay as interior rings; a gland in pieces is a MultiPolygon."""

from __future__ import annotations

from typing import Any

import numpy as np

GLAND_CLASS = {"name": "Gland", "color": [0, 160, 0]}


def mask_shape(mask: np.ndarray, top: int = 0, left: int = 0, simplify: float = 0.0):
    """The pixels of a boolean mask as one shapely (Multi)Polygon at (``top``, ``left``),
    simplified by at most ``simplify`` pixels (0: only the vertices along straight edges go,
    so the area stays the pixel count)."""
    import shapely
    from shapely.geometry.polygon import orient

    padded = np.pad(mask, ((0, 0), (1, 1)))
    r, c = np.nonzero(np.diff(padded.astype(np.int8), axis=1))
    starts, ends = c[0::2], c[1::2]  # np.nonzero is row-major, runs alternate start/end within a row
    rows = r[0::2]
    shape = shapely.union_all(shapely.box(left + starts, top + rows, left + ends, top + rows + 1))
    shape = shape.simplify(simplify, preserve_topology=True)
    parts = [orient(p, 1.0) for p in getattr(shape, "geoms", [shape]) if p.area > 0]
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


def gland_feature(gland: int, shape: Any, mpp: float | None = None) -> dict:
    """A QuPath annotation for one gland (``shape`` in the pixel coordinates of the output);
    with ``mpp`` (µm per pixel of those coordinates), its area and perimeter in µm."""
    from shapely.geometry import mapping

    properties: dict[str, Any] = {"objectType": "annotation", "name": f"gland {gland}", "gland_id": gland,
                                  "classification": dict(GLAND_CLASS)}
    if mpp is not None:
        properties["measurements"] = {"Area µm^2": round(shape.area * mpp**2, 2),
                                      "Perimeter µm": round(shape.length * mpp, 2)}
    return {"type": "Feature", "geometry": mapping(shape), "properties": properties}


def gland_features(labels: np.ndarray, mpp: float | None = None) -> list[dict]:
    """One feature per gland id of a label map."""
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    out = []
    for index, box in enumerate(ndi.find_objects(labels.astype(np.int64))):
        if box is None:
            continue
        gland = index + 1
        out.append(gland_feature(gland, mask_shape(labels[box] == gland, box[0].start, box[1].start), mpp))
    return out


def feature_collection(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": features}
