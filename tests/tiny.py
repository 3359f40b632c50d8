"""Tiny training settings for the tests (a few optimiser steps on small crops, on the CPU), and
small helpers the tests share."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from pathoseg.engine.checkpoint import Checkpoint
from pathoseg.engine.settings import GateConfig, RoundConfig, TrainConfig, WarmRound
from pathoseg.models import ModelConfig, build_model
from pathoseg.server.config import WorkerSettings
from pathoseg.server.storage import DEFAULT_TOKEN_DAYS, add_user


def tiny_round(first_steps: int = 4, warm_steps: int = 4, crop: int = 64, batch_size: int = 4, scale: float = 1.0,
               holdout: float = 0.0, weights: str = "default", **warm) -> RoundConfig:
    """The one retrain round, tiny. ``holdout`` 0 by default: no validation set, no gate (a
    few steps make models whose validation scores are noise; the gate has tests of its own)."""
    train = TrainConfig(model=ModelConfig(weights=weights), batch_size=batch_size, crop=crop, scale=scale,
                        progress=False)
    return RoundConfig(train=train, first_steps=first_steps, warm=WarmRound(warm_steps, **{"crop": crop, **warm}),
                       gate=replace(GateConfig(), holdout=holdout))


def tiny_worker(*, device: str = "cpu", predict_backend: str = "torch", **round_args) -> WorkerSettings:
    return WorkerSettings(round=tiny_round(**round_args), device=device, predict_backend=predict_backend)


def create_user(project, name: str, admin: bool = False, days: int = DEFAULT_TOKEN_DAYS) -> str:
    """A user's login token (only its hash is stored)."""
    return add_user(project, name, "admin" if admin else "annotator", days).token


HEAD_BIAS = "net.segmentation_head.0.bias"  # the gland channel's logit offset


def untrained_checkpoint(path: Path, gland_bias: float | None = None) -> Path:
    """An untrained lite0 checkpoint at scale 1; ``gland_bias`` makes it sure of gland (+) or of
    background (-) everywhere."""
    torch.manual_seed(0)
    model = build_model(ModelConfig("lite0", weights="none"))
    if gland_bias is not None:
        with torch.no_grad():
            model.state_dict()[HEAD_BIAS][0] = gland_bias
    return Checkpoint.of(model, 1.0).save(path)
