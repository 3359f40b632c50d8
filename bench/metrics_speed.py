"""Speed of the GlaS object metrics on all 80 GlaS test images at native resolution.

    python bench/metrics_speed.py [--data ../shared/data/glas] [--baseline-images 10]

Predictions are the ground truth perturbed deterministically (eroded, shifted, one gland
dropped, one false positive added), so the benchmark needs no model. "ours" is
pathoseg.metrics (distance transforms on each pair's bounding box); the baseline is the
common Python port of the challenge code: scipy's directed_hausdorff on every object's
pixel coordinates. The baseline runs on the first N images (it is slow) and both are timed
on those same images for the ratio; ours is also timed on all 80.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.distance import directed_hausdorff

from pathoseg.data import load_dataset
from pathoseg.metrics import object_metrics, object_tally, pixel_counts
from pathoseg.pipeline.training import find_dataset


def perturb(labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros_like(labels)
    ids = [i for i in np.unique(labels) if i]
    for k, i in enumerate(ids):
        if k == 0 and len(ids) > 2:
            continue  # a missed gland
        mask = ndi.binary_erosion(labels == i, iterations=int(rng.integers(1, 4)))
        out[np.roll(mask, int(rng.integers(-4, 5)), axis=1)] = i
    out[10:40, 10:40] = labels.max() + 1  # a false positive
    return out


def baseline_hausdorff_sums(gt: np.ndarray, seg: np.ndarray) -> float:
    """Per-object masks and scipy's directed_hausdorff on pixel coordinates (the usual port)."""
    total = 0.0
    for a_lab, b_lab in ((seg, gt), (gt, seg)):
        b_ids = [j for j in np.unique(b_lab) if j]
        for i in [i for i in np.unique(a_lab) if i]:
            a = a_lab == i
            overlap = [((a & (b_lab == j)).sum(), j) for j in b_ids]
            best = max(overlap)[1] if overlap and max(overlap)[0] > 0 else None
            pa = np.argwhere(a)
            cands = [best] if best is not None else b_ids
            dists = []
            for j in cands:
                pb = np.argwhere(b_lab == j)
                dists.append(max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0]))
            total += a.sum() * min(dists)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--baseline-images", type=int, default=10)
    args = ap.parse_args()
    data = load_dataset(find_dataset(args.data))
    tests = [s for s in data if s.part in ("testA", "testB")]
    pairs = []
    for k, s in enumerate(tests):
        gt = s.load()[1]
        pairs.append((gt, perturb(gt, k)))

    start = time.perf_counter()
    tallies = [object_tally(gt, seg) for gt, seg in pairs]
    counts = [pixel_counts(gt, seg) for gt, seg in pairs]
    ours_all = time.perf_counter() - start
    m = object_metrics(tallies)
    print(f"ours: all metrics on {len(pairs)} images in {ours_all:.2f} s "
          f"(F1 {m['f1']:.3f}, object Dice {m['object_dice']:.3f}, Hausdorff {m['object_hausdorff']:.1f}, "
          f"pooled IoU {sum(counts[1:], counts[0]).iou:.3f})")

    sub = pairs[: args.baseline_images]
    start = time.perf_counter()
    ours_sums = [object_tally(gt, seg) for gt, seg in sub]
    ours_sub = time.perf_counter() - start
    start = time.perf_counter()
    base_sums = [baseline_hausdorff_sums(gt, seg) for gt, seg in sub]
    base_sub = time.perf_counter() - start
    agree = np.allclose([t.seg_hausdorff + t.gt_hausdorff for t in ours_sums], base_sums, rtol=1e-6)
    print(f"on {len(sub)} images: baseline (directed_hausdorff, Hausdorff only) {base_sub:.2f} s, "
          f"ours (all object metrics) {ours_sub:.2f} s, speed-up x{base_sub / ours_sub:.1f}; "
          f"Hausdorff sums agree: {agree}")


if __name__ == "__main__":
    main()
