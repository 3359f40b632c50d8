"""What a model is, as data: light to import (no torch), so settings and the command line can
use it without loading the network code."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pathoseg.models.heads import DEFAULT_HEAD

DEFAULT_PRESET = "lite0"
WEIGHT_CHOICES = ("default", "imagenet", "none")


@dataclass(frozen=True)
class ModelConfig:
    preset: str = DEFAULT_PRESET
    output_stride: int = 16
    weights: str = "default"  # default: offline ImageNet where shipped, else random init
    decoder_channels: int = 256
    head: str = DEFAULT_HEAD  # output channels: see pathoseg.models.heads

    def to_dict(self) -> dict:
        return asdict(self)
