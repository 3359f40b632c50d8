"""The one exception type users see: a one-line message that names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class PathosegError(Exception):
    """A problem with the user's input or environment, reported as one line by the CLI."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)
