"""``serve`` and ``worker``: the correction app and its job runners, over the one retrain round."""

from __future__ import annotations

import argparse
from dataclasses import replace

from pathoseg.cli.options import count, days, positive


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


def _add_training_args(p: argparse.ArgumentParser, title: str) -> None:
    from pathoseg.server.config import DEAD_AFTER, WorkerSettings

    w = WorkerSettings()
    r, t = w.round, w.round.train
    g = p.add_argument_group(title + "; the HITL study's round, pathoseg.engine.rounds")
    g.add_argument("--steps", type=positive(int), default=r.first_steps,
                   help=f"optimiser steps for the project's first model (default {r.first_steps})")
    g.add_argument("--warm-steps", type=positive(int), default=r.warm.steps,
                   help=f"optimiser steps per later retrain, from the active model (default {r.warm.steps})")
    g.add_argument("--warm-lr-scale", type=positive(float), default=r.warm.lr_scale,
                   help=f"later retrains' learning rate as a fraction of the first's (default {r.warm.lr_scale})")
    g.add_argument("--freeze-stages", type=int, default=r.warm.freeze_stages,
                   help=f"later retrains keep the encoder's stem + N early stages (default {r.warm.freeze_stages})")
    g.add_argument("--warm-crop", type=positive(int), default=r.warm.crop,
                   help=f"later retrains' crop side at working scale (default {r.warm.crop})")
    g.add_argument("--batch-size", type=positive(int), default=t.batch_size, help=f"default {t.batch_size}")
    g.add_argument("--crop", type=positive(int), default=t.crop,
                   help=f"training crop side at working scale (default {t.crop})")
    g.add_argument("--scale", type=positive(float), default=t.scale,
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
    g.add_argument("--job-timeout", type=positive(float), default=DEAD_AFTER, metavar="SECONDS",
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
    g.add_argument("--retrain-every", type=count, default=d.retrain_every,
                   help=f"retrain after this many corrections (0: only on request; default {d.retrain_every})")
    g.add_argument("--no-worker", action="store_true",
                   help="run no jobs in the server: `pathoseg worker` processes (here or on machines sharing "
                   "the database and the project folder) run them")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-mb", type=positive(float), default=MAX_BODY_BYTES / 2**20,
                   help=f"larger request bodies get 413 (default {MAX_BODY_BYTES / 2**20:.0f})")
    g.add_argument("--token-days", type=days(MAX_TOKEN_DAYS), default=d.token_days, metavar="N",
                   help=f"lifetime of tokens issued in the app (default {d.token_days})")
    g.add_argument("--login-attempts", type=positive(int), default=d.login_attempts,
                   help=f"wrong tokens from one address within --login-window seconds before 429 "
                   f"(default {d.login_attempts})")
    g.add_argument("--login-window", type=positive(float), default=d.login_window, metavar="SECONDS",
                   help=f"default {d.login_window:.0f}")
    p.set_defaults(func=cmd_serve)


def _add_worker_parser(sub) -> None:
    p = sub.add_parser("worker", help="run the correction app's jobs (retrain, predict) from the shared database")
    p.add_argument("--project", required=True, help="the project folder (shared with the server)")
    p.add_argument("--db", help="database URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in the project)")
    p.add_argument("--poll", type=positive(float), default=1.0, metavar="SECONDS",
                   help="how often to look for queued jobs (default 1)")
    p.add_argument("--once", action="store_true", help="run the queued jobs, then exit")
    _add_training_args(p, "retraining")
    p.set_defaults(func=cmd_worker)


def add_parsers(sub) -> None:
    _add_serve_parser(sub)
    _add_worker_parser(sub)
