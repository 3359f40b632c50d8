"""Masks: the current mask of an image, and saving a correction (any logged-in user)."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from pathoseg.errors import PathosegError
from pathoseg.server.deps import (
    NOT_FOUND,
    Annotator,
    ConfigDep,
    Id,
    ProjectDep,
    WorkerDep,
    get_image,
    placed,
    png,
    prediction,
)
from pathoseg.server.jobs import corrections_since_last_model
from pathoseg.server.project import ConflictError, decode_mask, predicted_instances, save_mask
from pathoseg.server.schemas import ErrorOut, ImageOut, MaskIn

router = APIRouter(prefix="/api/images", tags=["masks"])


@router.get("/{image_id}/mask.png", responses=NOT_FOUND)
def mask_png(image_id: Id, u: Annotator, project: ProjectDep) -> Response:
    """The latest saved mask; without one, the active model's glands (instance decoder)."""
    image = get_image(project, image_id)
    if image.mask_version:
        return placed(project, project.mask_path(image.name, image.mask_version))
    glands = predicted_instances(project, image)
    if glands is None:
        probs = prediction(project, image)
        glands = (probs > 127) if probs is not None else np.zeros((image.height, image.width), bool)
    return png((glands > 0).astype(np.uint8) * 255)


@router.put("/{image_id}/mask", response_model=ImageOut,
            responses={**NOT_FOUND, 409: {"model": ErrorOut, "description": "someone saved it since; names who"}})
def put_mask(image_id: Id, body: MaskIn, u: Annotator, project: ProjectDep, worker: WorkerDep,
             cfg: ConfigDep) -> ImageOut:
    """Save a correction as the next mask version (``approve``: and mark the image approved)."""
    image = get_image(project, image_id)
    try:
        raw = base64.b64decode(body.png_base64, validate=True)
        mask = decode_mask(raw, f"mask of {image.name}")
        saved = save_mask(project, image_id, mask, body.base_version, u.name, body.seconds, body.operations,
                          body.approve)
    except ConflictError as exc:
        raise HTTPException(409, str(exc)) from None
    except (PathosegError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from None
    if cfg.retrain_every and not worker.busy() and corrections_since_last_model(project) >= cfg.retrain_every:
        worker.submit("train")
    return ImageOut.of(saved)
