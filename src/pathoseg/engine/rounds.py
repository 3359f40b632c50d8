"""Settings of warm-started retraining rounds; light to import (no torch), so the app's
settings and the command line can show their defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WarmRound:
    """How a warm-started retraining round trains (the HITL study's rounds and the app's
    retrains after its first model): ``steps`` optimiser steps at ``lr_scale`` x the
    training lr, the encoder's stem and first ``freeze_stages`` stages left as they are.
    Measured in docs/benchmarks.md (HITL round speed)."""

    steps: int = 80
    lr_scale: float = 0.5
    freeze_stages: int = 0
