"""Tiled prediction of whole images: the old averaging tiler (windows of ``tile`` every 3/4
tile, overlapping logits averaged; the baseline, kept here) against the one tiler images now
share with slides (the slide grid: windows of at most ``tile`` overlapping by 2 x 1/16 tile,
blended with linear ramps), and the untiled image as the reference, in one run.

    python bench/tiler.py --checkpoint runs/hitl-one-loop/seed0/oracle/round4/model.pt \\
        --data ../shared/data/glas --tiles 128,256 [--limit 10]

Each row is ``pathoseg evaluate``'s own path (``run_evaluate``) on the GlaS test parts with
``--tile T``: pooled IoU, object F1 and seconds per image (decoding included). Writes
``--json`` (default ``docs/results/tiler.json``) as ``{"command", "device", "checkpoint",
"rows": [{"tiler", "tile", "iou_pooled", "object_f1", "s_per_image", "parts": {...}}]}``.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

import pathoseg.engine.predict as predict
from pathoseg.engine.predict import forward_padded
from pathoseg.io import write_json
from pathoseg.pipeline.evaluate_run import EvaluateRequest, run_evaluate

ROOT = Path(__file__).resolve().parents[1]


def averaging_tiled(model, x: torch.Tensor, tile: int, tta: bool) -> torch.Tensor:
    """The tiler images had before (pathoseg 912216b's ``engine/predict._tiled``)."""
    def windows(size: int, step: int) -> list[int]:
        return [0] if size <= tile else [*range(0, size - tile, step), size - tile]

    h, w = x.shape[-2:]
    step = max(1, tile * 3 // 4)
    out = torch.zeros((x.shape[0], len(model.head.channels), h, w), device=x.device)
    weight = torch.zeros((1, 1, h, w), device=x.device)
    for top in windows(h, step):
        for left in windows(w, step):
            window = (..., slice(top, top + tile), slice(left, left + tile))
            out[window] += forward_padded(model, x[window], tta)
            weight[window] += 1
    return out / weight


def row(args: argparse.Namespace, tiler: str, tile: int | None, work: Path) -> dict:
    ramps = predict._tiled
    if tiler == "averaging":
        predict._tiled = averaging_tiled
    try:
        parts = ("testA", "testB")
        if args.limit:
            from dataclasses import replace

            from pathoseg.data import load_dataset
            from pathoseg.data.splits import make_split

            split = make_split(load_dataset(args.data), "official")
            split_file = work / "split.json"
            replace(split, test={p: split.test[p][: args.limit] for p in parts}).save(split_file)
        else:
            split_file = None
        start = time.perf_counter()
        metrics = run_evaluate(EvaluateRequest(
            out=str(work / f"{tiler}-{tile}"), checkpoint=args.checkpoint, data=args.data, tile=tile,
            parts=parts, split_file=str(split_file) if split_file else None, pictures=False, device="cpu"),
            say=lambda _line: None)
        seconds = time.perf_counter() - start
    finally:
        predict._tiled = ramps
    n = sum(metrics[p]["n_images"] for p in parts)
    test = metrics["test"]
    print(f"{tiler:<10} tile {tile or '-':>5}  IoU {test['iou_pooled']:.4f}  F1 {test['f1']:.4f}  "
          f"{seconds / n:.2f} s/image", flush=True)
    return {"tiler": tiler, "tile": tile, "iou_pooled": test["iou_pooled"], "object_f1": test["f1"],
            "s_per_image": seconds / n,
            "parts": {p: {"iou_pooled": metrics[p]["iou_pooled"], "object_f1": metrics[p]["f1"]} for p in parts}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "glas"))
    ap.add_argument("--tiles", default="128,256", help="window sides at working scale")
    ap.add_argument("--limit", type=int, help="first N images of each test part")
    ap.add_argument("--json", default=str(ROOT / "docs" / "results" / "tiler.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = [row(args, "none", None, work)]
        for tile in (int(t) for t in args.tiles.split(",")):
            rows += [row(args, "averaging", tile, work), row(args, "ramps", tile, work)]
    write_json(Path(args.json), {
        "command": shlex.join(["python", "bench/tiler.py", *sys.argv[1:]]),
        "device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "checkpoint": args.checkpoint, "rows": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
