"""Where each round's training labels come from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathoseg.data.cache import IGNORE
from pathoseg.data.images import label_components
from pathoseg.data.targets import gland_pixels
from pathoseg.errors import PathosegError
from pathoseg.hitl.annotator import Effort, SimulatedAnnotator


@dataclass(frozen=True)
class Strategy:
    """``review_fraction`` of a round's images go to the annotator, who fixes ``fix_fraction``
    of their error pixels; the rest enter as the model's own predictions (pseudo-labels)."""

    name: str
    oracle: bool = False  # labels are the ground truth, drawn from scratch
    review_fraction: float = 0.0
    fix_fraction: float = 1.0

    def describe(self) -> str:
        if self.oracle:
            return "ground truth, drawn from scratch"
        if self.review_fraction == 0:
            return "model's own predictions as pseudo-labels"
        return (f"{self.review_fraction:.0%} of images reviewed, {self.fix_fraction:.0%} of their errors fixed; "
                "the rest pseudo-labels")


BUILTIN = {
    "auto": Strategy("auto"),
    "oracle": Strategy("oracle", oracle=True, review_fraction=1.0),
    "hitl": Strategy("hitl", review_fraction=1.0),
    "hitl10": Strategy("hitl10", review_fraction=0.1),
}


def parse_strategy(spec: str, review_fraction: float | None = None, fix_fraction: float | None = None) -> Strategy:
    """A built-in name, or ``mix:R:F`` (review fraction R, fix fraction F).

    ``review_fraction`` / ``fix_fraction`` override the ``hitl`` strategy's.
    """
    if spec in BUILTIN:
        s = BUILTIN[spec]
        if spec == "hitl":
            s = Strategy("hitl", review_fraction=1.0 if review_fraction is None else review_fraction,
                         fix_fraction=1.0 if fix_fraction is None else fix_fraction)
        return s
    if spec.startswith("mix:"):
        try:
            _, r, f = spec.split(":")
            return Strategy(spec, review_fraction=float(r), fix_fraction=float(f))
        except ValueError:
            raise PathosegError(f"bad strategy {spec!r}: write mix:REVIEW:FIX, e.g. mix:0.5:1") from None
    raise PathosegError(f"unknown strategy {spec!r}; choose from {', '.join(BUILTIN)} or mix:REVIEW:FIX")


def pseudo_label(probs: np.ndarray, confident_only: bool, low: float = 0.1, high: float = 0.9) -> np.ndarray:
    """The model's prediction as a target; unsure pixels IGNOREd when ``confident_only``."""
    target = label_components(probs > 0.5).astype(np.uint16)
    if confident_only:
        target[(probs > low) & (probs < high)] = IGNORE
    return target


def make_label(strategy: Strategy, reviewed: bool, probs: np.ndarray | None, gt: np.ndarray,
               annotator: SimulatedAnnotator, confident_only: bool) -> tuple[np.ndarray, Effort]:
    """The training target for one image under ``strategy`` and what it cost the human."""
    gt_bool = gland_pixels(gt)
    if strategy.oracle:  # the true instance ids
        return gt.astype(np.uint16), annotator.draw_from_scratch(gt_bool)
    if probs is None:
        raise ValueError("model-based strategies need the model's prediction")
    if not reviewed:
        return pseudo_label(probs, confident_only), Effort()
    fixer = SimulatedAnnotator(strategy.fix_fraction, annotator.min_region, annotator.cost, annotator.scale)
    corrected, effort = fixer.correct(probs > 0.5, gt_bool)
    return label_components(corrected).astype(np.uint16), effort
