"""Training settings as data: how a model trains (``TrainConfig``) and how a warm-started
round retrains (``WarmRound``). Light to import (no torch), so the app's settings and the
command line can show their defaults without loading the training code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WarmRound:
    """How a warm-started retraining round trains (the HITL study's rounds and the app's
    retrains after its first model): ``steps`` optimiser steps at ``lr_scale`` x the
    training lr, the encoder's stem and first ``freeze_stages`` stages left as they are.
    Measured in docs/benchmarks.md (HITL round speed)."""

    steps: int = 80
    lr_scale: float = 0.5
    freeze_stages: int = 0
