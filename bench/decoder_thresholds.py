"""Choose the instance decoder's thresholds on the validation images, never the test set.

    python bench/decoder_thresholds.py runs/bench-instances/seed0/best.pt

Predicts each validation image of the checkpoint's split once, decodes it with every
threshold of the grid and prints object F1 / object Dice / object Hausdorff per setting.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace
from pathlib import Path

from pathoseg.data import load_dataset
from pathoseg.engine.checkpoint import load_model
from pathoseg.engine.instances import decode_instances, resolve_method
from pathoseg.engine.predict import PredictConfig, predict_maps
from pathoseg.metrics import object_metrics, object_tally, pixel_counts, pixel_summary

GRID = {"contour": ("contour_threshold", (0.2, 0.3, 0.4, 0.5, 0.6))}
MIN_MARKERS = (30, 100, 300, 600)  # px at native resolution
MIN_SIZES = (200, 500, 1000)  # px at native resolution


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", help="default: the data set the checkpoint was trained on")
    args = ap.parse_args()
    model, ckpt = load_model(args.checkpoint)
    data = load_dataset(args.data or ckpt.split["data_root"])
    method = resolve_method("auto", model.head.channels)
    if method not in GRID:
        raise SystemExit(f"{args.checkpoint}: a {model.head.name} model has no instance thresholds to choose")
    field, values = GRID[method]
    cached = []
    for name in ckpt.split["val"]:
        image, gt = data[name].load()
        cached.append((gt, predict_maps(model, image, PredictConfig(scale=ckpt.scale))))
    print(f"{len(cached)} validation images of {Path(args.checkpoint)}; method {method}")
    for min_size, min_marker, value in itertools.product(MIN_SIZES, MIN_MARKERS, values):
        cfg = replace(ckpt.instance_config(), min_size=min_size, min_marker=min_marker, **{field: value})
        preds = [(gt, decode_instances(maps, cfg)) for gt, maps in cached]
        m = object_metrics(object_tally(gt, p) for gt, p in preds)
        iou = pixel_summary(pixel_counts(gt, p) for gt, p in preds)["iou_pooled"]
        print(f"min_size {min_size:<4} min_marker {min_marker:<4} {field} {value:<4} F1 {m['f1']:.3f}  object Dice "
              f"{m['object_dice']:.3f}  object Hausdorff {m['object_hausdorff']:6.1f}  IoU {iou:.4f}")


if __name__ == "__main__":
    main()
