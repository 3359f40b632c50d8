"""``data check|synth|split``: data sets."""

from __future__ import annotations

import argparse


def cmd_data_check(args: argparse.Namespace) -> None:
    from pathoseg.data import load_dataset
    from pathoseg.data.check import check_dataset

    print("\n".join(check_dataset(load_dataset(args.path)).lines()))


def cmd_data_synth(args: argparse.Namespace) -> None:
    from pathoseg.data.synthetic import write_synthetic

    out = write_synthetic(args.path, args.n, args.seed)
    print(f"wrote {args.n} synthetic images with masks to {out}")


def cmd_data_split(args: argparse.Namespace) -> None:
    from pathoseg.data import load_dataset
    from pathoseg.data.splits import make_split

    split = make_split(load_dataset(args.path), args.kind, args.seed, args.val_fraction)
    out = split.save(args.out)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in split.test.items())
    print(f"{split.kind} split: train {len(split.train)}, val {len(split.val)}, {sizes} -> {out}")


def add_parsers(sub) -> None:
    p = sub.add_parser("data", help="check a data set, write a synthetic one, or write a split")
    actions = p.add_subparsers(dest="data_action", required=True)
    q = actions.add_parser("check", help="check every file of a data set and summarise it")
    q.add_argument("path", help="data set folder")
    q.set_defaults(func=cmd_data_check)
    q = actions.add_parser("synth", help="write a synthetic data set (images/ + masks/)")
    q.add_argument("path", help="where to write")
    q.add_argument("--n", type=int, default=40, help="number of images")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_data_synth)
    q = actions.add_parser("split", help="write a train/validation/test split as JSON")
    q.add_argument("path", help="data set folder")
    q.add_argument("--kind", default="official", choices=("official", "random"))
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--val-fraction", type=float, default=0.1)
    q.add_argument("--out", default="split.json", help="JSON to write")
    q.set_defaults(func=cmd_data_split)
