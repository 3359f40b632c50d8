"""``project init|add|export|users``: a correction-app project from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from pathoseg.cli.options import days, positive


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


def add_parsers(sub) -> None:
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
    q.add_argument("--model-mpp", type=positive(float), metavar="UM_PER_PX",
                   help="the active model's native µm/px, for a checkpoint from before it was recorded")
    q.add_argument("--region", metavar="X,Y,W,H", help="a slide: take tiles from this rectangle (level-0 pixels)")
    q.add_argument("--tile", type=positive(int), default=TileSpec.side, help="slides: tile side in pixels "
                   f"at the model's resolution (default {TileSpec.side})")
    q.add_argument("--max-tiles", type=positive(int), default=TileSpec.max_tiles,
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
            r.add_argument("--days", type=days(MAX_TOKEN_DAYS), default=DEFAULT_TOKEN_DAYS, metavar="N",
                           help=f"their tokens work for N days (default {DEFAULT_TOKEN_DAYS}, "
                           f"at most {MAX_TOKEN_DAYS})")
        if name == "token":
            r.add_argument("--days", type=days(MAX_TOKEN_DAYS), default=None, metavar="N",
                           help="the new token works for N days (default: as long as the user's tokens live)")
        if name == "revoke":
            r.add_argument("--force", action="store_true", help="also the last admin's working token")
        db(r)
        r.set_defaults(func=cmd_project_users)
