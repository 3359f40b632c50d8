"""Whole-slide prediction: tissue megapixels per second at the model's resolution, and peak
memory against slide size.

    python bench/slide_throughput.py [--sides 2048,4096,8192] [--patches 9] [--tile 1024]
                                     [--checkpoint runs/lite0/best.pt] [--out runs/bench-slides]
    python bench/slide_throughput.py --agreement 10 --checkpoint runs/lite0/best.pt [--data GLAS]

Each slide is a synthetic pyramidal TIFF at 0.62 µm/px (GlaS's resolution, so the model
reads level 0 as it is): glass with one block of ``--patches`` 512x512 patches of synthetic
glands at its centre, the same tissue whatever the slide's size, so the rows show what size alone costs. Each slide is
predicted in a fresh process (the library calls behind ``pathoseg predict``), which reports
its peak resident memory (VmHWM; ru_maxrss would include the parent's at fork) and the part of
it that the slide adds to a process that has loaded torch and the model. Without
``--checkpoint`` an untrained DeepLabV3+ / EfficientNet-Lite0 with the default contour head
is used: the same network cost as a trained one. Prints a markdown table.

``--agreement N`` instead compares slide prediction with per-image prediction of the same
pixels for a trained model (GlaS testA images on a border of glass, tiles of 1024 and 512):
DeepLabV3+'s image-level pooling sees each window whole, so tiles are not exactly the image.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

_RUN = """
import json, re, sys
import torch
from pathlib import Path
from pathoseg.engine.checkpoint import load_model
from pathoseg.pipeline.prediction import model_mpp_of, open_slides, predict_slides, slide_config
ckpt_path, slide, out, tile = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
model, ckpt = load_model(ckpt_path)
base = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
mpp = model_mpp_of(ckpt, None, ckpt_path) or 0.62
run = predict_slides(model, open_slides([Path(slide)], None, None), out, mpp, ckpt.scale, ckpt.instance_config(),
                     torch.device("cpu"), slide_config(tile, False), progress=False)[0]
hwm = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print("RESULT", json.dumps({**run.to_dict(), "peak_mb": hwm / 1024, "base_mb": base / 1024,
                            "threads": torch.get_num_threads()}))
"""


def make_slide(path: Path, side: int, patches: int, seed: int = 0) -> Path:
    """Glass with one block of ``patches`` 512x512 patches of synthetic glands at its centre."""
    from pathoseg.data.slides import write_pyramidal_tiff
    from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample

    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = (238, 236, 240)
    per_row = max(1, int(np.ceil(np.sqrt(patches))))
    top = left = (side - per_row * 512) // 2
    if top < 0:
        sys.exit(f"{patches} patches do not fit on a {side}x{side} slide")
    for n in range(patches):
        r, c = divmod(n, per_row)
        image, _ = synthetic_sample(seed + n, SyntheticConfig(size=(512, 512), glands=(12, 20), radius=(16, 40)))
        canvas[top + r * 512:top + (r + 1) * 512, left + c * 512:left + (c + 1) * 512] = image
    return write_pyramidal_tiff(path, canvas, mpp=0.62, tile=512, min_side=512)


def untrained_checkpoint(path: Path) -> Path:
    import torch

    from pathoseg.engine.checkpoint import Checkpoint
    from pathoseg.models import ModelConfig, build_model

    torch.manual_seed(0)
    return Checkpoint.of(build_model(ModelConfig(weights="none")), 1.0, mpp=0.62).save(path)


def agreement(checkpoint: Path, data: str | None, n: int, tiles: list[int], out: Path) -> None:
    """Slide against per-image prediction with a trained model: the first ``n`` GlaS testA
    images, each on a 128 px border of glass written as a slide at 0.62 µm/px."""
    import tifffile

    from pathoseg.data import load_dataset
    from pathoseg.data.slides import Slide, write_pyramidal_tiff
    from pathoseg.engine.checkpoint import load_model
    from pathoseg.engine.predict import PredictConfig, predict_instances
    from pathoseg.engine.wsi.run import SlideConfig, predict_slide
    from pathoseg.metrics import object_metrics, object_tally
    from pathoseg.pipeline.training import find_dataset

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a > 0) & (b > 0)).sum() / max(1, ((a > 0) | (b > 0)).sum()))

    root = find_dataset(data)
    if root is None:
        sys.exit("--agreement needs GlaS (--data)")
    model, ckpt = load_model(checkpoint)
    icfg, pcfg = ckpt.instance_config(), PredictConfig(scale=ckpt.scale)
    samples = [s for s in load_dataset(root) if s.part == "testA"][:n]
    rows = {t: {"iou": [], "f1": [], "gt": [], "cells": []} for t in tiles}
    alone_gt = []
    for sample in samples:
        image, truth = sample.load()
        b = 128
        canvas = np.empty((image.shape[0] + 2 * b, image.shape[1] + 2 * b, 3), np.uint8)
        canvas[:] = (238, 236, 240)
        canvas[b:-b, b:-b] = image
        path = write_pyramidal_tiff(out / f"{sample.name}.tif", canvas, mpp=0.62, min_side=256)
        reference, _ = predict_instances(model, canvas, pcfg, icfg)
        alone_gt.append(iou(predict_instances(model, image, pcfg, icfg)[0], truth))
        for t in tiles:
            with Slide(path) as slide:
                run = predict_slide(model, slide, slide.region, out / f"agree_{t}", 0.62, ckpt.scale, icfg,
                                    SlideConfig(tile=t), progress=False)
            mask = tifffile.imread(run.outputs["mask"])
            rows[t]["iou"].append(iou(mask, reference))
            rows[t]["f1"].append(object_metrics([object_tally(reference, mask)])["f1"])
            rows[t]["gt"].append(iou(mask[b:-b, b:-b], truth))
            rows[t]["cells"].append(run.cells)
    print(f"\n{len(samples)} GlaS testA images on glass, {checkpoint}; per-image IoU with the ground truth "
          f"(image alone, no glass): {np.mean(alone_gt):.3f}\n")
    print("| tile | cells per image | IoU with per-image (same picture) | object F1 with per-image | IoU with GT |")
    print("|---|---|---|---|---|")
    for t, r in rows.items():
        print(f"| {t} | {np.mean(r['cells']):.0f} | {np.mean(r['iou']):.3f} (min {min(r['iou']):.3f}) | "
              f"{np.mean(r['f1']):.3f} | {np.mean(r['gt']):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", default="2048,4096,8192", help="slide sides in level-0 pixels")
    ap.add_argument("--patches", type=int, default=9, help="512x512 tissue patches per slide")
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--checkpoint", help="a trained model (default: an untrained one)")
    ap.add_argument("--out", default="runs/bench-slides")
    ap.add_argument("--agreement", type=int, default=0, metavar="N",
                    help="instead: slide vs per-image prediction on N GlaS testA images (needs --checkpoint)")
    ap.add_argument("--agreement-tiles", default="1024,512")
    ap.add_argument("--data", help="GlaS for --agreement (default ../shared/data/glas)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.agreement:
        if not args.checkpoint:
            sys.exit("--agreement needs --checkpoint (a trained model)")
        agreement(Path(args.checkpoint), args.data, args.agreement,
                  [int(t) for t in args.agreement_tiles.split(",")], out)
        return
    ckpt = Path(args.checkpoint) if args.checkpoint else untrained_checkpoint(out / "untrained.pt")
    # A fixed mmap threshold: large buffers (the network's activations) go back to the system
    # when freed, so the peak measures what is alive, not glibc's heap growth.
    env = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), **os.environ, "PYTHONPATH": str(ROOT / "src")}
    rows = []
    for side in [int(s) for s in args.sides.split(",")]:
        slide = make_slide(out / f"slide_{side}.tif", side, args.patches)
        done = subprocess.run([sys.executable, "-c", _RUN, str(ckpt), str(slide), str(out / f"pred_{side}"),
                               str(args.tile)], capture_output=True, text=True, env=env)
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        run = json.loads(done.stdout.split("RESULT", 1)[1])
        rows.append((side, run))
        print(f"{side}: {json.dumps(run)}", file=sys.stderr)
    print(f"\ntile {args.tile}, {args.patches} tissue patches of 512x512 per slide, "
          f"{rows[0][1]['threads']} torch threads\n")
    print("| slide (level-0 px) | slide MP | tissue MP | tiles run / all | MP through the network | seconds | "
          "tissue MP/s | network MP/s | peak RSS MB | added by the slide MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for side, r in rows:
        print(f"| {side}x{side} | {side * side / 1e6:.1f} | {r['tissue_mpx']:.2f} | {r['computed_windows']} / "
              f"{r['cells']} | {r['computed_mpx']:.1f} | {r['seconds']:.1f} | {r['tissue_mpx'] / r['seconds']:.3f} | "
              f"{r['computed_mpx'] / r['timings']['cells_s']:.3f} | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] - r['base_mb']:.0f} |")


if __name__ == "__main__":
    main()
