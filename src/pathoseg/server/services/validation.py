"""The project's labelled images as the one retrain round sees them, its validation set, and
every model version's scores on that set (so the model menu compares like with like)."""

from __future__ import annotations

from functools import partial

import torch
from sqlalchemy import func, select

from pathoseg.data.images import (
    read_image,
)
from pathoseg.engine.rounds import (
    LabelledImage,
    Pixels,
    holdout,
    score,
    validation_digest,
)
from pathoseg.engine.settings import GateConfig
from pathoseg.server.services.files import read_labels
from pathoseg.server.storage import Image, Mask, ModelVersion, Project


def _pixels(project: Project, name: str, version: int) -> Pixels:
    path = project.mask_path(name, version)
    if not path.is_file():  # committed a moment ago, not renamed into place yet
        project.settle_staged_files()
    return read_image(project.image_path(name)), read_labels(path)


def reviewed(mask: Mask) -> bool:
    """Whether a person drew or checked a saved mask: an import, or a save that logged time or
    edits (a mask saved with neither is the model's glands accepted unseen: a pseudo-label)."""
    return mask.source == "import" or (mask.seconds or 0) > 0 or any((mask.operations or {}).values())


def labelled_images(project: Project) -> list[LabelledImage]:
    """Every image with a saved mask, in the order it was first labelled (its first mask's
    row id), at its current mask version; pixels are read when a round needs them."""
    with project.session() as s:
        first = select(Mask.image_id, func.min(Mask.id).label("first")).group_by(Mask.image_id).subquery()
        rows = s.execute(select(Image.name, Image.mask_version, Image.grade, Mask)
                         .join(first, first.c.image_id == Image.id)
                         .join(Mask, (Mask.image_id == Image.id) & (Mask.version == Image.mask_version))
                         .where(Image.mask_version > 0).order_by(first.c.first, Image.name)).all()
    return [LabelledImage(name, version, partial(_pixels, project, name, version), grade, reviewed(mask))
            for name, version, grade, mask in rows]


def current_validation(project: Project, gate: GateConfig) -> tuple[list[LabelledImage], str]:
    """The validation set now and its digest."""
    labelled = labelled_images(project)
    held = holdout(labelled, gate.holdout)
    validation = [i for i in labelled if i.name in held]
    return validation, validation_digest(validation)


def store_scores(project: Project, version: int, scores: dict, digest: str) -> None:
    with project.session() as s:
        row = s.scalars(select(ModelVersion).where(ModelVersion.version == version)).one()
        row.scores = {**scores, "digest": digest}
        s.commit()


def score_stale_versions(project: Project, validation: list[LabelledImage], digest: str,
                         device: torch.device, limit: int = 5) -> list[int]:
    """Score the newest ``limit`` versions (and the active one) not yet scored on this
    validation set; returns their numbers."""
    from pathoseg.engine.checkpoint import load_model

    if not validation:
        return []
    with project.session() as s:
        rows = list(s.scalars(select(ModelVersion).order_by(ModelVersion.version.desc())))
    chosen = [m for m in rows[:limit] + [m for m in rows if m.active]
              if (m.scores or {}).get("digest") != digest]
    done = []
    for m in {m.version: m for m in chosen}.values():
        path = project.model_path(m.version)
        if not path.is_file():
            continue
        model, ckpt = load_model(path, device)
        store_scores(project, m.version, score(model, ckpt, validation, device), digest)
        done.append(m.version)
    return done
