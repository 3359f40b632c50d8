"""Images and masks held in memory at the working scale, and the torch dataset over them.

GlaS is small (165 images): resizing once up front instead of decoding PNGs every step
makes a CPU epoch several times faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from pathoseg.data.resolution import resample_image, resample_labels
from pathoseg.data.samples import Sample
from pathoseg.data.targets import BOUNDARY_SIGMA, IGNORE, boundary_weights, head_targets

__all__ = ["IGNORE", "CropDataset", "ScaledPair", "load_scaled", "to_target"]


@dataclass
class ScaledPair:
    name: str
    image: np.ndarray  # (h, w, 3) uint8 at working scale
    target: np.ndarray  # (h, w) uint16 instance ids: 0 background, 1..N glands, IGNORE unlabelled


def to_target(labels: np.ndarray) -> np.ndarray:
    """The training target of an instance label map: its ids as uint16 (IGNORE passes
    through). Ids are kept, since the instance heads learn what separates them."""
    labels = np.asarray(labels)
    if labels.max(initial=0) > IGNORE:
        raise ValueError(f"instance ids above {IGNORE - 1} cannot be trained on")
    return labels.astype(np.uint16)


def load_scaled(samples: Sequence[Sample], scale: float, progress: bool = True) -> list[ScaledPair]:
    pairs = []
    for s in tqdm(samples, desc="loading", unit="img", disable=not progress, leave=False):
        image, labels = s.load()
        if labels is None:
            raise ValueError(f"{s.name}: training needs a mask")
        pairs.append(ScaledPair(s.name, resample_image(image, scale), resample_labels(to_target(labels), scale)))
    return pairs


class CropDataset(Dataset):
    """Random augmented crops, ``repeats`` per image per epoch, with the targets of the
    model's output ``channels`` made from the augmented instance ids, and each pixel's loss
    weight (:func:`~pathoseg.data.targets.boundary_weights`; 0 where unlabelled)."""

    def __init__(self, pairs: Sequence[ScaledPair], transform: A.Compose, repeats: int = 1,
                 channels: tuple[str, ...] = ("gland",), boundary_weight: float = 0.0,
                 boundary_sigma: float = BOUNDARY_SIGMA) -> None:
        self.pairs = list(pairs)
        self.transform = transform
        self.repeats = repeats
        self.channels = channels
        self.boundary_weight = boundary_weight
        self.boundary_sigma = boundary_sigma

    def __len__(self) -> int:
        return len(self.pairs) * self.repeats

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image (3, h, w) in [0, 1], targets (C, h, w) float and pixel weights (h, w) float."""
        pair = self.pairs[i % len(self.pairs)]
        out = self.transform(image=pair.image, mask=pair.target)
        image = torch.from_numpy(out["image"]).permute(2, 0, 1).float().div_(255)
        targets, _ = head_targets(out["mask"], self.channels)
        weights = boundary_weights(out["mask"], self.boundary_weight, self.boundary_sigma)
        return image, torch.from_numpy(targets), torch.from_numpy(weights)
