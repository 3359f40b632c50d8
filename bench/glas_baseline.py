"""Train the default model on GlaS (official split) under a CPU budget and report test IoU.

    python bench/glas_baseline.py [--epochs N] [--budget MIN] [--model lite0] [--scale 0.5] [--crop 224]

Prints testA / testB / both IoU (pooled and mean per image), the GlaS object metrics and
seconds per epoch, and writes them to OUT/bench.json. Reference: the original study's
0.7297 (small backbone) / 0.8477 (large) IoU on a random 8:2 split after 15 epochs.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from pathoseg.engine.checkpoint import load_model
from pathoseg.engine.predict import PredictConfig
from pathoseg.engine.train import TrainConfig
from pathoseg.models import ModelConfig
from pathoseg.pipeline.evaluation import evaluate_parts, metrics_lines, model_segmenter, summarize_parts
from pathoseg.pipeline.training import find_dataset, plan_data, run_training


def main() -> None:
    d = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--out", default="runs/bench-glas")
    ap.add_argument("--model", default=d.model.preset)
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--budget", type=float, default=None, help="training minutes")
    ap.add_argument("--scale", type=float, default=d.scale)
    ap.add_argument("--crop", type=int, default=d.crop)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--repeats", type=int, default=d.repeats)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = find_dataset(args.data)
    if data is None:
        raise SystemExit("GlaS not found: pass --data")
    cfg = replace(d, model=ModelConfig(args.model), epochs=args.epochs, budget_minutes=args.budget,
                  scale=args.scale, crop=args.crop, lr=args.lr, repeats=args.repeats, seed=args.seed)
    plan = plan_data(data, "official", seed=args.seed, val_fraction=args.val_fraction)
    out = Path(args.out)
    t0 = time.perf_counter()
    result = run_training(plan, cfg, out)
    train_s = time.perf_counter() - t0
    report = {"config": cfg.to_dict(), "threads": torch.get_num_threads(), "train_s": train_s,
              "epochs_run": len(result.history),
              "s_per_epoch": sum(h["seconds"] for h in result.history) / max(1, len(result.history))}
    for which in ("best", "last"):
        model, ckpt = load_model(out / f"{which}.pt")
        segment = model_segmenter(model, PredictConfig(scale=ckpt.scale, tta=args.tta), ckpt.instance_config(),
                                  "cpu")
        t1 = time.perf_counter()
        metrics = summarize_parts(evaluate_parts(plan.data, plan.split, segment, keep_pictures=False))
        report[which] = {"epoch": ckpt.epoch, "eval_s": time.perf_counter() - t1, **metrics}
        print(f"\n{which}.pt (epoch {ckpt.epoch}):")
        print("\n".join(metrics_lines(metrics)))
    print(f"\ntraining {train_s / 60:.1f} min, {report['epochs_run']} epochs, {report['s_per_epoch']:.1f} s/epoch "
          f"on {report['threads']} threads")
    (out / "bench.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
