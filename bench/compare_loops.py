"""The HITL study in process against the same study through the app (issue #19's targets).

    python bench/compare_loops.py docs/results/hitl_default.json docs/results/app_loop.json

Prints, per strategy, the final round's test IoU and object F1 (mean ± std over the seeds both
runs hold) of both runs, their difference against the targets (0.01 IoU, 0.02 F1), each run's headline (the least
effort within 0.01 test IoU of the oracle) and its median warm round in seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

IOU_TARGET, F1_TARGET = 0.01, 0.02


def final(results: dict, strategy: str, key: str, seeds: list[int] | None = None) -> np.ndarray:
    """The last round's values of ``seeds`` (default: every seed the results hold)."""
    rows = results["strategies"][strategy][key]
    keep = [results["seeds"].index(s) for s in seeds] if seeds is not None else range(len(rows))
    return np.array([rows[k][-1] for k in keep], dtype=float)


def cell(values: np.ndarray) -> str:
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if values.size > 1 else f"{values.mean():.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("in_process", type=Path)
    ap.add_argument("via_app", type=Path)
    args = ap.parse_args()
    here, app = (json.loads(p.read_text()) for p in (args.in_process, args.via_app))
    shared = [s for s in app["strategies"] if s in here["strategies"]]
    seeds = [s for s in app["seeds"] if s in here["seeds"]]  # compare like with like
    print(f"seeds compared: {seeds}\n")
    print("| strategy | IoU in process | IoU via the app | Δ IoU | F1 in process | F1 via the app | Δ F1 | met |")
    print("|---|---|---|---|---|---|---|---|")
    for s in shared:
        iou_h, iou_a = final(here, s, "test_iou", seeds), final(app, s, "test_iou", seeds)
        f1_h, f1_a = final(here, s, "object_f1", seeds), final(app, s, "object_f1", seeds)
        d_iou, d_f1 = iou_a.mean() - iou_h.mean(), f1_a.mean() - f1_h.mean()
        met = abs(d_iou) <= IOU_TARGET and abs(d_f1) <= F1_TARGET
        print(f"| {s} | {cell(iou_h)} | {cell(iou_a)} | {d_iou:+.4f} | {cell(f1_h)} | {cell(f1_a)} | {d_f1:+.4f} | "
              f"{'yes' if met else 'no'} |")
    for name, res in (("in process", here), ("via the app", app)):
        h = res.get("headline") or {}
        share = h.get("share_of_reference_effort")
        print(f"\n{name}: headline strategy {h.get('strategy')}, final IoU {h.get('final_iou')}, "
              f"oracle {h.get('reference_final_iou')}, share of the oracle's effort "
              f"{'-' if share is None else f'{share:.0%}'}; median warm round "
              f"{res.get('median_warm_round_seconds')} s")


if __name__ == "__main__":
    main()
