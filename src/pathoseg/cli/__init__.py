"""The ``pathoseg`` command: parses arguments, calls the library, nothing more. One module per
family of commands, each with its parsers beside their handlers; shared options in ``options``."""

from __future__ import annotations

import argparse
import sys
import warnings

from pathoseg.cli import data, models, project, server, study
from pathoseg.cli.server import server_config
from pathoseg.errors import PathosegError

__all__ = ["build_parser", "main", "server_config"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pathoseg", description="Gland segmentation in H&E histology (DeepLabV3+).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in (models, study, project, server, data):  # the order of `pathoseg --help`
        family.add_parsers(sub)
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
