"""Where each round's training labels come from."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pathoseg.engine.rounds import ReviewMaps
from pathoseg.errors import PathosegError
from pathoseg.hitl.annotator import Effort, SimulatedAnnotator


@dataclass(frozen=True)
class Strategy:
    """``review_fraction`` of a round's images go to the annotator, who fixes ``fix_fraction``
    of their error glands (largest first); the rest enter as the model's own predictions
    (pseudo-labels)."""

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
    "hitl25": Strategy("hitl25", review_fraction=0.25),
    "hitl50": Strategy("hitl50", review_fraction=0.5),
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


def make_label(strategy: Strategy, reviewed: bool, maps: ReviewMaps | None, gt: np.ndarray,
               annotator: SimulatedAnnotator) -> tuple[np.ndarray, Effort]:
    """The saved mask (uint16 instance map, native resolution) for one image under
    ``strategy`` and what it cost the human. ``maps``: what the app shows for the image (the
    model's glands and gland probability); ``gt``: the true instance map. Unreviewed images
    keep the model's glands as they are (pseudo-labels: the app's "accept all")."""
    if strategy.oracle:  # the true instance ids
        return gt.astype(np.uint16), annotator.draw_from_scratch(gt)
    if maps is None:
        raise ValueError("model-based strategies need the model's prediction")
    if not reviewed:
        return maps.glands.astype(np.uint16), Effort()
    fixer = replace(annotator, fix_fraction=strategy.fix_fraction)
    return fixer.correct(maps.glands, gt, maps.probs.astype(np.float32) / 255)
