"""The GlaS challenge's object-level metrics: F1, object Dice and object Hausdorff.

Definitions follow Sirinukunwattana et al., "Gland segmentation in colon histology images:
The GlaS challenge contest", Medical Image Analysis 35 (2017):

- **F1**: a segmented object S is a true positive when it covers more than 50% of the
  ground-truth object G it overlaps most (so each G is matched at most once); TP, FP and FN
  are summed over all images of a test part and F1 is computed once.
- **Object Dice**: ½[Σᵢ ωᵢ Dice(G*(Sᵢ), Sᵢ) + Σⱼ ω̃ⱼ Dice(G̃ⱼ, S*(G̃ⱼ))], the partner being the
  object of maximal overlap on the other side (Dice 0 when there is none); ωᵢ = |Sᵢ| over
  all segmented pixels of the part, ω̃ⱼ = |G̃ⱼ| over all ground-truth pixels of the part.
- **Object Hausdorff**: the same weighted form with the symmetric Hausdorff distance in
  pixels; an object that overlaps nothing is paired with the object on the other side at
  the smallest Hausdorff distance.

Edge-case conventions (pathoseg's, stated because the paper leaves them open):

- An object whose image has no object at all on the other side gets Dice 0 and a
  Hausdorff distance equal to the image diagonal (the largest distance possible there).
- When a whole part has no segmented pixels, the segmented half of each sum is taken as
  its worst value: 0 for Dice, and for Hausdorff the ground-truth half is used for both
  halves. A part with no ground-truth objects works the same way, mirrored. Empty on both
  sides gives F1 = 1, object Dice = 1, Hausdorff = 0.

Ids need not be consecutive; an id may cover several disconnected regions (as in four
GlaS testB annotations), and is then one object.

Distances use Euclidean distance transforms on the bounding box of each pair, never loops
over pixel pairs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class ObjectTally:
    """Additive per-image sums; a test part's metrics come from their total."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    seg_pixels: int = 0
    gt_pixels: int = 0
    seg_dice: float = 0.0  # Σ |Sᵢ| Dice(G*(Sᵢ), Sᵢ)
    gt_dice: float = 0.0  # Σ |Gⱼ| Dice(Gⱼ, S*(Gⱼ))
    seg_hausdorff: float = 0.0  # Σ |Sᵢ| H(G*(Sᵢ), Sᵢ)
    gt_hausdorff: float = 0.0

    def __add__(self, other: ObjectTally) -> ObjectTally:
        return ObjectTally(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids made consecutive 1..n (0 stays background); a lookup table, no sorting."""
    flat = labels.ravel()
    if flat.size and flat.min() < 0:
        raise ValueError("label maps must not hold negative ids")
    present = np.flatnonzero(np.bincount(flat))
    present = present[present > 0]
    lut = np.zeros(int(flat.max(initial=0)) + 1, np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lut[labels], len(present)


class _Side:
    """The objects of one label map: masks on demand, areas and bounding boxes."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels, self.n = _relabel(labels)
        self.areas = np.bincount(self.labels.ravel(), minlength=self.n + 1)[1:]
        self.slices = ndi.find_objects(self.labels, max_label=self.n)



def _hausdorff(a: _Side, i: int, b: _Side, j: int) -> float:
    """Symmetric Hausdorff distance between object i of ``a`` and object j of ``b``.

    Exact on the union of their bounding boxes: every nearest point of either object lies
    inside it, so nothing outside needs looking at.
    """
    box = tuple(slice(min(sa.start, sb.start), max(sa.stop, sb.stop))
                for sa, sb in zip(a.slices[i], b.slices[j], strict=True))
    a_box, b_box = a.labels[box] == i + 1, b.labels[box] == j + 1
    to_b = ndi.distance_transform_edt(~b_box)
    to_a = ndi.distance_transform_edt(~a_box)
    return float(max(to_b[a_box].max(), to_a[b_box].max()))


def _half(this: _Side, other: _Side, overlap: np.ndarray, diagonal: float) -> tuple[float, float]:
    """Σ |X| Dice(X, partner) and Σ |X| H(X, partner) for every object X of ``this``.

    ``overlap[i, j]`` is the pixel count shared by this object i and other object j.
    """
    dice_sum = haus_sum = 0.0
    for i in range(this.n):
        area = float(this.areas[i])
        if other.n == 0:
            haus_sum += area * diagonal
            continue
        row = overlap[i]
        if row.max() > 0:
            j = int(row.argmax())
            dice_sum += area * 2 * row[j] / (this.areas[i] + other.areas[j])
            haus_sum += area * _hausdorff(this, i, other, j)
        else:
            haus_sum += area * min(_hausdorff(this, i, other, j) for j in range(other.n))
    return dice_sum, haus_sum


def object_tally(gt: np.ndarray, seg: np.ndarray) -> ObjectTally:
    """Per-image sums for the GlaS object metrics; ``gt`` and ``seg`` are instance label maps."""
    if gt.shape != seg.shape:
        raise ValueError(f"shape mismatch: ground truth {gt.shape}, segmentation {seg.shape}")
    g, s = _Side(gt), _Side(seg)
    pair = s.labels.astype(np.int64) * (g.n + 1) + g.labels
    overlap = np.bincount(pair.ravel(), minlength=(s.n + 1) * (g.n + 1)).reshape(s.n + 1, g.n + 1)[1:, 1:]
    # F1: S is a hit when it covers > 50% of its most-overlapped ground-truth object.
    tp = 0
    for i in range(s.n):
        if overlap[i].max() > 0:
            j = int(overlap[i].argmax())
            tp += int(overlap[i, j] > 0.5 * g.areas[j])
    diagonal = float(np.hypot(*gt.shape))
    seg_dice, seg_haus = _half(s, g, overlap, diagonal)
    gt_dice, gt_haus = _half(g, s, overlap.T, diagonal)
    return ObjectTally(tp=tp, fp=s.n - tp, fn=g.n - tp,
                       seg_pixels=int(s.areas.sum()), gt_pixels=int(g.areas.sum()),
                       seg_dice=seg_dice, gt_dice=gt_dice, seg_hausdorff=seg_haus, gt_hausdorff=gt_haus)


def object_metrics(tallies: Iterable[ObjectTally]) -> dict[str, float]:
    """F1, object Dice and object Hausdorff of a test part (pooled over its images)."""
    t = sum(tallies, ObjectTally())
    detected = 2 * t.tp + t.fp + t.fn
    f1 = 2 * t.tp / detected if detected else 1.0
    if t.seg_pixels == 0 and t.gt_pixels == 0:
        return {"f1": f1, "object_dice": 1.0, "object_hausdorff": 0.0}
    seg_d = t.seg_dice / t.seg_pixels if t.seg_pixels else 0.0
    gt_d = t.gt_dice / t.gt_pixels if t.gt_pixels else 0.0
    seg_h = t.seg_hausdorff / t.seg_pixels if t.seg_pixels else None
    gt_h = t.gt_hausdorff / t.gt_pixels if t.gt_pixels else None
    seg_h = gt_h if seg_h is None else seg_h
    gt_h = seg_h if gt_h is None else gt_h
    return {"f1": f1, "object_dice": 0.5 * (seg_d + gt_d), "object_hausdorff": 0.5 * (seg_h + gt_h)}
