"""Images: the review queue, uploads (admins), the image and the model's view of it."""

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
    get_image,
    placed,
    png,
    prediction,
)
from pathoseg.server.schemas import ImageOut
from pathoseg.server.services.images import add_image, decode_upload, predicted_instances, safe_name
from pathoseg.server.storage import Image
from pathoseg.server.vocabulary import MAX_UPLOAD_BYTES

router = APIRouter(prefix="/api/images", tags=["images"])


@router.get("", response_model=list[ImageOut])
def list_images(u: Annotator, project: ProjectDep, order: str = "uncertainty") -> list[ImageOut]:
    if order not in ("uncertainty", "random", "name"):
        raise HTTPException(422, "order must be uncertainty, random or name")
    with project.session() as s:
        images = list(s.scalars(select(Image).order_by(Image.name)))
    if order == "uncertainty":  # most uncertain unfinished first; finished ones last
        images.sort(key=lambda i: (i.status in ("corrected", "approved"), -(i.uncertainty or 0.0)))
    elif order == "random":
        random.Random(u.id).shuffle(images)
    return [ImageOut.of(i) for i in images]


@router.post("", response_model=ImageOut, status_code=201, responses={**ADMIN_ONLY, **BAD_BODY})
async def upload(u: Admin, project: ProjectDep, file: Annotated[UploadFile, File()]) -> ImageOut:
    """Add an image (admins)."""
    data = await file.read(MAX_UPLOAD_BYTES + 1)  # never more than the limit in memory
    try:
        name = safe_name(file.filename or "")
        image = add_image(project, name, decode_upload(data, file.filename or "upload"), user=u.name)
    except PathosegError as exc:
        raise HTTPException(422, str(exc)) from None
    return ImageOut.of(image)


@router.get("/{image_id}", response_model=ImageOut, responses=NOT_FOUND)
def image_info(image_id: Id, u: Annotator, project: ProjectDep) -> ImageOut:
    return ImageOut.of(get_image(project, image_id))


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
