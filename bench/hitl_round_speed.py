"""How fast a warm-started HITL round can be without losing test IoU (issue #10, item 6).

    python bench/hitl_round_speed.py --data ../shared/data/glas --seeds 1 \\
        --options base:80:0.5:0,fast40:40:1.0:0,freeze40:40:1.0:2 --round0-from runs/hitl-default \\
        --out runs/hitl-speed --json docs/results/hitl_round_speed.json
    python bench/hitl_round_speed.py --step-times 0,1,2,3 --json docs/results/hitl_step_times.json

Each option ``NAME:STEPS:LR_SCALE:FREEZE`` runs the study's default protocol (same round-0
model, same strategy, same selection) with that many optimiser steps per warm round, at that
fraction of the training learning rate, with the encoder's stem and first FREEZE stages not
trained. A round's time is what a user waits for: predicting the pool (to pick and
pre-label images) plus retraining; testing is the study's own cost and left out. Options
run one after another in one process, so their times are comparable; each is resumable
(its folder is an ordinary study). Prints each option's mean round seconds, its final test
IoU and object F1, and both as a ratio / difference to the first option.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pathoseg.engine.device import describe_device
from pathoseg.engine.settings import RoundConfig, WarmRound
from pathoseg.engine.train import TrainConfig
from pathoseg.hitl.strategies import parse_strategy
from pathoseg.hitl.study import StudyConfig, StudyRunner
from pathoseg.io import write_json
from pathoseg.models import ModelConfig
from pathoseg.pipeline.evaluation import headline_part
from pathoseg.pipeline.training import find_dataset


def parse_option(spec: str) -> tuple[str, int, float, int]:
    name, steps, lr_scale, freeze = spec.split(":")
    return name, int(steps), float(lr_scale), int(freeze)


def link_round0(source: Path, out: Path, seeds: int) -> None:
    """Reuse the study's round-0 models (their settings are checked as usual)."""
    for seed in range(seeds):
        src, dst = source / f"seed{seed}" / "round0", out / f"seed{seed}" / "round0"
        if src.is_dir() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src.resolve(), dst)


def step_seconds(freeze_stages: list[int], steps: int, batch: int, crop: int) -> dict[int, float]:
    """Median seconds per optimiser step of Lite0 (the default head) on random crops, with the
    encoder's stem and first N stages frozen, for each N — one process, same inputs."""
    import torch

    from pathoseg.engine.train import SegmentationLoss
    from pathoseg.models import build_model, freeze_encoder_stages

    torch.manual_seed(0)
    x = torch.rand(batch, 3, crop, crop)
    valid = torch.ones(batch, crop, crop, dtype=torch.bool)
    out = {}
    for n in freeze_stages:
        model = build_model(ModelConfig("lite0"))
        freeze_encoder_stages(model, n)
        model.train()
        y = (torch.rand(batch, len(model.head.channels), crop, crop) > 0.5).float()
        loss_fn = SegmentationLoss(model.head.channels)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        times = []
        for _ in range(steps + 2):  # the first two warm up
            start = time.perf_counter()
            loss = loss_fn(model(x), y, valid)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
        out[n] = float(np.median(times[2:]))
        print(f"{n} frozen stages: {out[n]:.3f} s per step ({out[n] / out[freeze_stages[0]]:.2f}x)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/glas")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--options", default="base:80:0.5:0,fast40:40:1.0:0,freeze40:40:1.0:2")
    ap.add_argument("--strategy", default="hitl")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--round0-from", type=Path, help="a study folder whose seed<k>/round0 to reuse")
    ap.add_argument("--out", type=Path, default=Path("runs/hitl-speed"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--step-times", metavar="N,N,...",
                    help="only time optimiser steps with these numbers of frozen stages (e.g. 0,1,2,3)")
    args = ap.parse_args()
    if args.step_times:
        times = step_seconds([int(v) for v in args.step_times.split(",")], steps=15, batch=8, crop=224)
        if args.json:
            write_json(args.json, {"command": shlex.join(["python", *sys.argv]), "device": describe_device(),
                                   "seconds_per_step": {str(k): v for k, v in times.items()}})
        return

    data = find_dataset(args.data)
    train = replace(TrainConfig(), model=ModelConfig("lite0"), scale=args.scale)
    rows = []
    for spec in args.options.split(","):
        name, steps, lr_scale, freeze = parse_option(spec)
        cfg = StudyConfig(strategies=[parse_strategy(args.strategy)], rounds=args.rounds, seeds=args.seeds,
                          round=RoundConfig(train=train, warm=WarmRound(steps, lr_scale, freeze)))
        out = args.out / name
        if args.round0_from:
            link_round0(args.round0_from, out, args.seeds)
        print(f"== {name}: {steps} steps at {lr_scale} x lr, {freeze} frozen stages", flush=True)
        records = [r for r in StudyRunner(data, cfg, out).run() if r["round"] > 0]
        round_s = [r["round_s"] + r.get("predict_s", 0.0) for r in records]
        finals = [r["test"][headline_part(r["test"])] for r in records if r["round"] == args.rounds]
        rows.append({"option": name, "round_steps": steps, "round_lr_scale": lr_scale, "freeze_stages": freeze,
                     "round_seconds": round_s, "train_seconds": [r["train_s"] for r in records],
                     "final_test_iou": [f["iou_pooled"] for f in finals],
                     "final_object_f1": [f["f1"] for f in finals]})
    base = rows[0]
    print(f"\n{'option':<12} {'round s':>8} {'x base':>7} {'final IoU':>16} {'dIoU':>7} {'final F1':>16} {'dF1':>7}")
    for row in rows:
        s, iou, f1 = (np.array(row[k]) for k in ("round_seconds", "final_test_iou", "final_object_f1"))
        ratio = s.mean() / np.mean(base["round_seconds"])
        d_iou = iou.mean() - np.mean(base["final_test_iou"])
        d_f1 = f1.mean() - np.mean(base["final_object_f1"])
        print(f"{row['option']:<12} {s.mean():8.1f} {ratio:7.2f} {iou.mean():8.4f} ± {iou.std():.4f} {d_iou:+7.4f} "
              f"{f1.mean():8.4f} ± {f1.std():.4f} {d_f1:+7.4f}")
    if args.json:
        write_json(args.json, {"command": shlex.join(["python", *sys.argv]), "device": describe_device(),
                               "strategy": args.strategy, "rounds": args.rounds, "seeds": args.seeds, "rows": rows})


if __name__ == "__main__":
    main()
