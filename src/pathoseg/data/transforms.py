"""Augmentation pipelines (albumentations) for H&E gland training."""

from __future__ import annotations

import albumentations as A
import cv2


def train_transform(crop: int, scale_range: float = 0.2, color: bool = True, seed: int | None = None) -> A.Compose:
    """Flips, 90° rotations, scale, H&E-appropriate colour jitter, then a random crop.

    Colour jitter stays small in hue: stain variation between labs shifts the pink/purple
    balance and intensity, it does not turn tissue green.
    """
    ops: list[A.BasicTransform] = [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(scale=(1 - scale_range, 1 + scale_range), rotate=(-15, 15),
                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        A.PadIfNeeded(crop, crop, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(crop, crop),
    ]
    if color:
        ops += [
            A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=10, p=0.8),
            A.RandomBrightnessContrast(0.15, 0.15, p=0.8),
            A.GaussianBlur(blur_limit=(3, 3), p=0.1),
        ]
    return A.Compose(ops, seed=seed)  # seeded: a resumed run draws the same crops
