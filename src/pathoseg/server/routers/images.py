"""Images: the review queue (images that cannot hold a gland last), uploads (admins; each is
predicted by the active model in the background), the image and the model's view of it."""

from __future__ import annotations

import random
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, HTTPException, UploadFile
from fastapi.responses import FileResponse, Response
from sqlalchemy import select

from pathoseg.errors import PathosegError
from pathoseg.server.deps import (
    ADMIN_ONLY,
    BAD_BODY,
    NOT_FOUND,
    PNG,
    Admin,
    Annotator,
    Id,
    ProjectDep,
    WorkerDep,
    get_image,
    image_outs,
    placed,
    png,
    prediction,
)
from pathoseg.server.schemas import ImageOut
from pathoseg.server.services.images import add_image, decode_upload, predicted_instances, safe_name
from pathoseg.server.services.queue import queue
from pathoseg.server.storage import Image
from pathoseg.server.vocabulary import MAX_UPLOAD_BYTES

router = APIRouter(prefix="/api/images", tags=["images"])


@router.get("", response_model=list[ImageOut])
def list_images(u: Annotator, project: ProjectDep, order: str = "uncertainty") -> list[ImageOut]:
    """The review queue: most uncertain unfinished first (or by name, or shuffled per user);
    in every order, images flagged as unable to hold a gland ("too small", "no tissue") last."""
    if order not in ("uncertainty", "random", "name"):
        raise HTTPException(422, "order must be uncertainty, random or name")
    with project.session() as s:
        images = list(s.scalars(select(Image).order_by(Image.name)))
    if order == "uncertainty":  # most uncertain unfinished first; finished ones last
        images.sort(key=lambda i: (i.status in ("corrected", "approved"), -(i.uncertainty or 0.0)))
    elif order == "random":
        random.Random(u.id).shuffle(images)
    images.sort(key=lambda i: i.flag is not None)  # stable: each order holds within both groups
    return image_outs(project, images)


@router.post("", response_model=ImageOut, status_code=201, responses={**ADMIN_ONLY, **BAD_BODY})
async def upload(u: Admin, project: ProjectDep, worker: WorkerDep, file: Annotated[UploadFile, File()]) -> ImageOut:
    """Add an image (admins). With an active model, a prediction job is queued (or the queued
    one reused): it predicts the images the model has not predicted yet, this one."""
    data = await file.read(MAX_UPLOAD_BYTES + 1)  # never more than the limit in memory
    try:
        name = safe_name(file.filename or "")
        image = add_image(project, name, decode_upload(data, file.filename or "upload"), user=u.name)
    except PathosegError as exc:
        raise HTTPException(422, str(exc)) from None
    with project.session() as s:
        active = project.active_model(s) is not None
    if active:
        queue(project, worker, "predict", "upload")
    return image_outs(project, [image])[0]


@router.get("/{image_id}", response_model=ImageOut, responses=NOT_FOUND)
def image_info(image_id: Id, u: Annotator, project: ProjectDep) -> ImageOut:
    return image_outs(project, [get_image(project, image_id)])[0]


@router.get("/{image_id}/image.png", response_class=Response, responses={**PNG, **NOT_FOUND})
def image_png(image_id: Id, u: Annotator, project: ProjectDep) -> FileResponse:
    return placed(project, project.image_path(get_image(project, image_id).name))


@router.get("/{image_id}/instances.png", response_class=Response, responses={**PNG, **NOT_FOUND})
def instances_png(image_id: Id, u: Annotator, project: ProjectDep) -> Response:
    """The active model's glands as a label map (0 background, 1..N; 16-bit when N > 255)."""
    glands = predicted_instances(project, get_image(project, image_id))
    if glands is None:
        raise HTTPException(404, "no prediction yet: no model is active")
    return png(glands.astype(np.uint16) if glands.max(initial=0) > 255 else glands.astype(np.uint8))


@router.get("/{image_id}/prediction.png", response_class=Response, responses={**PNG, **NOT_FOUND})
def prediction_png(image_id: Id, u: Annotator, project: ProjectDep) -> Response:
    """The active model's gland probability x 255."""
    probs = prediction(project, get_image(project, image_id))
    if probs is None:
        raise HTTPException(404, "no prediction yet: no model is active")
    return png(probs)
