"""Run settings and their fingerprints: resume and reuse only what was made with the same settings.

``train --resume``, ``compare`` (finished models) and ``hitl`` (finished rounds) pick up
results left on disk. Each of them stores the settings that shaped those results beside them
(a JSON object ``{"fingerprint": ..., "settings": {...}}``) and, before reusing anything,
compares them with the settings of the command now running: on a difference it stops with one
line naming the first setting that differs, its old and new value, and ``--fresh`` (start that
run over). Settings that do not change results (progress bars, the number of seeds or
strategies asked for, where the data set lies) are left out by the callers; each caller's
docstring says which.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pathoseg.errors import PathosegError
from pathoseg.io import write_json

SETTINGS_FILE = "settings.json"
_UNSET = "(unset)"


def canonical(settings: Mapping[str, Any]) -> dict:
    """``settings`` as JSON gives them back: tuples become lists, other objects their ``str``."""
    return json.loads(json.dumps(dict(settings), default=str))


def run_fingerprint(settings: Mapping[str, Any]) -> str:
    """A short hash of ``settings`` (key order does not matter)."""
    text = json.dumps(canonical(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stamp(settings: Mapping[str, Any]) -> dict:
    """What is stored with a run: ``{"fingerprint": hash, "settings": dict}``."""
    return {"fingerprint": run_fingerprint(settings), "settings": canonical(settings)}


def digest(obj: Any) -> str:
    """A short hash standing for a long value (e.g. a split's image names) among the settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_fingerprint(folder: str | Path, settings: Mapping[str, Any], name: str = SETTINGS_FILE) -> Path:
    return write_json(Path(folder) / name, stamp(settings))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first setting (dotted name, in ``new``'s order) whose value differs, with both values."""
    a, b = _flatten(canonical(old)), _flatten(canonical(new))
    for key in [*b, *(k for k in a if k not in b)]:
        if a.get(key, _UNSET) != b.get(key, _UNSET):
            return key, a.get(key, _UNSET), b.get(key, _UNSET)
    return None


def _show(value: Any) -> str:
    return value if value == _UNSET else json.dumps(value)


def stored_settings(folder: str | Path, name: str = SETTINGS_FILE) -> dict | None:
    """The settings recorded in ``folder/name`` (any JSON object with a ``settings`` key), or
    None when the file is missing or predates recorded settings."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PathosegError(f"unreadable ({type(exc).__name__}); pass --fresh to start this run over", path) from None
    settings = payload.get("settings") if isinstance(payload, dict) else None
    return settings if isinstance(settings, dict) else None


def check_fingerprint(folder: str | Path, settings: Mapping[str, Any], what: str, name: str = SETTINGS_FILE,
                      fallback: Mapping[str, Any] | None = None) -> None:
    """Stop unless the results in ``folder`` were made with ``settings``.

    The stored settings come from ``folder/name``, else from ``fallback`` (e.g. what an older
    checkpoint itself records). With neither (results written before settings were stored)
    the results are reused with a warning. ``what`` names the results in the message.
    """
    old = stored_settings(folder, name)
    if old is None and fallback is not None:
        old = canonical(fallback)
    if old is None:
        warnings.warn(f"{folder}: {what} predates recorded settings, so it is reused unchecked "
                      "(pass --fresh to start it over)", stacklevel=2)
        return
    if run_fingerprint(old) == run_fingerprint(settings):
        return
    diff = first_difference(old, settings)
    if diff is None:  # equal once flattened: e.g. {} against a missing key
        return
    key, before, now = diff
    raise PathosegError(f"{what} was made with {key}={_show(before)}, now {key}={_show(now)}; "
                        "pass --fresh to start it over (its results are deleted)", folder)


def remove_results(folder: str | Path, names: Iterable[str] | None = None) -> None:
    """``--fresh``: delete ``names`` inside ``folder`` (files or folders), or the whole folder."""
    folder = Path(folder)
    targets = [folder / n for n in names] if names is not None else [folder]
    for target in targets:
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
