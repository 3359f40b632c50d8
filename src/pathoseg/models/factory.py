"""DeepLabV3+ over segmentation_models_pytorch, with the input normalisation inside the model.

The model takes RGB in [0, 1]; each preset's mean/std lives in buffers, so a checkpoint
carries everything prediction needs.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from pathoseg.errors import PathosegError
from pathoseg.models.config import WEIGHT_CHOICES, ModelConfig
from pathoseg.models.heads import Head, get_head
from pathoseg.models.registry import get_preset
from pathoseg.models.weights import load_into_features


class GlandSegmenter(nn.Module):
    """DeepLabV3+ from RGB in [0, 1] to one logit per output channel of its head
    (channel 0 is always the gland logit)."""

    def __init__(self, net: nn.Module, mean, std, config: ModelConfig) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    @property
    def head(self) -> Head:
        return get_head(self.config.head)

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this (the encoder's total downsampling)."""
        return 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _smp_weights(config: ModelConfig, has_offline: bool) -> str | None:
    if config.weights == "imagenet" and not has_offline:
        return "imagenet"
    return None


def build_model(config: ModelConfig = ModelConfig()) -> GlandSegmenter:
    if config.output_stride not in (8, 16):
        raise PathosegError(f"output stride must be 8 or 16, not {config.output_stride}")
    if config.weights not in WEIGHT_CHOICES:
        raise PathosegError(f"unknown weights {config.weights!r}; choose from {', '.join(WEIGHT_CHOICES)}")
    preset = get_preset(config.preset)
    head = get_head(config.head)
    has_offline = preset.offline_weights is not None
    try:
        net = smp.DeepLabV3Plus(
            encoder_name=preset.encoder,
            encoder_weights=_smp_weights(config, has_offline),
            encoder_output_stride=config.output_stride,
            decoder_channels=config.decoder_channels,
            classes=len(head.channels),
        )
    except Exception as exc:  # smp raises many types: download errors, key errors, ...
        if config.weights == "imagenet":
            raise PathosegError(
                f"cannot get ImageNet weights for {preset.encoder} (offline? {type(exc).__name__}); "
                "use --weights none, or a lite0/lite1/lite2 preset whose weights ship offline"
            ) from None
        raise PathosegError(f"cannot build DeepLabV3+ with encoder {preset.encoder}: {exc}") from None
    if has_offline and config.weights in ("default", "imagenet"):
        load_into_features(net.encoder.model, preset.offline_weights)
    return GlandSegmenter(net, preset.mean, preset.std, config)


def freeze_encoder_stages(model: GlandSegmenter, stages: int) -> int:
    """Stop training the encoder's stem and first ``stages`` resolution stages (the
    high-resolution ones, where backward costs most); returns how many tensors froze.
    Warm-started rounds use it: early ImageNet features barely move when fine-tuning."""
    if stages <= 0:
        return 0
    encoder = model.net.encoder
    if hasattr(getattr(encoder, "model", None), "feature_info"):  # timm encoders
        encoder, ends = encoder.model, encoder.model.feature_info.module_name()
    elif hasattr(encoder, "_out_indexes") and hasattr(encoder, "features"):  # SMP's torchvision-style ones
        ends = [f"features.{i}" for i in encoder._out_indexes]
    else:
        raise PathosegError(f"cannot freeze stages of encoder {type(encoder).__name__}")
    last = ends[min(stages, len(ends)) - 1] + "."
    params, seen_last = [], False
    for name, p in encoder.named_parameters():  # registration order = forward order here
        inside = name.startswith(last)
        if seen_last and not inside:
            break
        seen_last |= inside
        params.append(p)
    for p in params:
        p.requires_grad_(False)
    return len(params)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
