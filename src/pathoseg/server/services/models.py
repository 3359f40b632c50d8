"""Model versions: store one (staged, with a compare-and-set on the active slot) or import a
checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pathoseg.engine.checkpoint import load_checkpoint
from pathoseg.errors import PathosegError
from pathoseg.server.storage import ModelVersion, Project


def store_model(project: Project, checkpoint, *, val_iou: float | None, trained_on: list | None,
                only_if_active: int | str | None = "always",
                in_transaction: Callable[[Session, int], None] | None = None, scores: dict | None = None,
                note: str | None = None, trained_by: str | None = None) -> tuple[int, bool]:
    """Store ``checkpoint`` as the next model version; returns (version, activated).

    ``only_if_active``: ``"always"`` activates it, ``"never"`` stores it inactive (the gate
    refused it); a version number (or None: no model)
    activates it only when that version is the active one at this moment (a compare-and-set
    in the same transaction), else it is stored inactive. ``in_transaction(session, version)``
    runs before the commit (a job checks that it still owns itself). The file is staged, the
    row committed, then the file renamed into place; a version number taken at the same
    moment by another process is retried with the next one. ``trained_by``: who asked for the
    retrain that made it (``"import"`` for a registered checkpoint)."""
    from pathoseg.server.storage import lock_models

    tmp: Path | None = None
    try:
        for _ in range(20):
            with project.session() as s:
                version = (s.scalar(select(func.max(ModelVersion.version))) or 0) + 1
                final = project.model_path(version)
                staged = project.staged_path(final)
                final.parent.mkdir(parents=True, exist_ok=True)
                if tmp is None:
                    checkpoint.save(staged)
                else:
                    os.replace(tmp, staged)
                tmp = staged
                try:
                    if in_transaction is not None:
                        in_transaction(s, version)
                    lock_models(s)
                    s.add(ModelVersion(version=version, val_iou=val_iou, active=False, trained_on=trained_on or [],
                                       scores=scores, note=note, trained_by=trained_by))
                    s.flush()
                    if only_if_active == "never":
                        activate = False
                    elif only_if_active == "always":
                        s.execute(update(ModelVersion).where(ModelVersion.active).values(active=False))
                        activate = True
                    elif only_if_active is None:
                        activate = s.scalars(select(ModelVersion.id).where(ModelVersion.active)).first() is None
                    else:
                        activate = s.execute(update(ModelVersion).where(ModelVersion.version == only_if_active,
                                                                        ModelVersion.active)
                                             .values(active=False)).rowcount == 1
                    if activate:
                        s.execute(update(ModelVersion).where(ModelVersion.version == version).values(active=True))
                    s.commit()
                except IntegrityError:  # the version number, or the one active slot, was taken meanwhile
                    s.rollback()
                    continue
                os.replace(tmp, final)
                tmp = None
                return version, activate
        raise PathosegError("could not store the model: other processes keep taking the version numbers")
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def register_model(project: Project, checkpoint: str | Path) -> int:
    """Copy a trained checkpoint in as the next model version and make it active."""

    ckpt = load_checkpoint(checkpoint)  # refuses foreign files with a one-line error
    version, _ = store_model(project, ckpt, val_iou=ckpt.metrics.get("best_val_iou"),
                             trained_on=[["(imported checkpoint)", 0]], note=f"imported from {Path(checkpoint).name}",
                             trained_by="import")
    return version
