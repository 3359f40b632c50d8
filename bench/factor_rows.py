"""The one-factor testB runs of ``bench/glas_instances.py`` gathered into one JSON and table
(docs/results/glas_testb_factors.json, docs/benchmarks.md §5d).

    python bench/factor_rows.py --run "crop 384=runs/testb-crop384" \\
        --run "crop 384, Lite2=runs/testb-crop384-lite2" --json docs/results/glas_testb_factors.json

Each run folder holds ``summary.json`` (its command) and ``seed<k>/result.json`` (every
evaluated variant with its error anatomy); one row per (run, seed, variant). Training
minutes are wall clock; ``cpu_minutes_alone`` is the median epoch times the epochs, what
the run costs on an otherwise idle machine (several of these runs shared the CPU for a while).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

PARTS = ("testA", "testB")


def run_rows(label: str, folder: Path) -> tuple[str, list[dict]]:
    command = json.loads((folder / "summary.json").read_text())["command"]
    rows = []
    for seed_dir in sorted(folder.glob("seed*")):
        result = json.loads((seed_dir / "result.json").read_text())
        seconds = [float(r["seconds"]) for r in csv.DictReader((seed_dir / "history.csv").open())]
        other = next((k for k in result if k.startswith("best_epoch_")), None)
        for variant, metrics in result["decoders"].items():
            epoch = result[other] if other and variant.startswith("select-") else result["best_epoch"]
            rows.append({
                "factor": label, "command": command, "seed": result["config"]["seed"], "variant": variant,
                "checkpoint_epoch": epoch, "train_minutes": round(result["train_minutes"], 1),
                "cpu_minutes_alone": round(statistics.median(seconds) * len(seconds) / 60, 1),
                "eval_seconds": round(metrics["eval_s"]),
                **{part: {k: metrics[part][k] for k in ("f1", "object_dice", "object_hausdorff", "iou_pooled",
                                                        "errors")} for part in PARTS},
                "iou_pooled_both": metrics["test"]["iou_pooled"],
            })
    return command, rows


def table(rows: list[dict]) -> str:
    lines = ["| factor | seed | variant | epoch | testA F1 / obj. Dice / Hausdorff | "
             "testB F1 / obj. Dice / Hausdorff | pooled IoU | testB merged / split / missed / false / stray | "
             "CPU min |", "|---" * 9 + "|"]
    for r in rows:
        a, b, e = r["testA"], r["testB"], r["testB"]["errors"]
        lines.append(f"| {r['factor']} | {r['seed']} | {r['variant']} | {r['checkpoint_epoch']} | "
                     f"{a['f1']:.3f} / {a['object_dice']:.3f} / {a['object_hausdorff']:.1f} | "
                     f"{b['f1']:.3f} / {b['object_dice']:.3f} / {b['object_hausdorff']:.1f} | "
                     f"{r['iou_pooled_both']:.4f} | {e['merged']} / {e['split']} / {e['missed']} / {e['false']} / "
                     f"{e['stray']} | {r['cpu_minutes_alone']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=FOLDER",
                    help="a factor's label and its bench/glas_instances.py --out folder (repeat)")
    ap.add_argument("--device", default="CPU (x86_64, 2 threads); train_minutes is wall clock, other jobs shared "
                    "the CPU during parts of some runs; cpu_minutes_alone is the median epoch times the epochs")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    rows = []
    for spec in args.run:
        label, sep, folder = spec.partition("=")
        if not sep or not (Path(folder) / "summary.json").is_file():
            raise SystemExit(f"--run {spec!r}: want LABEL=FOLDER, FOLDER a bench/glas_instances.py --out with "
                             "a summary.json")
        rows += run_rows(label, Path(folder))[1]
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "rows": rows}, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
