"""Peak memory and seconds of the app's prediction of one large image (the worker's path:
:func:`pathoseg.engine.rounds.review_maps`, which tiles and stitches images over
``LARGE_IMAGE`` pixels).

    python bench/predict_memory.py [--sides 6300,10000] [--whole 6300] [--json docs/results/predict_memory.json]

Each side runs in a fresh process: an untrained DeepLabV3+ / EfficientNet-Lite0 (the default
contour head, the same network cost as a trained one) in a checkpoint of working scale 0.5,
on a synthetic H&E-like image of ``side`` x ``side`` (512 px synthetic gland tiles repeated
to size) on the CPU. It reports its peak resident memory, VmHWM from ``/proc/self/status``
(what ``getrusage(RUSAGE_SELF).ru_maxrss`` measures, except that ru_maxrss keeps the
parent's at fork: a child of a process that has loaded torch would report the parent's),
the part of it held before prediction (Python, torch, the model, the image) and the seconds
``review_maps`` took. ``--whole`` sides are also run the way every image was predicted before
(the whole image at once, no tiles), for comparison. Writes ``{"command", "device", "rows":
[{"side", "path", "peak_rss_gb", "base_rss_gb", "seconds", "glands"}]}`` (GB = 10^9 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATCH = 512  # side of the synthetic tile repeated to size


def hwm_gb() -> float:
    """This process's peak resident memory (VmHWM) in GB."""
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024 / 1e9


def one(side: int, whole: bool) -> dict:
    """Predict review maps for one ``side`` x ``side`` image in this (fresh) process
    (``whole``: as one piece, whatever its size)."""
    import numpy as np
    import torch

    from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
    from pathoseg.engine import rounds
    from pathoseg.engine.checkpoint import Checkpoint
    from pathoseg.models import ModelConfig, build_model

    if whole:
        rounds.LARGE_IMAGE = side * side
    torch.manual_seed(0)
    model = build_model(ModelConfig("lite0"))
    ckpt = Checkpoint.of(model, 0.5)
    patch = synthetic_sample(0, SyntheticConfig(size=(PATCH, PATCH), glands=(12, 20), radius=(16, 40)))[0]
    image = np.empty((side, side, 3), np.uint8)  # filled in place: no transient copy of the image
    for top in range(0, side, PATCH):
        for left in range(0, side, PATCH):
            image[top:top + PATCH, left:left + PATCH] = patch[:side - top, :side - left]
    base = hwm_gb()
    start = time.perf_counter()
    maps = rounds.review_maps(model, ckpt, image, "cpu")
    seconds = time.perf_counter() - start
    return {"side": side, "path": "whole" if whole else "tiled", "peak_rss_gb": round(hwm_gb(), 3),
            "base_rss_gb": round(base, 3), "seconds": round(seconds, 1), "glands": int(maps.glands.max()),
            "threads": torch.get_num_threads()}


def measure(side: int, whole: bool) -> dict:
    """:func:`one` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, __file__, "--one", str(side), *(["--whole", "1"] if whole else [])],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", default="6300,10000", help="image sides in pixels, comma-separated")
    parser.add_argument("--whole", default="", help="sides to run also as one piece (the path before tiling)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "predict_memory.json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child: one side, JSON on stdout
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, bool(args.whole))))
        return
    cases = [(int(s), False) for s in args.sides.split(",")] + [(int(s), True) for s in args.whole.split(",") if s]
    rows = []
    for side, whole in cases:
        rows.append(measure(side, whole))
        print(f"{side} x {side} {rows[-1]['path']}: peak {rows[-1]['peak_rss_gb']:.2f} GB (before prediction "
              f"{rows[-1]['base_rss_gb']:.2f} GB), {rows[-1]['seconds']:.0f} s", flush=True)
    device = f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch threads " \
             f"{rows[0]['threads']}"
    result = {"command": shlex.join(["python", "bench/predict_memory.py", *sys.argv[1:]]), "device": device,
              "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
