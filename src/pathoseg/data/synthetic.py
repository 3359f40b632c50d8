"""Synthetic H&E-like glands: pink stroma, purple nuclei around pale lumens, instance masks.

Deterministic by seed. Used by ``pathoseg demo`` when no GlaS is found and by the tests,
so learning can be checked in seconds on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pathoseg.data.images import write_label_png, write_rgb_png


@dataclass(frozen=True)
class SyntheticConfig:
    size: tuple[int, int] = (192, 256)  # H, W
    glands: tuple[int, int] = (3, 7)  # min, max per image
    radius: tuple[float, float] = (14.0, 34.0)
    stain_jitter: float = 0.04
    gap: int = 4  # px of stroma kept between glands; 1 makes them touch as closely as GlaS glands do


STROMA = np.array([0.93, 0.70, 0.80])
CYTOPLASM = np.array([0.80, 0.55, 0.75])
NUCLEUS = np.array([0.35, 0.20, 0.55])
LUMEN = np.array([0.97, 0.93, 0.95])


def _blob(h: int, w: int, cy: float, cx: float, r: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth, irregular closed shape: an ellipse whose radius wobbles with angle."""
    yy, xx = np.mgrid[:h, :w]
    theta = rng.uniform(0, np.pi)
    aspect = rng.uniform(0.6, 1.0)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / aspect
    ang = np.arctan2(v, u)
    wobble = 1 + sum(rng.uniform(-0.12, 0.12) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
                     for k in (2, 3, 5))
    return np.hypot(u, v) <= r * wobble


def _place_glands(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    h, w = cfg.size
    labels = np.zeros((h, w), np.int32)
    n_target = int(rng.integers(cfg.glands[0], cfg.glands[1] + 1))
    n = 0
    for _ in range(n_target * 20):
        if n == n_target:
            break
        r = rng.uniform(*cfg.radius)
        blob = _blob(h, w, rng.uniform(0, h), rng.uniform(0, w), r, rng)
        if blob.sum() < 80:
            continue
        # Glands never touch in GlaS: keep a gap of stroma between them.
        if (ndi.binary_dilation(blob, iterations=cfg.gap) & (labels > 0)).any():
            continue
        n += 1
        labels[blob] = n
    return labels


def _render(labels: np.ndarray, cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    h, w = labels.shape
    fg = labels > 0
    depth = ndi.distance_transform_edt(fg)
    thickness = rng.uniform(5, 10)
    epithelium = fg & (depth <= thickness)
    lumen = fg & ~epithelium
    stain = 1 + rng.normal(0, cfg.stain_jitter, 3)
    img = np.empty((h, w, 3))
    img[:] = STROMA * stain
    texture = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), 2)
    img += 0.06 * texture[..., None]
    img[epithelium] = CYTOPLASM * stain
    img[lumen] = LUMEN
    # Nuclei: dense along the epithelium, sparse in stroma (lymphocytes as distractors).
    spots = np.zeros((h, w), bool)
    ring = np.argwhere(epithelium & (depth > thickness * 0.4))
    if len(ring):
        spots[tuple(ring[rng.random(len(ring)) < 0.12].T)] = True
    stroma = np.argwhere(~fg)
    spots[tuple(stroma[rng.random(len(stroma)) < 0.004].T)] = True
    nuclei = ndi.binary_dilation(spots, iterations=1)
    img[nuclei] = NUCLEUS * stain
    img = ndi.gaussian_filter(img, sigma=(0.8, 0.8, 0))
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def synthetic_sample(seed: int, cfg: SyntheticConfig = SyntheticConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 HxWx3, instance labels int32 HxW) pair, the same for the same seed."""
    rng = np.random.default_rng(seed)
    labels = _place_glands(cfg, rng)
    return _render(labels, cfg, rng), labels


def write_synthetic(out: str | Path, n: int, seed: int = 0,
                    cfg: SyntheticConfig = SyntheticConfig()) -> Path:
    """Write ``n`` samples as an ``images/`` + ``masks/`` folder that :func:`load_folder` reads."""
    out = Path(out)
    for i in range(n):
        image, labels = synthetic_sample(seed * 100_003 + i, cfg)
        name = f"synth_{i:03d}"
        write_rgb_png(out / "images" / f"{name}.png", image)
        write_label_png(out / "masks" / f"{name}.png", labels)
    return out
