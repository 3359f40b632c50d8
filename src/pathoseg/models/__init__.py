"""Models: DeepLabV3+ factory, encoder registry, offline pretrained weights."""

from pathoseg.models.factory import GlandSegmenter, ModelConfig, build_model, count_parameters, freeze_encoder_stages
from pathoseg.models.heads import DEFAULT_HEAD, HEADS, Head, get_head
from pathoseg.models.registry import DEFAULT_PRESET, PRESETS, Preset, get_preset

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
