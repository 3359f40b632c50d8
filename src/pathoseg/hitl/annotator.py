"""A simulated pathologist who corrects glands, not pixels, and logs what it cost.

It works on instance label maps (0 background, 1..N glands) with the vocabulary of the
correction editor: ``accept`` a predicted gland, ``delete`` a false one, ``add`` a missed one
(one click on the model's probability map at a lower threshold when that recovers the
gland, else a polygon traced around it), ``split`` a merged gland with a drawn line,
``merge`` the pieces of a split one (a click per extra piece), and ``redraw_boundary``
where a matched gland's outline strays from the true one by more than a tolerance in
micrometres. Per image it matches predicted to true glands, plans the cheapest
operations for every error, and fixes the largest errors first. Every gland it touches
becomes the true gland; every other gland stays as predicted.

Seconds per operation: :class:`CostModel` (sources in docs/hitl.md). The :class:`Effort`
record is what the correction app logs from real pathologists (seconds and a count per
operation), so the simulation can be replaced by measured effort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage as ndi
from skimage import measure, segmentation

from pathoseg.data.glas import GLAS_MPP
from pathoseg.data.targets import IGNORE
from pathoseg.metrics.anatomy import DEFAULT_TOLERANCE_UM, box_of, match_glands, outline_strays, sequential


@dataclass(frozen=True)
class CostModel:
    """Seconds per editor operation (docs/hitl.md gives the sources).

    ``click``: one click, 7.0 s per four extreme clicks (Papadopoulos et al., ICCV 2017).
    ``trace_px``: seconds per native pixel of line drawn (polygon, cut, boundary stretch):
    an estimate, 20 px/s ≈ 12 µm of tissue per second. A drawn line costs a click to start
    plus its length. ``look_image`` and ``verify_gland``: looking at an image and checking
    each predicted outline (estimates).
    """

    look_image: float = 5.0
    verify_gland: float = 1.0
    click: float = 1.75
    trace_px: float = 0.05

    def line(self, length_px: float) -> float:
        """A drawn line or polygon of ``length_px`` native pixels."""
        return self.click + length_px * self.trace_px


@dataclass
class Effort:
    """Human effort, additive over images: seconds and a count per operation."""

    images: int = 0  # images reviewed
    seconds: float = 0.0
    pixels: int = 0  # pixels whose gland/background label changed, native resolution
    boundary_px: float = 0.0  # length of the lines drawn (polygons, cuts, boundaries), native px
    errors: int = 0  # error glands found (a merge, a split, a missed or false gland, a stray outline)
    fixed: int = 0  # of which fixed
    operations: dict[str, int] = field(default_factory=dict)  # kind (pathoseg.operations) -> count, as logged
    op_seconds: dict[str, float] = field(default_factory=dict)  # kind -> seconds, plus "look"

    def __add__(self, other: Effort) -> Effort:
        return Effort(self.images + other.images, self.seconds + other.seconds, self.pixels + other.pixels,
                      self.boundary_px + other.boundary_px, self.errors + other.errors, self.fixed + other.fixed,
                      _add_dicts(self.operations, other.operations), _add_dicts(self.op_seconds, other.op_seconds))


def _add_dicts(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


@dataclass(frozen=True)
class Op:
    kind: str
    seconds: float
    length: float = 0.0  # native px drawn


@dataclass(frozen=True)
class Fix:
    """One error and the cheapest operations that fix it: the predicted glands it replaces
    by the true glands it paints."""

    kind: str  # merged, split, stray_boundary, false, missed
    ops: tuple[Op, ...]
    pred: tuple[int, ...]
    true: tuple[int, ...]
    size: int  # pixels of the glands involved (working scale): what leaving it costs

    @property
    def seconds(self) -> float:
        return sum(op.seconds for op in self.ops)


@dataclass(frozen=True)
class Plan:
    accepted: tuple[int, ...]  # predicted glands right within tolerance
    fixes: tuple[Fix, ...]  # largest first
    n_pred: int


def _outline(mask: np.ndarray) -> int:
    """Boundary length of a mask, in pixels (its inner boundary pixels)."""
    return int(segmentation.find_boundaries(np.pad(mask, 1), mode="inner").sum())


@dataclass(frozen=True)
class SimulatedAnnotator:
    """Corrects glands, largest errors first, until ``fix_fraction`` of the error glands are fixed.

    ``tolerance_um``: a matched gland whose outline strays from the true one by at most this
    much is accepted as predicted. ``scale``: the working scale of the label maps (masks at
    half scale: 0.5); tolerances and drawn lengths are converted with it and ``um_per_px``
    (native resolution). ``recover_threshold`` / ``recover_iou``: a missed gland is added
    with one click when the connected component of the probability map above the threshold
    matches it with at least that IoU, else it is traced as a polygon.
    """

    fix_fraction: float = 1.0
    tolerance_um: float = DEFAULT_TOLERANCE_UM
    cost: CostModel = CostModel()
    scale: float = 1.0
    um_per_px: float = GLAS_MPP
    recover_threshold: float = 0.3
    recover_iou: float = 0.8

    @property
    def tolerance_px(self) -> float:
        """The tolerance in working-scale pixels."""
        return self.tolerance_um / self.um_per_px * self.scale

    # -- public ---------------------------------------------------------------------------
    def correct(self, pred: np.ndarray, gt: np.ndarray, probs: np.ndarray | None = None
                ) -> tuple[np.ndarray, Effort]:
        """The corrected instance map (uint16; IGNORE where ``gt`` is) and what it cost.

        ``pred`` and ``gt`` are instance label maps at working scale (boolean masks are
        taken as their connected components); ``probs`` the model's gland probability, for
        one-click adds.
        """
        pred_ids, true_ids, valid = self._inputs(pred, gt, probs)
        plan = self._plan(pred_ids, true_ids, probs)
        n_fix = min(len(plan.fixes), math.ceil(max(0.0, self.fix_fraction) * len(plan.fixes) - 1e-9))
        fixed = plan.fixes[:n_fix]
        out = self._apply(pred_ids, true_ids, fixed)
        changed = int(((out > 0) != (pred_ids > 0)).sum())
        out = out.astype(np.uint16)
        out[~valid] = IGNORE
        return out, self._effort(plan, fixed, changed)

    def draw_from_scratch(self, gt: np.ndarray) -> Effort:
        """The cost of outlining every gland by hand: every gland an ``add`` by polygon."""
        return replace(self, fix_fraction=1.0).correct(np.zeros(gt.shape, np.int32), gt)[1]

    def plan(self, pred: np.ndarray, gt: np.ndarray, probs: np.ndarray | None = None) -> Plan:
        """The matching and the operations planned for every error (nothing applied)."""
        pred_ids, true_ids, _ = self._inputs(pred, gt, probs)
        return self._plan(pred_ids, true_ids, probs)

    # -- matching and planning ------------------------------------------------------------
    def _inputs(self, pred, gt, probs):
        if pred.shape != gt.shape or (probs is not None and probs.shape != gt.shape):
            raise ValueError(f"shapes differ: prediction {pred.shape}, truth {gt.shape}"
                             + ("" if probs is None else f", probabilities {probs.shape}"))
        valid = gt != IGNORE if gt.dtype != bool else np.ones(gt.shape, bool)
        true_ids = sequential(np.where(valid, gt, 0).astype(gt.dtype))
        pred_ids = sequential(pred)
        pred_ids[~valid] = 0
        return sequential(pred_ids), true_ids, valid

    def _plan(self, pred: np.ndarray, true: np.ndarray, probs: np.ndarray | None) -> Plan:
        """Fixes for the errors of the matching every error count uses
        (:func:`pathoseg.metrics.anatomy.match_glands`), with their cheapest operations."""
        m = match_glands(pred, true)
        recovered = self._recovered(true, probs)
        fixes = [self._fix_merged(pred == i, i, true, list(js), recovered) for i, js in m.merged]
        fixes += [self._fix_split(pred, list(pieces), true == j, j, recovered) for pieces, j in m.split]
        accepted = []
        for i, j in m.pairs:
            strokes = self._strokes(pred == i, true == j)
            if not strokes:  # right within tolerance
                accepted.append(i)
                continue
            redraw = tuple(Op("redraw_boundary", self.cost.line(s), s) for s in strokes)
            replace_ops = (Op("delete", self.cost.click), self._add(true == j, j, recovered))
            ops = min(redraw, replace_ops, key=lambda o: sum(x.seconds for x in o))
            size = int(m.pred_area[i] + m.true_area[j] - m.overlap[i, j])
            fixes.append(Fix("stray_boundary", ops, (i,), (j,), size))
        fixes += [Fix("false", (Op("delete", self.cost.click),), (i,), (), int(m.pred_area[i])) for i in m.false]
        fixes += [Fix("missed", (self._add(true == j, j, recovered),), (), (j,), int(m.true_area[j]))
                  for j in m.missed]
        fixes.sort(key=lambda f: (-f.size, f.true, f.pred))
        return Plan(tuple(accepted), tuple(fixes), int(pred.max()))

    def _recovered(self, true: np.ndarray, probs: np.ndarray | None) -> set[int]:
        """True glands that one click on the probability map (above ``recover_threshold``)
        recovers with IoU >= ``recover_iou``."""
        if probs is None or not true.any():
            return set()
        comps = measure.label(probs > self.recover_threshold, connectivity=2)
        n_c, n_t = int(comps.max()), int(true.max())
        overlap = np.bincount((comps.astype(np.int64) * (n_t + 1) + true).ravel(),
                              minlength=(n_c + 1) * (n_t + 1)).reshape(n_c + 1, n_t + 1)
        union = overlap.sum(1)[:, None] + overlap.sum(0)[None, :] - overlap
        iou = (overlap / np.maximum(union, 1))[1:, 1:]
        if iou.size == 0:
            return set()
        return {j + 1 for j in np.flatnonzero(iou.max(0) >= self.recover_iou)}

    def _add(self, mask: np.ndarray, j: int, recovered: set[int]) -> Op:
        if j in recovered:
            return Op("add_click", self.cost.click)
        length = _outline(mask) / self.scale
        return Op("add_polygon", self.cost.line(length), length)

    def _strokes(self, p: np.ndarray, t: np.ndarray) -> list[float]:
        """Native lengths of the boundary stretches to redraw so that predicted mask ``p``
        becomes true mask ``t``: one stroke per connected stretch where the outlines are
        more than the tolerance apart (:func:`pathoseg.metrics.anatomy.outline_strays`)."""
        return [length / self.scale for length in outline_strays(p, t, self.tolerance_px)]

    def _fix_merged(self, p: np.ndarray, i: int, true: np.ndarray, js: list[int], recovered: set[int]) -> Fix:
        """One predicted gland over several true ones: cut it (a line per extra gland, as long
        as the cut through it), then redraw the pieces' outlines where they stray; or delete
        it and add the true glands, whichever is cheaper."""
        involved = p | np.isin(true, js)
        box = box_of(involved, margin=2)
        pb, tb = p[box], true[box]
        seeds = np.zeros(pb.shape, np.int32)
        for k, j in enumerate(js, start=1):
            seeds[tb == j] = k
        if (seeds == 0).any():
            _, (rows, cols) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
            region = seeds[rows, cols]
        else:
            region = seeds
        region = np.where(pb, region, 0)
        cut = int(((region[:, :-1] != region[:, 1:]) & pb[:, :-1] & pb[:, 1:]).sum()
                   + ((region[:-1] != region[1:]) & pb[:-1] & pb[1:]).sum())
        per_cut = cut / self.scale / (len(js) - 1)
        split_ops = [Op("split", self.cost.line(per_cut), per_cut) for _ in js[1:]]
        for k, j in enumerate(js, start=1):
            split_ops += [Op("redraw_boundary", self.cost.line(s), s) for s in self._strokes(region == k, tb == j)]
        replace_ops = [Op("delete", self.cost.click)] + [self._add(true == j, j, recovered) for j in js]
        ops = min(split_ops, replace_ops, key=lambda o: sum(x.seconds for x in o))
        return Fix("merged", tuple(ops), (i,), tuple(js), int(involved.sum()))

    def _fix_split(self, pred: np.ndarray, pieces: list[int], t: np.ndarray, j: int, recovered: set[int]) -> Fix:
        """Several predicted glands inside one true gland: merge them (a click per extra
        piece) and redraw the outline where it strays; or delete them and add the gland."""
        union = np.isin(pred, pieces)
        merge_ops = [Op("merge", self.cost.click) for _ in pieces[1:]]
        merge_ops += [Op("redraw_boundary", self.cost.line(s), s) for s in self._strokes(union, t)]
        replace_ops = [Op("delete", self.cost.click) for _ in pieces] + [self._add(t, j, recovered)]
        ops = min(merge_ops, replace_ops, key=lambda o: sum(x.seconds for x in o))
        return Fix("split", tuple(ops), tuple(pieces), (j,), int((union | t).sum()))

    # -- applying and accounting ----------------------------------------------------------
    def _apply(self, pred: np.ndarray, true: np.ndarray, fixed: tuple[Fix, ...]) -> np.ndarray:
        removed = [i for f in fixed for i in f.pred]
        painted = [j for f in fixed for j in f.true]
        out = np.where(np.isin(pred, removed), 0, pred).astype(np.int64)
        offset = int(pred.max())
        paint = np.isin(true, painted)
        out[paint] = true[paint].astype(np.int64) + offset
        return segmentation.relabel_sequential(out)[0]

    def _effort(self, plan: Plan, fixed: tuple[Fix, ...], changed_px: int) -> Effort:
        ops = [op for f in fixed for op in f.ops]
        replaced = {i for f in fixed for i in f.pred}
        kept_any = plan.n_pred > len(replaced)
        counts: dict[str, int] = {}
        seconds: dict[str, float] = {"look": self.cost.look_image + self.cost.verify_gland * plan.n_pred}
        if plan.accepted:
            counts["accept"] = len(plan.accepted)
        if kept_any:
            ops.append(Op("accept_all", self.cost.click))
        for op in ops:
            counts[op.kind] = counts.get(op.kind, 0) + 1
            seconds[op.kind] = seconds.get(op.kind, 0.0) + op.seconds
        return Effort(images=1, seconds=sum(seconds.values()), pixels=round(changed_px / self.scale**2),
                      boundary_px=sum(op.length for op in ops), errors=len(plan.fixes), fixed=len(fixed),
                      operations=counts, op_seconds=seconds)
