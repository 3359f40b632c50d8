"""Figures as PNG: captioned overlap pictures, galleries, learning curves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from pathoseg.io import atomic_path
from pathoseg.viz.overlay import BOTH, GT_ONLY, PRED_ONLY

LEGEND = [Patch(color=np.array(c) / 255, label=t)
          for c, t in ((GT_ONLY, "ground truth only"), (PRED_ONLY, "prediction only"), (BOTH, "overlap"))]


@dataclass
class Panel:
    picture: np.ndarray  # RGB uint8
    caption: str


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def figure_png_bytes(fig: plt.Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def panel_figure(panel: Panel, legend: bool = True) -> plt.Figure:
    h, w = panel.picture.shape[:2]
    fig, ax = plt.subplots(figsize=(6, 6 * h / w + 0.6))
    ax.imshow(panel.picture)
    ax.set_title(panel.caption, fontsize=11)
    ax.axis("off")
    if legend:
        ax.legend(handles=LEGEND, loc="lower center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    return fig


def gallery_figure(panels: Sequence[Panel], columns: int = 4, title: str | None = None) -> plt.Figure:
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        ax.imshow(panel.picture)
        ax.set_title(panel.caption, fontsize=8)
    fig.legend(handles=LEGEND, loc="lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def learning_curve_figure(history: Sequence[dict]) -> plt.Figure:
    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss (BCE + Dice)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [h["val_iou"] for h in history], color="tab:green", marker="o", ms=3, label="val IoU")
    if all("val_f1" in h for h in history):  # checkpoints from before it was measured lack it
        ax2.plot(epochs, [h["val_f1"] for h in history], color="tab:purple", marker="s", ms=3, label="val object F1")
        ax2.legend(loc="lower right", fontsize=8)
    ax2.set_ylabel("validation IoU / object F1")
    ax1.set_title("Learning curve")
    fig.tight_layout()
    return fig
