"""One registry of named model presets, as timm keeps one registry of architectures."""

from __future__ import annotations

from dataclasses import dataclass

import segmentation_models_pytorch as smp

from pathoseg.errors import PathosegError
from pathoseg.models.config import DEFAULT_PRESET as DEFAULT_PRESET  # re-exported: presets live here

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preset:
    name: str
    encoder: str  # a segmentation_models_pytorch encoder name
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    offline_weights: str | None = None  # key into pathoseg.models.weights.OFFLINE
    description: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("lite0", "tu-tf_efficientnet_lite0", TF_MEAN, TF_STD, "tf_efficientnet_lite0",
               "EfficientNet-Lite0, ImageNet weights shipped offline (small)"),
        Preset("lite1", "tu-tf_efficientnet_lite1", TF_MEAN, TF_STD, "tf_efficientnet_lite1",
               "EfficientNet-Lite1, ImageNet weights shipped offline"),
        Preset("lite2", "tu-tf_efficientnet_lite2", TF_MEAN, TF_STD, "tf_efficientnet_lite2",
               "EfficientNet-Lite2, ImageNet weights shipped offline"),
        Preset("mobilenet_v2", "mobilenet_v2", description="MobileNetV2 (random init offline)"),
        Preset("resnet50", "resnet50", description="ResNet-50 (random init offline; large)"),
        Preset("resnet101", "resnet101", description="ResNet-101 (random init offline; largest)"),
    )
}



def get_preset(name: str) -> Preset:
    """A registered preset, or any smp encoder by name (ImageNet normalisation)."""
    if name in PRESETS:
        return PRESETS[name]
    if name in smp.encoders.get_encoder_names() or name.startswith("tu-"):
        return Preset(name, name, description=f"segmentation_models_pytorch encoder {name}")
    raise PathosegError(
        f"unknown model preset {name!r}; choose from {', '.join(PRESETS)} "
        "or any segmentation_models_pytorch encoder name"
    )
