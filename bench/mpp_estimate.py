"""How well ``--mpp auto`` finds an image's resolution: GlaS test images resampled by known factors.

    python bench/mpp_estimate.py [--data ../shared/data/glas] [--limit N] [--json docs/results/mpp_estimate.json]
    python bench/mpp_estimate.py --calibrate     # the reference nucleus radius, from GlaS TRAINING images

Factor f means the image is resized by f (cv2 INTER_AREA when shrinking, INTER_CUBIC when
enlarging), so its true resolution is 0.62 / f µm/px. An estimate is "within ±15 %" when the
estimated factor (0.62 / estimated µm/px) is within 15 % of f. Images whose estimate is not
confident count as failures (``--mpp auto`` would fall back to the model's resolution for
them), and are also reported apart. The calibration uses the training images only (at their
native 0.62 µm/px, and shrunk by 0.4–0.8 for the coarse-image bias) and prints the values
for ``MppEstimateConfig.reference_radius_um`` and ``coarse_bias``.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from dataclasses import fields, replace
from pathlib import Path

import cv2
import numpy as np

from pathoseg.data import load_dataset
from pathoseg.data.mpp_estimate import MppEstimateConfig, estimate_mpp, measure_nuclei
from pathoseg.data.resolution import GLAS_MPP, resample_image
from pathoseg.io import write_json
from pathoseg.pipeline.training import find_glas

FACTORS = (0.4, 0.5, 0.67, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5)
TOLERANCE = 0.15


def resample(image: np.ndarray, factor: float) -> np.ndarray:
    """The same tissue at ``factor`` times the pixels per µm; bicubic when enlarging, unlike
    the estimator's own linear resampling, so that the test images are not made its way."""
    return resample_image(image, factor, enlarge_with=cv2.INTER_CUBIC)


def config_from(overrides: list[str]) -> MppEstimateConfig:
    """``--set name=value`` overrides of :class:`MppEstimateConfig` (to try variants)."""
    types = {f.name: type(getattr(MppEstimateConfig(), f.name)) for f in fields(MppEstimateConfig)}
    values = {}
    for item in overrides:
        name, _, value = item.partition("=")
        values[name] = types[name](value)
    return replace(MppEstimateConfig(), **values)


def calibrate(data, cfg: MppEstimateConfig, factors: tuple[float, ...] = (0.4, 0.5, 0.67, 0.8)) -> None:
    """The reference radius (training images at 0.62 µm/px; one pass, then once more with the
    passes, which measure at about the reference's size) and the coarse-image bias exponent
    (training images shrunk by ``factors``: ln(measured / true radius) against ln(enlargement),
    least squares through the origin)."""
    images = [s.load()[0] for s in data if s.name.startswith("train_")]  # never the test images
    one_pass = [m.radius_px for m in (measure_nuclei(im, replace(cfg, passes=1)) for im in images) if m]
    reference = statistics.median(one_pass) * GLAS_MPP
    cfg = replace(cfg, reference_radius_um=reference)
    radii = [m.radius_px for m in (measure_nuclei(im, cfg) for im in images) if m]
    reference = statistics.median(radii) * GLAS_MPP
    cfg = replace(cfg, reference_radius_um=reference)
    xs, ys = [], []
    for image in images:
        for f in factors:
            m = measure_nuclei(resample(image, f), cfg)
            if m and m.enlarged > 1:
                xs.append(math.log(m.enlarged))
                ys.append(math.log(m.radius_px / (reference / GLAS_MPP * f)))
    bias = float(np.dot(xs, ys) / np.dot(xs, xs))
    print(f"{len(radii)} training images: reference_radius_um = {reference:.3f} "
          f"({reference / GLAS_MPP:.2f} px at {GLAS_MPP} µm/px); coarse_bias = {bias:.3f} "
          f"(from {len(xs)} enlarged measurements of images shrunk by {', '.join(map(str, factors))})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--limit", type=int, help="only the first N test images (a smoke test)")
    ap.add_argument("--factors", default=",".join(map(str, FACTORS)))
    ap.add_argument("--json", help="write the results here (e.g. docs/results/mpp_estimate.json)")
    ap.add_argument("--calibrate", action="store_true", help="measure the reference on the training images")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="MppEstimateConfig override")
    args = ap.parse_args()
    root = find_glas(args.data)
    if root is None:
        raise SystemExit("GlaS not found: pass --data")
    data = load_dataset(root)
    cfg = config_from(args.set)
    if args.calibrate:
        calibrate(data, cfg)
        return
    factors = [float(f) for f in args.factors.split(",")]
    tests = [s for s in data if not s.name.startswith("train_")][: args.limit]
    rows, seconds = [], []
    for sample in tests:
        image = sample.load()[0]
        for f in factors:
            resized = resample(image, f)
            start = time.perf_counter()
            est = estimate_mpp(resized, cfg)
            seconds.append((time.perf_counter() - start, resized.shape[0] * resized.shape[1]))
            found = GLAS_MPP / est.mpp if est.mpp else None
            rows.append({"name": sample.name, "factor": f, "estimated_factor": found, "mpp": est.mpp,
                         "confidence": est.confidence, "n_nuclei": est.n_nuclei, "confident": est.confident(cfg)})

    def summary(sub: list[dict]) -> dict:
        err = [abs(r["estimated_factor"] / r["factor"] - 1) if r["estimated_factor"] else float("inf") for r in sub]
        ok = [e <= TOLERANCE and r["confident"] for e, r in zip(err, sub, strict=True)]
        ok_any = [e <= TOLERANCE for e in err]
        return {"images": len(sub), "within_15pct": float(np.mean(ok)), "within_15pct_ignoring_confidence":
                float(np.mean(ok_any)), "median_abs_error": float(np.median(err)),
                "confident": float(np.mean([r["confident"] for r in sub]))}

    per_factor = {str(f): summary([r for r in rows if r["factor"] == f]) for f in factors}
    overall = summary(rows)
    native = [t for t, px in seconds if px <= 775 * 522]
    result = {"overall": overall, "per_factor": per_factor, "tolerance": TOLERANCE,
              "seconds_per_image_median": statistics.median(t for t, _ in seconds),
              "seconds_775x522_or_smaller_median": statistics.median(native) if native else None,
              "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
              "machine": f"{platform.processor() or platform.machine()}, shared CPU", "rows": rows}
    print(f"{'factor':>7} {'true µm/px':>10} {'within ±15 %':>13} {'(any conf.)':>12} {'median |err|':>13} "
          f"{'confident':>10}")
    for f, s in per_factor.items():
        print(f"{f:>7} {GLAS_MPP / float(f):>10.3f} {s['within_15pct']:>13.1%} "
              f"{s['within_15pct_ignoring_confidence']:>12.1%} {s['median_abs_error']:>13.3f} {s['confident']:>10.1%}")
    print(f"{'all':>7} {'':>10} {overall['within_15pct']:>13.1%} {overall['within_15pct_ignoring_confidence']:>12.1%} "
          f"{overall['median_abs_error']:>13.3f} {overall['confident']:>10.1%}")
    print(f"{len(tests)} images x {len(factors)} factors; median {result['seconds_per_image_median']:.3f} s per "
          f"estimate ({result['seconds_775x522_or_smaller_median']:.3f} s at 775x522 or smaller)")
    if args.json:
        write_json(Path(args.json), result)


if __name__ == "__main__":
    main()
