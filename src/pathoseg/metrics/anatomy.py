"""Error anatomy: which kind of error a segmentation makes, gland by gland.

Predicted glands are matched to true ones as the simulated pathologist matches them
(:mod:`pathoseg.hitl.annotator` plans its corrections from this matching):

- a **merge**: one predicted gland covering more than half of each of two or more true glands;
- a **split**: two or more predicted glands each lying more than half inside one true gland;
- **pairs**: the remaining glands that are each other's best overlap (IoU); every pair with
  IoU > 0.5 is one. A pair whose outlines lie more than a tolerance apart somewhere is a
  **stray outline**;
- every other predicted gland is **false**, every other true gland **missed**.

Counts are additive over images (:class:`ErrorTally`), like the other metrics' tallies.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage as ndi

ERROR_KINDS = ("merged", "split", "missed", "false", "stray")
# An outline this close to the true one counts as right: about one epithelial nucleus on a
# gland's rim (an estimate; docs/hitl.md). The simulated pathologist accepts such glands as drawn.
DEFAULT_TOLERANCE_UM = 5.0


@dataclass(frozen=True)
class GlandMatch:
    """The matching of predicted glands ``1..n_pred`` to true glands ``1..n_true``."""

    merged: tuple[tuple[int, tuple[int, ...]], ...]  # (predicted gland, the true glands it covers)
    split: tuple[tuple[tuple[int, ...], int], ...]  # (the predicted pieces, the true gland)
    pairs: tuple[tuple[int, int], ...]  # (predicted, true), one to one
    false: tuple[int, ...]
    missed: tuple[int, ...]
    pred_area: np.ndarray  # pixels per predicted gland, index 0 = background
    true_area: np.ndarray
    overlap: np.ndarray  # (n_pred + 1, n_true + 1) pixel counts


def match_glands(pred: np.ndarray, true: np.ndarray) -> GlandMatch:
    """Match two label maps with sequential ids (0 background, 1..N glands)."""
    n_p, n_t = int(pred.max(initial=0)), int(true.max(initial=0))
    overlap = np.bincount((pred.astype(np.int64) * (n_t + 1) + true).ravel(),
                          minlength=(n_p + 1) * (n_t + 1)).reshape(n_p + 1, n_t + 1)
    area_p, area_t = overlap.sum(1), overlap.sum(0)
    used_p: set[int] = set()
    used_t: set[int] = set()
    covers = overlap > 0.5 * area_t[None, :]  # predicted i covers more than half of true j
    inside = overlap > 0.5 * area_p[:, None]  # predicted i lies more than half inside true j
    covers[0, :] = covers[:, 0] = inside[0, :] = inside[:, 0] = False
    merged = []
    for i in np.flatnonzero(covers.sum(1) >= 2).tolist():
        js = [j for j in np.flatnonzero(covers[i]).tolist() if j not in used_t]
        if len(js) >= 2:
            merged.append((i, tuple(js)))
            used_p.add(i)
            used_t.update(js)
    split = []
    for j in np.flatnonzero(inside.sum(0) >= 2).tolist():
        if j in used_t:
            continue
        pieces = [i for i in np.flatnonzero(inside[:, j]).tolist() if i not in used_p]
        if len(pieces) >= 2:
            split.append((tuple(pieces), j))
            used_p.update(pieces)
            used_t.add(j)
    union = area_p[:, None] + area_t[None, :] - overlap
    iou = np.where(union > 0, overlap / np.maximum(union, 1), 0.0)
    iou[0, :] = iou[:, 0] = 0
    iou[sorted(used_p), :] = 0
    iou[:, sorted(used_t)] = 0
    pairs = []
    for j in range(1, n_t + 1):
        if j in used_t or iou[:, j].max() <= 0:
            continue
        i = int(iou[:, j].argmax())
        if int(iou[i].argmax()) != j:
            continue
        pairs.append((i, j))
        used_p.add(i)
        used_t.add(j)
    false = tuple(i for i in range(1, n_p + 1) if i not in used_p)
    missed = tuple(j for j in range(1, n_t + 1) if j not in used_t)
    return GlandMatch(tuple(merged), tuple(split), tuple(pairs), false, missed, area_p, area_t, overlap)


def box_of(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The bounding box of a mask's pixels, ``margin`` pixels wider (clipped to the map)."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    return (slice(max(0, rows.min() - margin), min(h, rows.max() + margin + 1)),
            slice(max(0, cols.min() - margin), min(w, cols.max() + margin + 1)))


def _edt(mask: np.ndarray) -> np.ndarray:
    if mask.all():
        return np.full(mask.shape, np.inf)
    return ndi.distance_transform_edt(mask)


def outline_strays(p: np.ndarray, t: np.ndarray, tolerance_px: float) -> list[int]:
    """Where predicted mask ``p`` strays from true mask ``t`` by more than ``tolerance_px``:
    the length (pixels of the true outline) of each connected stretch of disagreement deeper
    than the tolerance. Empty when the outlines agree within it."""
    box = box_of(p | t, margin=2)
    p, t = p[box], t[box]
    wrong = p ^ t
    if not wrong.any():
        return []
    depth = np.where(t, _edt(t), _edt(~t))  # distance to the true outline
    labels, n = ndi.label(wrong, structure=np.ones((3, 3)))
    deepest = ndi.maximum(depth, labels, index=np.arange(1, n + 1))
    edge = (wrong & p & ndi.binary_dilation(t)) | (wrong & t & ndi.binary_dilation(~t))
    lengths = np.bincount(labels[edge], minlength=n + 1)
    return [max(1, int(lengths[k])) for k in range(1, n + 1) if deepest[k - 1] > tolerance_px]


@dataclass(frozen=True)
class ErrorTally:
    """Additive per-image counts: the glands, and each kind of error (a merge of several true
    glands counts once, as does a gland cut in several pieces)."""

    true: int = 0
    predicted: int = 0
    merged: int = 0
    split: int = 0
    missed: int = 0
    false: int = 0
    stray: int = 0

    def __add__(self, other: ErrorTally) -> ErrorTally:
        return ErrorTally(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def sequential(labels: np.ndarray) -> np.ndarray:
    """Ids 1..N in order (int32); a boolean mask becomes its 8-connected components."""
    from skimage import measure, segmentation

    if labels.dtype == bool:
        return measure.label(labels, connectivity=2).astype(np.int32)
    return segmentation.relabel_sequential(np.asarray(labels).astype(np.int64))[0].astype(np.int32)


def error_tally(gt: np.ndarray, seg: np.ndarray, tolerance_px: float) -> ErrorTally:
    """The error anatomy of one image: ``gt`` and ``seg`` are instance label maps (any ids)."""
    if gt.shape != seg.shape:
        raise ValueError(f"shape mismatch: ground truth {gt.shape}, segmentation {seg.shape}")
    true, pred = sequential(gt), sequential(seg)
    m = match_glands(pred, true)
    stray = sum(1 for i, j in m.pairs if outline_strays(pred == i, true == j, tolerance_px))
    return ErrorTally(int(true.max(initial=0)), int(pred.max(initial=0)), len(m.merged), len(m.split),
                      len(m.missed), len(m.false), stray)
