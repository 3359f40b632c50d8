"""Masks: the current mask of an image (an instance label map), its saved versions with their
operation logs, and saving a correction (any logged-in user)."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from pathoseg.errors import PathosegError
from pathoseg.server.deps import (
    BAD_BODY,
    NOT_FOUND,
    PNG,
    Annotator,
    ConfigDep,
    Id,
    ProjectDep,
    WorkerDep,
    get_image,
    image_outs,
    placed,
    png,
    prediction,
)
from pathoseg.server.routers.jobs import queue
from pathoseg.server.schemas import ErrorOut, ImageOut, MaskIn, MaskOut
from pathoseg.server.services.files import as_labels, label_png_array, read_labels
from pathoseg.server.services.images import decode_mask, predicted_instances
from pathoseg.server.services.masks import ConflictError, save_mask
from pathoseg.server.services.queue import corrections_since_last_model
from pathoseg.server.storage import Image

router = APIRouter(prefix="/api/images", tags=["masks"])


@router.get("/{image_id}/mask.png", response_class=Response, responses={**PNG, **NOT_FOUND})
def mask_png(image_id: Id, u: Annotator, project: ProjectDep) -> Response:
    """The latest saved mask as an instance label map (0 background, 1..N glands; 16-bit when
    N > 255; an older binary mask: its components); without one, the active model's glands
    (instance decoder)."""
    image = get_image(project, image_id)
    if image.mask_version:
        glands = read_labels(placed(project, project.mask_path(image.name, image.mask_version)).path)
    else:
        glands = predicted_instances(project, image)
        if glands is None:
            probs = prediction(project, image)
            glands = as_labels(probs > 127) if probs is not None else np.zeros((image.height, image.width), np.int32)
    return png(label_png_array(glands))


@router.get("/{image_id}/masks", response_model=list[MaskOut], responses=NOT_FOUND)
def mask_versions(image_id: Id, u: Annotator, project: ProjectDep) -> list[MaskOut]:
    """Every saved mask version of the image, oldest first, with the effort and operation log
    saved with it."""
    get_image(project, image_id)
    with project.session() as s:
        image = s.get(Image, image_id)
        return [MaskOut(version=m.version, source=m.source, user=m.user, seconds=m.seconds, created_at=m.created_at,
                        operations=m.operations or {}, operation_log=m.operation_log) for m in image.masks]


@router.put("/{image_id}/mask", response_model=ImageOut,
            responses={**NOT_FOUND, **BAD_BODY,
                       409: {"model": ErrorOut, "description": "someone saved it since; names who"}})
def put_mask(image_id: Id, body: MaskIn, u: Annotator, project: ProjectDep, worker: WorkerDep,
             cfg: ConfigDep) -> ImageOut:
    """Save a correction as the next mask version (``approve``: and mark the image approved)."""
    image = get_image(project, image_id)
    operations = body.operations if isinstance(body.operations, dict) else [
        op.model_dump(exclude_none=True) for op in body.operations]
    try:
        raw = base64.b64decode(body.png_base64, validate=True)
        mask = decode_mask(raw, f"mask of {image.name}", body.kind)
        saved = save_mask(project, image_id, mask, body.base_version, u.name, body.seconds, operations,
                          body.approve)
    except ConflictError as exc:
        raise HTTPException(409, str(exc)) from None
    except (PathosegError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from None
    # An automatic retrain: not while one is queued or running (saves made meanwhile count
    # toward the next one, as the active model did not train on them).
    if cfg.retrain_every and corrections_since_last_model(project) >= cfg.retrain_every:
        queue(project, worker, "train", "auto", automatic=True)
    return image_outs(project, [saved])[0]
