"""Models: DeepLabV3+ factory, encoder registry, offline pretrained weights."""

from pathoseg.models.factory import GlandSegmenter, ModelConfig, build_model, count_parameters
from pathoseg.models.registry import DEFAULT_PRESET, PRESETS, Preset, get_preset

__all__ = ["DEFAULT_PRESET", "PRESETS", "GlandSegmenter", "ModelConfig", "Preset",
           "build_model", "count_parameters", "get_preset"]
