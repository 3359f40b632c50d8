"""One markdown row per finished run of bench/glas_instances.py: the settings, training
minutes (median epoch x epochs), GlaS object metrics per part and object F1 per training minute.

    python bench/ablation_table.py runs/heads-*/seed0 runs/abl-*/seed0
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def uncontended_minutes(run: Path, epochs: int) -> float:
    """Median seconds per epoch x epochs: the training time on an otherwise idle machine
    (the wall time of a run that shared the CPU is longer)."""
    with (run / "history.csv").open() as f:
        seconds = sorted(float(r["seconds"]) for r in csv.DictReader(f))
    return seconds[len(seconds) // 2] * epochs / 60


def row(result: dict, decoder: str, minutes: float) -> str:
    cfg = result["config"]
    model = cfg["model"]
    m = result["decoders"][decoder]
    both = m["test"]
    settings = (f"{model['head']} | {cfg['scale']} | {model['output_stride']} | {cfg['crop']} | {cfg['epochs']} | "
                f"{decoder} | {result.get('instance_config', {}).get('min_size', 200)}")
    metrics = " | ".join(f"{m[p]['f1']:.3f} / {m[p]['object_dice']:.3f} / {m[p]['object_hausdorff']:.0f}"
                         for p in ("testA", "testB"))
    return (f"| {settings} | {minutes:.1f} | {metrics} | {both['f1']:.3f} | {both['iou_pooled']:.4f} | "
            f"{both['f1'] / minutes:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="seed folders holding result.json")
    args = ap.parse_args()
    print("| head | scale | OS | crop | epochs | decoder | min size (px) | train min | testA F1 / obj. Dice / "
          "obj. Hausdorff | testB F1 / obj. Dice / obj. Hausdorff | both F1 | both IoU pooled | F1 per min |")
    print("|---" * 13 + "|")
    for run in args.runs:
        path = Path(run) / "result.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        for decoder in result["decoders"]:
            print(row(result, decoder, uncontended_minutes(Path(run), result["epochs"])))


if __name__ == "__main__":
    main()
