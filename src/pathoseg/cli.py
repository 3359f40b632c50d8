"""The ``pathoseg`` command: parses arguments, calls the library, nothing more."""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from pathoseg.engine.instances import INSTANCE_METHODS, InstanceConfig
from pathoseg.errors import PathosegError
from pathoseg.models.heads import DEFAULT_HEAD, HEADS

DEFAULT_RUNS = Path("runs")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lite0", help="preset (lite0, lite1, lite2, mobilenet_v2, resnet50, "
                   "resnet101) or any segmentation_models_pytorch encoder name")
    p.add_argument("--weights", default="default", choices=("default", "imagenet", "none"),
                   help="default: offline ImageNet weights where shipped (lite*), else random init")
    p.add_argument("--output-stride", type=int, default=16, choices=(8, 16))
    p.add_argument("--head", default=DEFAULT_HEAD, choices=tuple(HEADS),
                   help="output channels: contour (gland + boundary, DCAN), semantic (gland only)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from pathoseg.engine.settings import TrainConfig

    d = TrainConfig()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--crop", type=int, default=d.crop, help="training crop side at working scale")
    p.add_argument("--scale", type=float, default=d.scale, help="working resolution as a fraction of native")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--budget", type=float, default=None, metavar="MINUTES", help="cap training wall time")


def _add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", action="store_true", help="average over flips (3x slower, slightly better)")
    p.add_argument("--tile", type=int, default=None,
                   help="predict in windows of this side at working scale (large images; slides: default 1024)")
    d = InstanceConfig()
    p.add_argument("--instances", default=d.method, choices=INSTANCE_METHODS,
                   help="instance decoder: auto = the model's own (contour), components for a "
                   "semantic model; see docs/metrics.md")
    p.add_argument("--min-size", type=int, default=None,
                   help="drop predicted glands smaller than this (native pixels; default: the 2nd percentile "
                   f"of the training glands' areas, stored in the checkpoint, else {d.min_size})")


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("torch", "onnx"), default=None,
                   help="torch (default) or onnx: ONNX Runtime on an export cached beside the checkpoint "
                   "(default for a .onnx model file)")
    p.add_argument("--int8", action="store_true",
                   help="ONNX Runtime int8, statically quantised on training tiles (implies --backend onnx)")
    p.add_argument("--calibration", metavar="DIR",
                   help="int8: images to calibrate on (a folder of images, or a data set: its training images; "
                   "default the training images of --data)")


def _backend(args: argparse.Namespace):
    from pathoseg.pipeline.export import backend_config

    return backend_config(args.backend, args.checkpoint, args.int8, args.calibration, getattr(args, "data", None))


def _train_config(args: argparse.Namespace):
    from pathoseg.engine.settings import TrainConfig
    from pathoseg.models import ModelConfig

    return TrainConfig(
        model=ModelConfig(args.model, args.output_stride, args.weights, head=args.head), epochs=args.epochs,
        batch_size=args.batch_size, crop=args.crop, scale=args.scale, lr=args.lr, seed=args.seed,
        budget_minutes=args.budget,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from pathoseg.engine.distributed import ranks_from_env
    from pathoseg.pipeline.training import plan_data, require_dataset, run_training

    data = require_dataset(args.data)
    plan = plan_data(data, args.split, args.split_file, args.seed, args.val_fraction)
    result = run_training(plan, _train_config(args), Path(args.out), args.device, args.resume and not args.fresh,
                          nproc=args.nproc)
    if not ranks_from_env().is_main:  # under torchrun: rank 0 speaks for the run
        return
    best = max((h["val_iou"] for h in result.history), default=float("nan"))
    print(f"best validation IoU {best:.4f}; checkpoints in {args.out} (best.pt, last.pt), log {args.out}/history.csv")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pathoseg.pipeline.evaluate_run import EvaluateRequest, parse_split, run_evaluate

    kind, parts = parse_split(args.split, args.split_part)
    model = {"checkpoint": args.checkpoint, "backend": _backend(args)} if args.checkpoint else {}
    run_evaluate(EvaluateRequest(
        out=args.out, predictions=args.predictions, data=args.data, split_kind=kind, parts=parts,
        split_file=args.split_file, device=args.device, mpp=args.mpp, tta=args.tta, tile=args.tile,
        instances=args.instances, min_size=args.min_size, json=args.json, pictures=not args.no_pictures,
        anatomy_um=args.anatomy_tolerance, **model))


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

    backend = _backend(args)
    run_predict(PredictRequest(
        checkpoint=args.checkpoint, inputs=tuple(args.inputs), out=args.out, backend=backend,
        ray=_ray_config(args, backend), device=args.device, mpp=args.mpp, model_mpp=args.model_mpp,
        region=args.region, tile=args.tile, tta=args.tta, instances=args.instances, min_size=args.min_size,
        min_area=args.min_area))


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


def cmd_demo(args: argparse.Namespace) -> None:
    from pathoseg.pipeline.demo import run_demo

    result = run_demo(Path(args.out), args.data, args.quick, args.device, epochs=args.epochs, budget=args.budget)
    metrics = result.outputs.metrics
    from pathoseg.pipeline.evaluation import headline_part

    headline = metrics[headline_part(metrics)]
    print(f"\nIoU (pooled over {headline['n_images']} test images): {headline['iou_pooled']:.4f}"
          f"   object F1 {headline['f1']:.3f}, object Dice {headline['object_dice']:.3f}")
    print(f"report: {result.outputs.report}")


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


def _refresh_predictions(project) -> None:
    from pathoseg.server.services.queue import enqueue
    from pathoseg.server.services.worker import Worker

    with project.session() as s:
        has_model = project.active_model(s) is not None
    if has_model:
        job_id = enqueue(project, "predict")
        if Worker(project).run_once(job_id) == job_id:
            print("predictions refreshed with the active model")
        else:  # a running server's or worker's claimed it first
            print(f"predictions are being refreshed by a running worker (job {job_id})")


def cmd_project_init(args: argparse.Namespace) -> None:
    from pathoseg.server.services.models import register_model
    from pathoseg.server.storage import Project

    project = Project(args.project, args.db, create=True)
    print(f"project ready at {project.root}")
    if args.model:
        print(f"model v{register_model(project, args.model)} active (from {args.model})")
        _refresh_predictions(project)


def cmd_project_add(args: argparse.Namespace) -> None:
    from pathoseg.data.slides import TileSpec
    from pathoseg.server.services.imports import add_folder
    from pathoseg.server.storage import Project

    project = Project(args.project, args.db)
    tiles = TileSpec(args.tile, args.max_tiles, args.min_tissue)
    n = add_folder(project, args.source, args.mpp, args.region, tiles, args.model_mpp)
    print(f"imported {n} images from {args.source}")
    _refresh_predictions(project)


def cmd_project_export(args: argparse.Namespace) -> None:
    from pathoseg.server.services.export import export
    from pathoseg.server.storage import Project

    project = Project(args.project, args.db)
    out = Path(args.out or Path(args.project) / "export")
    print(f"exported masks, instances, GeoJSON and status.csv to {export(project, out)} (images nobody corrected "
          "yet: the model's glands, under predicted/)")


def cmd_project_users(args: argparse.Namespace) -> None:
    from pathoseg.server.storage import Project, add_user, list_users, reissue_token, revoke_token

    project = Project(args.project, args.db)
    if args.users_action == "add":
        issued = add_user(project, args.name, "admin" if args.admin else "annotator", args.days)
        print(f"{issued.role} {issued.name} created; their login token (shown once, valid until "
              f"{issued.expires:%Y-%m-%d}): {issued.token}")
    elif args.users_action == "token":
        issued = reissue_token(project, args.name, args.days)
        print(f"new token for {issued.name} (shown once, valid until {issued.expires:%Y-%m-%d}; "
              f"the old one no longer works): {issued.token}")
    elif args.users_action == "revoke":
        user = revoke_token(project, args.name, args.force)
        print(f"the token of {user.name} is revoked (a new one: pathoseg project users token {args.project} "
              f"{user.name})")
    else:
        users = list_users(project)
        for u in users:
            state = "revoked" if u.revoked else f"token valid until {u.expires:%Y-%m-%d}" if u.expires else "token"
            print(f"{u.name:<24} {u.role:<10} {state}")
        if not users:
            print(f"no users yet: pathoseg project users add {args.project} NAME --admin")


def server_config(args: argparse.Namespace):
    """The app's settings from ``pathoseg serve``'s options."""
    from pathoseg.server.config import ServerConfig

    return ServerConfig(args.project, args.db, retrain_every=args.retrain_every, train=_worker_settings(args),
                        max_body_bytes=round(args.max_body_mb * 2**20), token_days=args.token_days,
                        login_attempts=args.login_attempts, login_window=args.login_window,
                        worker=not args.no_worker, job_timeout=args.job_timeout)


def _worker_settings(args: argparse.Namespace):
    """The worker's settings: the one retrain round from the options, with the device and backend."""
    from pathoseg.engine.settings import GateConfig, RoundConfig, TrainConfig, WarmRound
    from pathoseg.models import ModelConfig
    from pathoseg.server.config import WorkerSettings

    train = replace(TrainConfig(), model=ModelConfig(args.preset), batch_size=args.batch_size, crop=args.crop,
                    scale=args.scale)
    rounds = RoundConfig(train=train, first_steps=args.steps,
                         warm=WarmRound(args.warm_steps, args.warm_lr_scale, args.freeze_stages, args.warm_crop),
                         gate=replace(GateConfig(), holdout=args.holdout), seed=args.seed)
    return WorkerSettings(round=rounds, device=args.device, predict_backend=args.predict_backend)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from pathoseg.server.app import create_app

    cfg = server_config(args)
    app = create_app(cfg)
    t = cfg.train
    print(f"pathoseg serving {args.project} at http://{args.host}:{args.port}/ (API docs at /docs); retraining "
          f"{'every ' + str(cfg.retrain_every) + ' corrections' if cfg.retrain_every else 'on request'}"
          + (f": {t.round.describe()} on {t.device or 'auto'}"
             if cfg.worker else " by separate `pathoseg worker` processes (--no-worker)"), flush=True)
    # Forwarded client addresses (X-Forwarded-For) only from the proxies named: trusted from
    # anywhere, or from loopback by default, they would let one client pose as many (the login throttle)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", proxy_headers=bool(args.trusted_proxies),
                forwarded_allow_ips=args.trusted_proxies or "")


def cmd_worker(args: argparse.Namespace) -> None:
    from pathoseg.server.services.worker import Worker
    from pathoseg.server.storage import Project

    project = Project(args.project, args.db)
    t = _worker_settings(args)
    worker = Worker(project, t, timeout=args.job_timeout, poll=args.poll)
    print(f"pathoseg worker {worker.id} on {args.project}: retraining with {t.round.describe()} on "
          f"{t.device or 'auto'}; waiting for jobs", flush=True)
    try:
        if args.once:
            worker.run_forever(idle_exit=True)
        else:
            worker.run_until_signalled()
    finally:
        project.engine.dispose()


def _number(text: str) -> float | str:
    """A number, or the text as given (the workflow refuses it in one line naming the option)."""
    try:
        return float(text)
    except ValueError:
        return text


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value
    return parse


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _days(most: int):
    def parse(text: str) -> int:
        value = int(text)
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(f"must be 1 to {most} days, not {text}")
        return value
    return parse


def _add_project_parser(sub) -> None:
    from pathoseg.data.slides import TileSpec
    from pathoseg.server.storage import DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS

    p = sub.add_parser("project", help="manage a correction-app project: init, add, export, users")
    actions = p.add_subparsers(dest="action", required=True, metavar="{init,add,export,users}")

    def db(q: argparse.ArgumentParser) -> None:
        q.add_argument("--db", help="database URL (default: SQLite inside the project)")

    q = actions.add_parser("init", help="create a project folder")
    q.add_argument("project", help="project folder")
    q.add_argument("--model", help="a trained checkpoint to start from (e.g. runs/demo/model/best.pt)")
    db(q)
    q.set_defaults(func=cmd_project_init)

    q = actions.add_parser("add", help="import a folder of images (images/ + masks/, or flat) or slides' tiles")
    q.add_argument("project", help="project folder")
    q.add_argument("source", help="image folder, or a whole-slide image (or a folder of them): tissue tiles "
                   "at the project model's resolution become images")
    q.add_argument("--mpp", default=None, metavar="UM_PER_PX|auto",
                   help="µm/px of the images, or auto (estimated per image from its content): resample them and "
                   "their masks to the project model's resolution (default: imported as they are); for a slide "
                   "without resolution metadata, its µm/px, or auto: estimated from its tissue")
    q.add_argument("--model-mpp", type=_positive(float), metavar="UM_PER_PX",
                   help="the active model's native µm/px, for a checkpoint from before it was recorded")
    q.add_argument("--region", metavar="X,Y,W,H", help="a slide: take tiles from this rectangle (level-0 pixels)")
    q.add_argument("--tile", type=_positive(int), default=TileSpec.side, help="slides: tile side in pixels "
                   f"at the model's resolution (default {TileSpec.side})")
    q.add_argument("--max-tiles", type=_positive(int), default=TileSpec.max_tiles,
                   help=f"slides: at most this many tiles per slide, spread out (default {TileSpec.max_tiles})")
    q.add_argument("--min-tissue", type=float, default=TileSpec.min_tissue,
                   help=f"slides: the least tissue share of a tile (default {TileSpec.min_tissue})")
    db(q)
    q.set_defaults(func=cmd_project_add)

    q = actions.add_parser("export", help="masks, instance maps, GeoJSON and status.csv")
    q.add_argument("project", help="project folder")
    q.add_argument("out", nargs="?", help="output folder (default PROJECT/export)")
    db(q)
    q.set_defaults(func=cmd_project_export)

    q = actions.add_parser("users", help="users and their login tokens: add, list, revoke, token")
    who = q.add_subparsers(dest="users_action", required=True, metavar="{add,list,revoke,token}")
    for name, text in [("add", "add a user and print their token"), ("list", "list users, roles and expiry"),
                       ("revoke", "stop a user's token working"),
                       ("token", "issue a new token for a user (the old one stops working)")]:
        r = who.add_parser(name, help=text)
        r.add_argument("project", help="project folder")
        if name != "list":
            r.add_argument("name", help="user name")
        if name == "add":
            r.add_argument("--admin", action="store_true",
                           help="an admin (may train, activate models, export, upload, manage users); "
                           "default: an annotator (reads, saves masks, approves)")
        if name == "add":
            r.add_argument("--days", type=_days(MAX_TOKEN_DAYS), default=DEFAULT_TOKEN_DAYS, metavar="N",
                           help=f"their tokens work for N days (default {DEFAULT_TOKEN_DAYS}, "
                           f"at most {MAX_TOKEN_DAYS})")
        if name == "token":
            r.add_argument("--days", type=_days(MAX_TOKEN_DAYS), default=None, metavar="N",
                           help="the new token works for N days (default: as long as the user's tokens live)")
        if name == "revoke":
            r.add_argument("--force", action="store_true", help="also the last admin's working token")
        db(r)
        r.set_defaults(func=cmd_project_users)


def _add_training_args(p: argparse.ArgumentParser, title: str) -> None:
    from pathoseg.server.config import DEAD_AFTER, WorkerSettings

    w = WorkerSettings()
    r, t = w.round, w.round.train
    g = p.add_argument_group(title + "; the HITL study's round, pathoseg.engine.rounds")
    g.add_argument("--steps", type=_positive(int), default=r.first_steps,
                   help=f"optimiser steps for the project's first model (default {r.first_steps})")
    g.add_argument("--warm-steps", type=_positive(int), default=r.warm.steps,
                   help=f"optimiser steps per later retrain, from the active model (default {r.warm.steps})")
    g.add_argument("--warm-lr-scale", type=_positive(float), default=r.warm.lr_scale,
                   help=f"later retrains' learning rate as a fraction of the first's (default {r.warm.lr_scale})")
    g.add_argument("--freeze-stages", type=int, default=r.warm.freeze_stages,
                   help=f"later retrains keep the encoder's stem + N early stages (default {r.warm.freeze_stages})")
    g.add_argument("--warm-crop", type=_positive(int), default=r.warm.crop,
                   help=f"later retrains' crop side at working scale (default {r.warm.crop})")
    g.add_argument("--batch-size", type=_positive(int), default=t.batch_size, help=f"default {t.batch_size}")
    g.add_argument("--crop", type=_positive(int), default=t.crop,
                   help=f"training crop side at working scale (default {t.crop})")
    g.add_argument("--scale", type=_positive(float), default=t.scale,
                   help=f"the first model's working resolution as a fraction of native (default {t.scale}, as "
                   "pathoseg train); a retrained model keeps its base's")
    g.add_argument("--preset", default=t.model.preset,
                   help=f"model of the first version when none exists (default {t.model.preset})")
    g.add_argument("--holdout", type=float, default=r.gate.holdout,
                   help=f"share of the labelled images (per grade) held out to validate and gate each retrain "
                   f"(default {r.gate.holdout}; 0: no validation set, no gate)")
    g.add_argument("--seed", type=int, default=r.seed,
                   help=f"round r trains with seed 1000 x SEED + r, as the HITL study's seed SEED (default {r.seed})")
    g.add_argument("--device", help="cpu, cuda, mps (default: the best available)")
    g.add_argument("--predict-backend", choices=("torch", "onnx"), default=w.predict_backend,
                   help=f"the prediction passes: torch or onnx (ONNX Runtime fp32; default {w.predict_backend})")
    g.add_argument("--job-timeout", type=_positive(float), default=DEAD_AFTER, metavar="SECONDS",
                   help=f"a running job whose worker sent no heartbeat for this long is retried once "
                   f"(default {DEAD_AFTER:.0f})")


def _add_serve_parser(sub) -> None:
    from pathoseg.server.config import MAX_BODY_BYTES, ServerConfig
    from pathoseg.server.storage import MAX_TOKEN_DAYS

    d = ServerConfig("")
    p = sub.add_parser("serve", help="start the correction web app")
    p.add_argument("--project", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--trusted-proxies", metavar="IPS", default=None,
                   help="reverse proxies whose X-Forwarded-For names the client (comma-separated addresses; "
                   "default: none, the connection's address counts)")
    p.add_argument("--db", help="database URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in the project)")
    _add_training_args(p, "retraining (in the server's worker thread, or in `pathoseg worker`s)")
    g = p.add_argument_group("jobs")
    g.add_argument("--retrain-every", type=_count, default=d.retrain_every,
                   help=f"retrain after this many corrections (0: only on request; default {d.retrain_every})")
    g.add_argument("--no-worker", action="store_true",
                   help="run no jobs in the server: `pathoseg worker` processes (here or on machines sharing "
                   "the database and the project folder) run them")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-mb", type=_positive(float), default=MAX_BODY_BYTES / 2**20,
                   help=f"larger request bodies get 413 (default {MAX_BODY_BYTES / 2**20:.0f})")
    g.add_argument("--token-days", type=_days(MAX_TOKEN_DAYS), default=d.token_days, metavar="N",
                   help=f"lifetime of tokens issued in the app (default {d.token_days})")
    g.add_argument("--login-attempts", type=_positive(int), default=d.login_attempts,
                   help=f"wrong tokens from one address within --login-window seconds before 429 "
                   f"(default {d.login_attempts})")
    g.add_argument("--login-window", type=_positive(float), default=d.login_window, metavar="SECONDS",
                   help=f"default {d.login_window:.0f}")
    p.set_defaults(func=cmd_serve)




def _add_worker_parser(sub) -> None:
    p = sub.add_parser("worker", help="run the correction app's jobs (retrain, predict) from the shared database")
    p.add_argument("--project", required=True, help="the project folder (shared with the server)")
    p.add_argument("--db", help="database URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in the project)")
    p.add_argument("--poll", type=_positive(float), default=1.0, metavar="SECONDS",
                   help="how often to look for queued jobs (default 1)")
    p.add_argument("--once", action="store_true", help="run the queued jobs, then exit")
    _add_training_args(p, "retraining")
    p.set_defaults(func=cmd_worker)


def build_parser() -> argparse.ArgumentParser:
    from pathoseg.engine.settings import TrainConfig
    from pathoseg.hitl import STUDY_SCALE
    from pathoseg.metrics.anatomy import DEFAULT_TOLERANCE_UM
    from pathoseg.models.config import ModelConfig

    parser = argparse.ArgumentParser(prog="pathoseg", description="Gland segmentation in H&E histology (DeepLabV3+).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train, evaluate and write a report in one go (GlaS if found, else synthetic)")
    p.add_argument("--data", help="GlaS folder (default: $PATHOSEG_DATA or ../shared/data/glas)")
    p.add_argument("--out", default=str(DEFAULT_RUNS / "demo"))
    p.add_argument("--quick", action="store_true", help="about 3 minutes instead of 15")
    p.add_argument("--epochs", type=int)
    p.add_argument("--budget", type=float, metavar="MINUTES")
    p.add_argument("--device")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train DeepLabV3+")
    p.add_argument("--data", help="GlaS folder or images/ + masks/ folder")
    p.add_argument("--out", default=str(DEFAULT_RUNS / "train"))
    p.add_argument("--split", default="official", choices=("official", "random"))
    p.add_argument("--split-file", help="read the split from this JSON (written there if missing)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (only when it was trained with the same settings)")
    p.add_argument("--fresh", action="store_true",
                   help="start over: delete OUT's earlier checkpoints and history (overrides --resume)")
    p.add_argument("--device")
    p.add_argument("--nproc", type=_positive(int), default=1,
                   help="train with DistributedDataParallel in this many local processes (one per GPU on "
                   "CUDA, else CPU processes); --batch-size stays the global batch (or launch with torchrun)")
    _add_model_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="pixel and GlaS object metrics per test part, pictures, report")
    p.add_argument("checkpoint", nargs="?", help="a best.pt / last.pt from pathoseg train")
    p.add_argument("--predictions", help="folder of <name>.png predictions to score instead of a model")
    p.add_argument("--data", help="data set (default: the checkpoint's, GlaS)")
    p.add_argument("--split", default="official",
                   help="official or random (the split), or the part(s) to evaluate: testA, testB, test (both)")
    p.add_argument("--split-file")
    p.add_argument("--split-part", "--part", dest="split_part", help="testA, testB, test (comma-separated)")
    p.add_argument("--out", default=str(DEFAULT_RUNS / "evaluate"))
    p.add_argument("--json", help="also write the metrics JSON here")
    p.add_argument("--no-pictures", action="store_true")
    p.add_argument("--anatomy-tolerance", type=_number, default=DEFAULT_TOLERANCE_UM, metavar="UM",
                   help="error anatomy: a matched gland whose outline strays from the true one by more than this "
                   f"many µm counts as a stray outline (default {DEFAULT_TOLERANCE_UM:g})")
    p.add_argument("--device")
    p.add_argument("--mpp", default=None, metavar="UM_PER_PX|auto",
                   help="µm/px of the data set's images, or auto: estimated per image from its content (default: "
                   "the data set's own, GlaS 0.62 or mpp.txt/dataset.json); resampled to the model's resolution")
    _add_predict_args(p)
    _add_backend_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="segment images or whole slides: masks, instance maps, overlays, GeoJSON")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="image files, whole-slide images (.svs, .ndpi, pyramidal .tif, ...) "
                   "or folders of them")
    p.add_argument("--out", default=str(DEFAULT_RUNS / "predict"))
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
    p.add_argument("--workers", type=_positive(int), default=None,
                   help="--engine ray: number of workers, each loading the model once (default: the CPUs allow)")
    p.add_argument("--cpus-per-worker", type=_positive(int), default=1,
                   help="--engine ray: CPUs reserved for each worker, and its torch threads")
    p.add_argument("--split-slides", action=argparse.BooleanOptionalAction, default=None,
                   help="--engine ray: each slide's windows over all workers, stitched by this process (--no-"
                   "split-slides: each slide whole on one worker; default: split when there are fewer slides "
                   "than workers)")
    _add_predict_args(p)
    _add_backend_args(p)
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
    p.add_argument("--out", default=str(DEFAULT_RUNS / "compare"))
    p.add_argument("--json", help="also write each seed's IoU, object F1 and training minutes per model here")
    p.add_argument("--device")
    p.add_argument("--fresh", action="store_true",
                   help="train every requested model and seed again, deleting their earlier results "
                   "(default: reuse finished runs made with the same settings)")
    p.set_defaults(func=cmd_compare)

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
    p.add_argument("--out", default=str(DEFAULT_RUNS / "hitl"))
    p.add_argument("--json", help="also write the results (per strategy, seed and round) here")
    p.add_argument("--device")
    p.add_argument("--fresh", action="store_true",
                   help="start the study's seeds over, deleting their earlier rounds "
                   "(default: resume finished rounds made with the same settings)")
    p.set_defaults(func=cmd_hitl)

    _add_project_parser(sub)
    _add_serve_parser(sub)
    _add_worker_parser(sub)

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
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"pathoseg: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            args.func(args)
    except PathosegError as exc:
        if args.debug:
            raise
        print(f"pathoseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pathoseg: interrupted (checkpoints written so far are complete)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
