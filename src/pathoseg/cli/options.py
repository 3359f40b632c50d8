"""Options and argument types shared by several commands; each default read from its config."""

from __future__ import annotations

import argparse
from pathlib import Path

from pathoseg.engine.instances import INSTANCE_METHODS, InstanceConfig
from pathoseg.models.heads import DEFAULT_HEAD, HEADS

RUNS = Path("runs")  # where outputs go by default


def number(text: str) -> float | str:
    """A number, or the text as given (the workflow refuses it in one line naming the option)."""
    try:
        return float(text)
    except ValueError:
        return text


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value
    return parse


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def days(most: int):
    def parse(text: str) -> int:
        value = int(text)
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(f"must be 1 to {most} days, not {text}")
        return value
    return parse


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lite0", help="preset (lite0, lite1, lite2, mobilenet_v2, resnet50, "
                   "resnet101) or any segmentation_models_pytorch encoder name")
    p.add_argument("--weights", default="default", choices=("default", "imagenet", "none"),
                   help="default: offline ImageNet weights where shipped (lite*), else random init")
    p.add_argument("--output-stride", type=int, default=16, choices=(8, 16))
    p.add_argument("--head", default=DEFAULT_HEAD, choices=tuple(HEADS),
                   help="output channels: contour (gland + boundary, DCAN), semantic (gland only)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    from pathoseg.engine.settings import DEFAULT_RECIPE, RECIPES, SELECTIONS, recipe

    d = recipe()

    def default(value) -> str:
        return f"default {value} ({DEFAULT_RECIPE} recipe)"

    # Each setting left out comes from --recipe, so its defaults live in one place (engine.settings).
    p.add_argument("--recipe", default=DEFAULT_RECIPE, choices=tuple(RECIPES),
                   help="training recipe the other settings start from: glas (384 px crops, 60 epochs, "
                   "boundary-weighted loss; ~45 min on 2 CPU cores) or quick (224 px crops, 100 epochs, ~13 min; "
                   "what the demo and the app train); see docs/benchmarks.md §5e")
    p.add_argument("--epochs", type=int, help=default(d.epochs))
    p.add_argument("--batch-size", type=int, help=default(d.batch_size))
    p.add_argument("--crop", type=int, help="training crop side at working scale; " + default(d.crop))
    p.add_argument("--scale", type=float, help="working resolution as a fraction of native; " + default(d.scale))
    p.add_argument("--lr", type=float, help=default(d.lr))
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--budget", type=float, default=None, metavar="MINUTES", help="cap training wall time")
    p.add_argument("--select", choices=SELECTIONS,
                   help="best.pt is the epoch best by the validation images' pooled IoU or GlaS object F1 "
                   "(the other's best is kept as best-<other>.pt); " + default(d.select))
    p.add_argument("--boundary-weight", type=non_negative, metavar="W",
                   help="weigh the loss up to 1 + W near gland outlines (U-Net's weight map; 0: off); "
                   + default(d.boundary_weight))


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def tta_scales(text: str) -> tuple[float, ...]:
    """``--tta-scales``: positive factors other than 1, comma-separated."""
    try:
        factors = tuple(float(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not factors or any(not (0 < f <= 4) or f == 1 for f in factors):
        raise argparse.ArgumentTypeError(f"{text!r}: each factor must be above 0, at most 4 and not 1")
    return factors


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", action="store_true", help="average over flips (3x slower, slightly better)")
    p.add_argument("--tta-scales", type=tta_scales, default=(), metavar="F,F",
                   help="also average over the input resized by these factors, e.g. 0.75,1.25 (images, not "
                   "slides; each factor costs a forward pass, times 3 with --tta)")
    p.add_argument("--tile", type=int, default=None,
                   help="predict in windows of this side at working scale (large images; slides: default 1024)")
    d = InstanceConfig()
    p.add_argument("--instances", default=d.method, choices=INSTANCE_METHODS,
                   help="instance decoder: auto = the model's own (contour), components for a "
                   "semantic model; see docs/metrics.md")
    p.add_argument("--min-size", type=int, default=None,
                   help="drop predicted glands smaller than this (native pixels; default: the 2nd percentile "
                   f"of the training glands' areas, stored in the checkpoint, else {d.min_size})")


def add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("torch", "onnx"), default=None,
                   help="torch (default) or onnx: ONNX Runtime on an export cached beside the checkpoint "
                   "(default for a .onnx model file)")
    p.add_argument("--int8", action="store_true",
                   help="ONNX Runtime int8, statically quantised on training tiles (implies --backend onnx)")
    p.add_argument("--calibration", metavar="DIR",
                   help="int8: images to calibrate on (a folder of images, or a data set: its training images; "
                   "default the training images of --data)")


def backend_of(args: argparse.Namespace):
    from pathoseg.pipeline.export import backend_config

    return backend_config(args.backend, args.checkpoint, args.int8, args.calibration, getattr(args, "data", None))


def train_config(args: argparse.Namespace, recipe_name: str | None = None):
    """The TrainConfig of ``train``'s flags on top of ``recipe_name`` (default: --recipe)."""
    from pathoseg.engine.settings import recipe
    from pathoseg.models import ModelConfig

    given = {"epochs": args.epochs, "batch_size": args.batch_size, "crop": args.crop, "scale": args.scale,
             "lr": args.lr, "select": args.select, "boundary_weight": args.boundary_weight}
    model = ModelConfig(args.model, args.output_stride, args.weights, head=args.head)
    return recipe(recipe_name or args.recipe, model=model, seed=args.seed, budget_minutes=args.budget,
                  **{k: v for k, v in given.items() if v is not None})
