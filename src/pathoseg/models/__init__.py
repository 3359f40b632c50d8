"""Models: DeepLabV3+ factory, encoder registry, offline pretrained weights, output heads.

The factory and the registry import torch and SMP; they load on first use (PEP 562), so
that reading the head registry (the command line's --help) stays light."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pathoseg.models.config import DEFAULT_PRESET, ModelConfig
from pathoseg.models.heads import DEFAULT_HEAD, HEADS, Head, get_head

if TYPE_CHECKING:
    from pathoseg.models.factory import GlandSegmenter, build_model, count_parameters, freeze_encoder_stages
    from pathoseg.models.registry import PRESETS, Preset, get_preset

_LAZY = {name: "pathoseg.models.factory" for name in
         ("GlandSegmenter", "build_model", "count_parameters", "freeze_encoder_stages")}
_LAZY |= {name: "pathoseg.models.registry" for name in ("PRESETS", "Preset", "get_preset")}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pathoseg.models' has no attribute {name!r}")


__all__ = [
           "DEFAULT_HEAD",
           "DEFAULT_PRESET",
           "HEADS",
           "PRESETS",
           "GlandSegmenter",
           "Head",
           "ModelConfig",
           "Preset",
           "build_model",
           "count_parameters",
           "freeze_encoder_stages",
           "get_head",
           "get_preset",
]
