"""``hitl``: the human-in-the-loop study, in process or through the app."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from pathoseg.cli.options import RUNS


def cmd_hitl(args: argparse.Namespace) -> None:
    from pathoseg.hitl.outputs import write_study_outputs
    from pathoseg.hitl.strategies import parse_strategy
    from pathoseg.hitl.study import StudyRunner
    from pathoseg.pipeline.training import require_dataset

    data = require_dataset(args.data)
    strategies = [parse_strategy(s.strip(), args.review_fraction, args.fix_fraction)
                  for s in args.strategies.split(",") if s.strip()]
    cfg = study_config(args, strategies)
    runner = StudyRunner(data, cfg, Path(args.out), fresh=args.fresh)
    if args.via_app:
        from pathoseg.hitl.app_loop import AppStudyRunner

        if args.fresh:
            runner.start_over()
        records = AppStudyRunner(runner, Path(args.out), Path(args.reference) if args.reference else None).run()
    else:
        records = runner.run()
    command = shlex.join(["pathoseg", *sys.argv[1:]])
    tables = write_study_outputs(records, cfg, Path(args.out), command, Path(args.json) if args.json else None)
    for title, table in tables.items():
        print(f"\n{title}\n{table}")
    print(f"record: {args.out}/hitl.json; report: {args.out}/report.html")


def study_config(args: argparse.Namespace, strategies: list):
    """The study's settings from ``pathoseg hitl``'s options (``--quick``: short rounds, 20 test
    images, a small working scale); its round is the app's (:class:`RoundConfig`)."""
    from pathoseg.engine.settings import RoundConfig, TrainConfig, WarmRound
    from pathoseg.hitl.study import StudyConfig
    from pathoseg.models import ModelConfig

    train = replace(TrainConfig(), model=ModelConfig(args.model), scale=args.scale, crop=args.crop)
    warm = WarmRound(**{k: v for k, v in {"steps": args.round_steps, "lr_scale": args.round_lr_scale,
                                            "freeze_stages": args.freeze_stages, "crop": args.round_crop}.items()
                        if v is not None})
    rounds = RoundConfig(train=train, warm=warm, retrain=args.retrain)
    cfg = StudyConfig(strategies=strategies, rounds=args.rounds, seeds=args.seeds, selection=args.selection,
                      round=rounds, initial_fraction=args.initial_fraction, device=args.device)
    return cfg.quick() if args.quick else cfg


def add_parsers(sub) -> None:
    from pathoseg.engine.settings import TrainConfig
    from pathoseg.hitl import STUDY_SCALE
    from pathoseg.models.config import ModelConfig

    p = sub.add_parser("hitl", help="human-in-the-loop study: auto vs oracle vs hitl vs hitl10, round by round")
    p.add_argument("--data", help="GlaS folder or images/ + masks/ folder")
    p.add_argument("--strategies", default="auto,oracle,hitl,hitl10",
                   help="auto, oracle, hitl, hitl10, or mix:REVIEW:FIX (e.g. mix:0.3:1)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--selection", default="uncertainty", choices=("uncertainty", "random"))
    p.add_argument("--retrain", default="warm", choices=("warm", "scratch"))
    p.add_argument("--review-fraction", type=float, help="hitl: share of each round's images reviewed")
    p.add_argument("--fix-fraction", type=float, help="hitl: share of error pixels fixed in a reviewed image")
    p.add_argument("--initial-fraction", type=float, default=0.2)
    p.add_argument("--round-steps", type=int, help="optimiser steps per warm-started round (default: StudyConfig's)")
    p.add_argument("--round-lr-scale", type=float, help="warm rounds' lr as a fraction of the training lr")
    p.add_argument("--freeze-stages", type=int, help="warm rounds keep the encoder's stem + N early stages fixed")
    p.add_argument("--round-crop", type=int, help="warm rounds' crop side at working scale (default: RoundConfig's)")
    p.add_argument("--model", default=ModelConfig.preset)
    p.add_argument("--scale", type=float, default=STUDY_SCALE,
                   help=f"the first model's working scale (default {STUDY_SCALE}, the study's protocol)")
    p.add_argument("--crop", type=int, default=TrainConfig.crop)
    p.add_argument("--quick", action="store_true", help="about 10 minutes: short rounds, 20 test images")
    p.add_argument("--via-app", action="store_true",
                   help="run every round through a real `pathoseg serve` and `pathoseg worker` on a temporary "
                   "project (labels saved and retrains started through the HTTP API); same protocol and records")
    p.add_argument("--reference", metavar="DIR",
                   help="--via-app: the same study's --out run in process; rounds whose app model has the same "
                   "weights take its test scores, and every round records whether the weights are the same")
    p.add_argument("--out", default=str(RUNS / "hitl"))
    p.add_argument("--json", help="also write the results (per strategy, seed and round) here")
    p.add_argument("--device")
    p.add_argument("--fresh", action="store_true",
                   help="start the study's seeds over, deleting their earlier rounds "
                   "(default: resume finished rounds made with the same settings)")
    p.set_defaults(func=cmd_hitl)
