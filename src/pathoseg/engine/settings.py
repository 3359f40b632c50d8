"""Training settings as data: how a model trains (``TrainConfig``) and how a warm-started
round retrains (``WarmRound``). Light to import (no torch), so the app's settings and the
command line can show their defaults without loading the training code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from pathoseg.models.config import ModelConfig


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 100  # ~13 min on 2 CPU cores; see docs/benchmarks.md
    batch_size: int = 8  # the global batch: split over the processes of a distributed run
    crop: int = 224
    # Native resolution: the thin stroma between touching glands survives, and a step costs
    # the same as at 0.5 (fixed crops); object F1 0.83 vs 0.80 at 40 epochs (docs/benchmarks.md §5).
    scale: float = 1.0
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of training spent warming up the learning rate
    repeats: int = 1  # random crops per image per epoch
    seed: int = 0
    budget_minutes: float | None = None  # stop (and finish the schedule) by this wall time
    workers: int = 0
    progress: bool = True
    # Which epoch becomes best.pt: the validation images' pooled IoU, or their GlaS object F1
    # (what grading needs: whole glands, not pixels); the other's best is kept as best-<other>.pt.
    select: str = "iou"
    # Extra weight of the loss near gland outlines: a pixel at distance d (native px)
    # from an outline weighs 1 + boundary_weight * exp(-d² / 2σ²), σ = data.targets.BOUNDARY_SIGMA; the
    # weight map of U-Net (Ronneberger et al., 2015) made for every outline, not only the
    # gaps between touching glands. 0: every labelled pixel weighs the same.
    boundary_weight: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise ValueError(f"select must be one of {', '.join(SELECTIONS)}, not {self.select!r}")
        if not self.boundary_weight >= 0:
            raise ValueError(f"boundary_weight must be a number >= 0, not {self.boundary_weight!r}")


SELECTIONS = ("iou", "f1")  # validation metrics a training can select its best epoch by
# Settings added after runs were made, with the value that leaves training as it was then.
ADDED_LATER = {"boundary_weight": 0.0}


# Named training recipes: measured changes to the TrainConfig defaults (presets are data).
# "glas", the default of `pathoseg train`: the one-factor winners at Lite0's cost (context and
# the boundary-weighted loss), 3 seeds in docs/benchmarks.md §5e (~45 minutes on 2 CPU cores).
# "quick": the defaults themselves (224 px crops, ~13 minutes), which the demo, the app's loop
# and the HITL study train; changing them would make every finished study and app round stale.
RECIPES: dict[str, dict] = {
    "glas": {"crop": 384, "epochs": 60, "boundary_weight": 5.0},
    "quick": {},
}
DEFAULT_RECIPE = "glas"


def recipe(name: str = DEFAULT_RECIPE, **changes) -> TrainConfig:
    """The TrainConfig of a named recipe, with ``changes`` on top."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, not {name!r}")
    return replace(TrainConfig(), **{**RECIPES[name], **changes})


def without_unused_additions(train_config: dict) -> dict:
    """A training config less the settings added later that are still off: what a run's
    fingerprint holds, so a run made before they existed still resumes and is reused."""
    return {k: v for k, v in train_config.items() if k not in ADDED_LATER or ADDED_LATER[k] != v}


@dataclass(frozen=True)
class WarmRound:
    """How a warm-started retraining round trains (the HITL study's rounds and the app's
    retrains after its first model): ``steps`` optimiser steps of ``crop``-pixel crops at
    ``lr_scale`` x the training lr, the encoder's stem and first ``freeze_stages`` stages left
    as they are. Measured in docs/benchmarks.md (HITL round speed): on 2 cores a step of 8
    crops of 224 px costs 1.17 s, of 160 px 0.57 s, so 80 steps of 160 px fit the one-minute
    round (None: the training crop)."""

    steps: int = 80
    lr_scale: float = 0.5
    freeze_stages: int = 0
    crop: int | None = 160


@dataclass(frozen=True)
class GateConfig:
    """The project's validation set and the gate before a retrained model becomes active.

    Every reviewed image (a person drew or checked its labels), in the order it was first
    labelled, joins the validation set when the set holds fewer than ``floor(n x holdout)`` of
    the ``n`` reviewed images of its grade seen so far (grade unknown: one group); so every
    fifth reviewed image of each grade is held out, the set grows with the labels, and an image
    once held out is never trained on. Pseudo-labels (the model's glands saved unchanged) never
    validate: the model that made them would always look best on them.

    A few validation images tell little apart, so the gate asks how much better the candidate
    could be: over ``resamples`` bootstrap resamplings of the validation images, the
    ``confidence`` quantile of (candidate - active) in pooled IoU and object F1. The candidate
    is refused when even that is below minus the tolerance, i.e. when it is worse beyond what
    the validation set can tell apart (a lab's real regression, 0.87 -> 0.79 IoU, is refused on
    a handful of images; one gland more or less on three images is not). A candidate becomes active
    only when its pooled IoU and object F1 on that set are not worse than the active model's by
    more than the tolerances (one validation image in five is little data: a smaller tolerance
    would refuse candidates for noise)."""

    holdout: float = 0.2
    iou_tolerance: float = 0.01
    f1_tolerance: float = 0.02
    confidence: float = 0.95
    resamples: int = 2000


@dataclass(frozen=True)
class RoundConfig:
    """The one retrain round, for ``pathoseg hitl`` and the app's worker alike
    (:mod:`pathoseg.engine.rounds`). ``train`` is the one training configuration: its model and
    scale make a project's first model (a model derived from a base keeps the base's); its
    batch, crop, learning rate and augmentation train every round. The first model trains
    ``first_steps`` optimiser steps from ImageNet; later rounds warm-start from the active model
    as ``warm`` says (``retrain="scratch"``: from ImageNet each time, ``first_steps`` steps).
    Round ``r`` of seed ``s`` trains with seed ``1000 s + r``."""

    train: TrainConfig = field(default_factory=TrainConfig)
    first_steps: int = 200
    warm: WarmRound = field(default_factory=WarmRound)
    retrain: str = "warm"
    gate: GateConfig = field(default_factory=GateConfig)
    seed: int = 0

    def describe(self) -> str:
        t = self.train
        return (f"{self.first_steps} steps of {t.batch_size} crops of {t.crop} px for a first model (scale "
                f"{t.scale}), then {self.warm.steps} warm-started steps of {self.warm.crop or t.crop} px crops; "
                f"{self.gate.holdout:.0%} of the reviewed labels held out to gate each retrain")

    def __post_init__(self) -> None:
        if self.retrain not in RETRAIN_MODES:
            raise ValueError(f"retrain must be one of {', '.join(RETRAIN_MODES)}, not {self.retrain!r}")


RETRAIN_MODES = ("warm", "scratch")
