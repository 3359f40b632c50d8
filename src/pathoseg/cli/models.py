"""``demo``, ``train``, ``evaluate``, ``predict``, ``export``, ``visualize``, ``compare``: training and using models."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from pathoseg.cli.options import (
    RUNS,
    add_backend_args,
    add_model_args,
    add_predict_args,
    add_train_args,
    backend_of,
    number,
    positive,
    train_config,
)
from pathoseg.errors import PathosegError


def cmd_demo(args: argparse.Namespace) -> None:
    from pathoseg.pipeline.demo import run_demo

    result = run_demo(Path(args.out), args.data, args.quick, args.device, epochs=args.epochs, budget=args.budget)
    metrics = result.outputs.metrics
    from pathoseg.pipeline.evaluation import headline_part

    headline = metrics[headline_part(metrics)]
    print(f"\nIoU (pooled over {headline['n_images']} test images): {headline['iou_pooled']:.4f}"
          f"   object F1 {headline['f1']:.3f}, object Dice {headline['object_dice']:.3f}")
    print(f"report: {result.outputs.report}")


def cmd_train(args: argparse.Namespace) -> None:
    from pathoseg.engine.distributed import ranks_from_env
    from pathoseg.engine.settings import RECIPES
    from pathoseg.pipeline.training import check_recipe, plan_data, require_dataset, run_training

    data = require_dataset(args.data)
    plan = plan_data(data, args.split, args.split_file, args.seed, args.val_fraction)
    resume = args.resume and not args.fresh
    if resume:
        check_recipe(Path(args.out), {name: train_config(args, name) for name in RECIPES}, args.recipe, plan.split)
    result = run_training(plan, train_config(args), Path(args.out), args.device, resume, nproc=args.nproc)
    if not ranks_from_env().is_main:  # under torchrun: rank 0 speaks for the run
        return
    best = max((h["val_iou"] for h in result.history), default=float("nan"))
    print(f"best validation IoU {best:.4f}; checkpoints in {args.out} (best.pt, last.pt), log {args.out}/history.csv")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pathoseg.pipeline.evaluate_run import EvaluateRequest, parse_split, run_evaluate

    kind, parts = parse_split(args.split, args.split_part)
    model = {"checkpoint": args.checkpoint, "backend": backend_of(args)} if args.checkpoint else {}
    run_evaluate(EvaluateRequest(
        out=args.out, predictions=args.predictions, data=args.data, split_kind=kind, parts=parts,
        split_file=args.split_file, device=args.device, mpp=args.mpp, tta=args.tta, tile=args.tile,
        tta_scales=args.tta_scales, instances=args.instances, min_size=args.min_size, json=args.json,
        pictures=not args.no_pictures, anatomy_um=args.anatomy_tolerance, **model))


def _ray_config(args: argparse.Namespace, backend):
    """``--engine ray``'s settings (None for ``--engine local``), checked before anything runs:
    Ray installed, the cluster's address answering."""
    if args.engine != "ray":
        if args.address is not None or args.workers is not None or args.split_slides is not None:
            raise PathosegError("--address, --workers and --split-slides apply to --engine ray")
        return None
    from pathoseg.pipeline.ray_engine import RayConfig, check_ray

    if backend.backend != "torch":  # the workers build the torch model from the shipped checkpoint
        raise PathosegError(f"--engine ray runs the torch backend only; leave out --backend {backend.backend}")
    cfg = RayConfig(args.address, args.workers, args.cpus_per_worker, split_slides=args.split_slides)
    check_ray(cfg)
    return cfg


def cmd_predict(args: argparse.Namespace) -> None:
    from pathoseg.pipeline.predict_run import PredictRequest, run_predict

    backend = backend_of(args)
    run_predict(PredictRequest(
        checkpoint=args.checkpoint, inputs=tuple(args.inputs), out=args.out, backend=backend,
        ray=_ray_config(args, backend), device=args.device, mpp=args.mpp, model_mpp=args.model_mpp,
        region=args.region, tile=args.tile, tta=args.tta, tta_scales=args.tta_scales, instances=args.instances,
        min_size=args.min_size, min_area=args.min_area))


def cmd_export(args: argparse.Namespace) -> None:
    import json

    from pathoseg.pipeline.export import calibration_images, export_model

    images = calibration_images(args.calibration, args.data) if args.int8 else ()
    result = export_model(args.model, args.out, args.format, args.int8, images)
    channels = ", ".join(json.loads(result.metadata["head_channels"]))
    print(f"{result.path}: ONNX {result.precision}, input 'image' (batch, 3, height, width) RGB in [0, 1], "
          f"output 'logits' ({channels}), sides multiples of {result.metadata['stride']}")


def cmd_visualize(args: argparse.Namespace) -> None:
    from pathoseg.data.images import read_image, read_mask
    from pathoseg.viz.figures import Panel, panel_figure, save_figure
    from pathoseg.viz.overlay import overlap_image

    image, gt, pred = read_image(args.image), read_mask(args.mask), read_mask(args.prediction)
    for path, m in ((args.mask, gt), (args.prediction, pred)):
        if m.shape != image.shape[:2]:
            raise PathosegError(f"size {m.shape[1]}x{m.shape[0]} does not match the image", path)
    from pathoseg.metrics import pixel_counts

    iou = pixel_counts(gt, pred).iou
    name = Path(args.image).stem
    out = Path(args.out or f"{name}_overlap.png")
    save_figure(panel_figure(Panel(overlap_image(image, gt, pred), f"{name} — IoU {iou:.4f}")), out)
    print(f"IoU {iou:.4f}; overlap picture: {out}")


def cmd_compare(args: argparse.Namespace) -> None:
    from pathoseg.engine.settings import TrainConfig
    from pathoseg.pipeline.compare import CompareConfig, markdown_table, run_compare
    from pathoseg.pipeline.training import require_dataset

    data = require_dataset(args.data)
    train = replace(TrainConfig(), budget_minutes=args.budget, crop=args.crop)
    train = replace(train, scale=args.scale) if args.scale is not None else train
    cfg = CompareConfig.of([m.strip() for m in args.models.split(",") if m.strip()], args.protocol, args.epochs,
                           seeds=args.seeds, train=train, device=args.device)
    rows = run_compare(data, cfg, Path(args.out), fresh=args.fresh, json_path=Path(args.json) if args.json else None,
                       command=shlex.join(["pathoseg", *sys.argv[1:]]))
    print(markdown_table(rows))
    print(f"table: {args.out}/compare.csv, {args.out}/compare.md; report: {args.out}/report.html")


def add_parsers(sub) -> None:
    from pathoseg.engine.settings import TrainConfig
    from pathoseg.metrics.anatomy import DEFAULT_TOLERANCE_UM

    p = sub.add_parser("demo", help="train, evaluate and write a report in one go (GlaS if found, else synthetic)")
    p.add_argument("--data", help="GlaS folder (default: $PATHOSEG_DATA or ../shared/data/glas)")
    p.add_argument("--out", default=str(RUNS / "demo"))
    p.add_argument("--quick", action="store_true", help="about 3 minutes instead of 15")
    p.add_argument("--epochs", type=int)
    p.add_argument("--budget", type=float, metavar="MINUTES")
    p.add_argument("--device")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train DeepLabV3+")
    p.add_argument("--data", help="GlaS folder or images/ + masks/ folder")
    p.add_argument("--out", default=str(RUNS / "train"))
    p.add_argument("--split", default="official", choices=("official", "random"))
    p.add_argument("--split-file", help="read the split from this JSON (written there if missing)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (only when it was trained with the same settings)")
    p.add_argument("--fresh", action="store_true",
                   help="start over: delete OUT's earlier checkpoints and history (overrides --resume)")
    p.add_argument("--device")
    p.add_argument("--nproc", type=positive(int), default=1,
                   help="train with DistributedDataParallel in this many local processes (one per GPU on "
                   "CUDA, else CPU processes); --batch-size stays the global batch (or launch with torchrun)")
    add_model_args(p)
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="pixel and GlaS object metrics per test part, pictures, report")
    p.add_argument("checkpoint", nargs="?", help="a best.pt / last.pt from pathoseg train")
    p.add_argument("--predictions", help="folder of <name>.png predictions to score instead of a model")
    p.add_argument("--data", help="data set (default: the checkpoint's, GlaS)")
    p.add_argument("--split", default="official",
                   help="official or random (the split), or the part(s) to evaluate: testA, testB, test (both)")
    p.add_argument("--split-file")
    p.add_argument("--split-part", "--part", dest="split_part", help="testA, testB, test (comma-separated)")
    p.add_argument("--out", default=str(RUNS / "evaluate"))
    p.add_argument("--json", help="also write the metrics JSON here")
    p.add_argument("--no-pictures", action="store_true")
    p.add_argument("--anatomy-tolerance", type=number, default=DEFAULT_TOLERANCE_UM, metavar="UM",
                   help="error anatomy: a matched gland whose outline strays from the true one by more than this "
                   f"many µm counts as a stray outline (default {DEFAULT_TOLERANCE_UM:g})")
    p.add_argument("--device")
    p.add_argument("--mpp", default=None, metavar="UM_PER_PX|auto",
                   help="µm/px of the data set's images, or auto: estimated per image from its content (default: "
                   "the data set's own, GlaS 0.62 or mpp.txt/dataset.json); resampled to the model's resolution")
    add_predict_args(p)
    add_backend_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="segment images or whole slides: masks, instance maps, overlays, GeoJSON")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="image files, whole-slide images (.svs, .ndpi, pyramidal .tif, ...) "
                   "or folders of them")
    p.add_argument("--out", default=str(RUNS / "predict"))
    p.add_argument("--device")
    p.add_argument("--mpp", default=None, metavar="UM_PER_PX|auto",
                   help="µm/px of the inputs, or auto: estimated per image from its content (plain images: "
                   "default auto when the model's µm/px is known, the model's own where the estimate is not "
                   "confident; slides: default their metadata, auto estimates it for those without); inputs are "
                   "resampled to the model's resolution")
    p.add_argument("--model-mpp", type=float, default=None,
                   help="µm/px the model was trained at (default: recorded in the checkpoint; 0.62 for GlaS)")
    p.add_argument("--region", metavar="X,Y,W,H", help="slides: predict only this rectangle (level-0 pixels)")
    p.add_argument("--min-area", type=float, default=None, metavar="UM2",
                   help="drop predicted glands smaller than this many µm² (instead of --min-size in pixels)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: spread the images and slides over Ray workers (a local Ray, "
                   "or the cluster at --address; pip install 'pathoseg[ray]')")
    p.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="--engine ray: an existing Ray cluster's head (default: a Ray of its own on this machine)")
    p.add_argument("--workers", type=positive(int), default=None,
                   help="--engine ray: number of workers, each loading the model once (default: the CPUs allow)")
    p.add_argument("--cpus-per-worker", type=positive(int), default=1,
                   help="--engine ray: CPUs reserved for each worker, and its torch threads")
    p.add_argument("--split-slides", action=argparse.BooleanOptionalAction, default=None,
                   help="--engine ray: each slide's windows over all workers, stitched by this process (--no-"
                   "split-slides: each slide whole on one worker; default: split when there are fewer slides "
                   "than workers)")
    add_predict_args(p)
    add_backend_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a checkpoint as ONNX (fp32, or int8 calibrated on training images)")
    p.add_argument("model", help="a checkpoint (best.pt), or an fp32 pathoseg .onnx file to quantise with --int8")
    p.add_argument("--format", default="onnx", choices=("onnx",))
    p.add_argument("--out", help="the .onnx file to write (default MODEL.onnx / MODEL.int8.onnx beside it)")
    p.add_argument("--int8", action="store_true", help="static int8 quantisation (QDQ, per-channel weights)")
    p.add_argument("--calibration", metavar="DIR",
                   help="int8: images to calibrate on (a folder of images, or a data set: its training images)")
    p.add_argument("--data", help="int8 without --calibration: calibrate on this data set's training images")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("visualize", help="overlap picture of a ground truth and a prediction")
    p.add_argument("image")
    p.add_argument("mask", help="ground truth (label map or 0/255)")
    p.add_argument("prediction", help="prediction (label map or 0/255)")
    p.add_argument("--out", help="PNG to write (default NAME_overlap.png)")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("compare", help="train several backbones under one protocol and compare them")
    p.add_argument("--data", help="GlaS folder or images/ + masks/ folder")
    p.add_argument("--models", default="lite0,lite1,lite2,mobilenet_v2")
    p.add_argument("--protocol", default="official", choices=("seed", "official"),
                   help="seed: random 8:2 split per seed, 15 epochs (the original study); official: GlaS split")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--epochs", type=int, help="default 15 (seed protocol) or the training default")
    p.add_argument("--budget", type=float, metavar="MINUTES", help="cap each model's training time")
    p.add_argument("--scale", type=float, help="working scale (default: the training default)")
    p.add_argument("--crop", type=int, default=TrainConfig.crop)
    p.add_argument("--out", default=str(RUNS / "compare"))
    p.add_argument("--json", help="also write each seed's IoU, object F1 and training minutes per model here")
    p.add_argument("--device")
    p.add_argument("--fresh", action="store_true",
                   help="train every requested model and seed again, deleting their earlier results "
                   "(default: reuse finished runs made with the same settings)")
    p.set_defaults(func=cmd_compare)
