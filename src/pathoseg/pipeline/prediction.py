"""``pathoseg predict``: images in; binary masks, instance label maps and overlays out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pathoseg.data.images import read_image, write_label_png, write_rgb_png
from pathoseg.engine.instances import InstanceConfig
from pathoseg.engine.predict import PredictConfig, predict_instances
from pathoseg.models import GlandSegmenter
from pathoseg.viz.overlay import mask_overlay


def predict_files(model: GlandSegmenter, images: Sequence[Path], out: Path, pcfg: PredictConfig,
                  icfg: InstanceConfig, device: torch.device, progress: bool = True) -> list[Path]:
    """Write ``masks/<stem>.png`` (0/255), ``instances/<stem>.png`` and ``overlays/<stem>.png``."""
    written = []
    for path in tqdm(images, desc="predicting", unit="img", disable=not progress, leave=False):
        image = read_image(path)
        labels, _ = predict_instances(model, image, pcfg, icfg, device)
        write_label_png(out / "masks" / f"{path.stem}.png", (labels > 0).astype(np.uint8) * 255)
        write_label_png(out / "instances" / f"{path.stem}.png", labels)
        write_rgb_png(out / "overlays" / f"{path.stem}.png", mask_overlay(image, labels))
        written.append(out / "masks" / f"{path.stem}.png")
    return written
