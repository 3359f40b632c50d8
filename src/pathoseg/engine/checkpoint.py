"""Checkpoints that carry the model config, training config, split and history."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pathoseg.data.resolution import checkpoint_mpp
from pathoseg.engine.instances import InstanceConfig
from pathoseg.errors import PathosegError
from pathoseg.io import atomic_path
from pathoseg.models import GlandSegmenter, ModelConfig, build_model
from pathoseg.models.heads import LEGACY_HEAD

FORMAT = "pathoseg-checkpoint-v1"


@dataclass
class Checkpoint:
    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    scale: float  # working resolution as a fraction of native
    train_config: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] | None = None
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    instances: dict[str, Any] = field(default_factory=dict)  # decoder settings learned from the training data
    # µm/px of the training data at native resolution; None (checkpoints from before it): see
    # pathoseg.data.resolution.checkpoint_mpp (GlaS 0.62 when the training data was GlaS, else unknown)
    mpp: float | None = None
    # [[image name, mask version], ...] of the labels a retrained model learned from (the app
    # and the study); None for a model trained by `pathoseg train` (its ``split`` says)
    trained_on: list[list] | None = None

    def instance_config(self, **overrides: Any) -> InstanceConfig:
        """The decoder settings for this model: defaults, then what training learned, then
        ``overrides`` that are not None (command-line flags)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return InstanceConfig(**{**self.instances, **given})

    @classmethod
    def of(cls, model: GlandSegmenter, scale: float, **fields: Any) -> Checkpoint:
        """A checkpoint of ``model``'s current weights (copied to the CPU)."""
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return cls(model.config, state, scale=scale, **fields)

    def derive(self, model: GlandSegmenter, **fields: Any) -> Checkpoint:
        """A checkpoint of ``model``, retrained from this one: it keeps this one's working scale,
        µm/px, head and learned decoder settings (the model carries its own configuration, so
        no caller assembles them); ``fields`` add what is new (training config, provenance)."""
        if model.config.head != self.model_config.head or model.config.preset != self.model_config.preset:
            raise ValueError(f"a model derived from a {self.model_config.preset}/{self.model_config.head} "
                             f"checkpoint cannot be a {model.config.preset}/{model.config.head}")
        carried = {"instances": dict(self.instances), "mpp": checkpoint_mpp(self)}
        return Checkpoint.of(model, self.scale, **{**carried, **fields})

    def save(self, path: str | Path) -> Path:
        payload = {"format": FORMAT, **self.__dict__, "model_config": self.model_config.to_dict()}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    def build(self, device: torch.device | str = "cpu") -> GlandSegmenter:
        """The model with these weights, in eval mode; no pretrained weights are fetched."""
        config = ModelConfig(**{**self.model_config.__dict__, "weights": "none"})
        model = build_model(config)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError:
            raise PathosegError(f"checkpoint weights do not fit preset {config.preset}") from None
        model.config = self.model_config
        return model.to(device).eval()


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise PathosegError("checkpoint not found", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike
        raise PathosegError(f"not a readable checkpoint ({type(exc).__name__})", path) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PathosegError("not a pathoseg checkpoint (another architecture or tool?)", path)
    payload.pop("format")
    try:
        # Written before output heads existed: a plain semantic model.
        payload["model_config"] = ModelConfig(**{"head": LEGACY_HEAD, **payload["model_config"]})
        ckpt = Checkpoint(**payload)
    except TypeError as exc:
        raise PathosegError(f"checkpoint is incomplete ({exc})", path) from None
    return ckpt


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[GlandSegmenter, Checkpoint]:
    ckpt = load_checkpoint(path)
    try:
        return ckpt.build(device), ckpt
    except PathosegError as exc:
        raise PathosegError(str(exc), path) from None
