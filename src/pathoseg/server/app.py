"""The FastAPI app: REST API (described by its OpenAPI schema) plus the browser UI.

Every write needs a user's token (``Authorization: Bearer <token>``); images are addressed
by integer id, so no parameter ever becomes a path. Bodies over ``max_body_bytes`` are
refused (413) before anything reads them; every error is ``{"detail": "one line"}``.
"""


import base64
import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, Header, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image as PILImage
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import select

from pathoseg.errors import PathosegError
from pathoseg.server.jobs import TrainSettings, Worker, corrections_since_last_model
from pathoseg.server.limits import BodySizeLimit
from pathoseg.server.project import (
    MAX_OPERATION_KINDS,
    MAX_OPERATION_NAME,
    MAX_OPERATIONS,
    MAX_SECONDS,
    MAX_UPLOAD_BYTES,
    ConflictError,
    add_image,
    decode_mask,
    decode_upload,
    export,
    predicted_instances,
    safe_name,
    save_mask,
)
from pathoseg.server.storage import MAX_ID, Image, Job, ModelVersion, Project, User, user_for_token

WEB = Path(__file__).parent / "web"
# The largest upload as base64 in a JSON mask body, plus room for the rest of the request.
MAX_BODY_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + 2**20


@dataclass
class ServerConfig:
    project: str
    db_url: str | None = None
    retrain_every: int = 5  # start a retrain automatically after this many new corrections (0: never)
    train: TrainSettings = field(default_factory=TrainSettings)
    max_body_bytes: int = MAX_BODY_BYTES  # larger request bodies get 413 before auth or parsing


Id = Annotated[int, PathParam(ge=1, le=MAX_ID, description=f"1 to {MAX_ID}")]


class ErrorOut(BaseModel):
    """Every error the API returns: 401, 404, 409, 413, 422, ..."""

    detail: str = Field(description="what went wrong, in one line")


class ImageOut(BaseModel):
    id: int
    name: str
    width: int
    height: int
    status: str
    uncertainty: float | None
    mask_version: int
    updated_by: str | None


class MaskIn(BaseModel):
    png_base64: str = Field(description="PNG of the mask, image-sized; any non-zero value in any channel is "
                                        "gland (with transparent pixels in an alpha channel: the visible ones)")
    base_version: int = Field(ge=0, lt=MAX_ID, description="the mask_version the editor loaded (conflict check)")
    seconds: float = Field(0.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False,
                           description="time spent on this correction")
    operations: dict[Annotated[str, StringConstraints(min_length=1, max_length=MAX_OPERATION_NAME)],
                     Annotated[int, Field(ge=0, le=MAX_OPERATIONS)]] = Field(
        default_factory=dict, max_length=MAX_OPERATION_KINDS, description='edits made, e.g. {"brush": 3}')
    approve: bool = False


class JobOut(BaseModel):
    id: int
    kind: str
    status: str
    progress: float
    message: str


class ModelOut(BaseModel):
    version: int
    val_iou: float | None
    active: bool
    trained_on: list


def _image_out(i: Image) -> ImageOut:
    return ImageOut(id=i.id, name=i.name, width=i.width, height=i.height, status=i.status,
                    uncertainty=i.uncertainty, mask_version=i.mask_version, updated_by=i.updated_by)


def _one_line(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one line: 'seconds: Input should be ...; ...'."""
    parts = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
            continue
        where = ".".join(str(p)[:40] for p in error.get("loc", ()) if p not in ("body", "path", "query", "header"))
        message = " ".join(str(error.get("msg", "invalid")).split())
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(dict.fromkeys(parts))[:1000] or "invalid request"


def create_app(cfg: ServerConfig) -> FastAPI:
    project = Project(cfg.project, cfg.db_url)
    worker = Worker(project, cfg.train)
    errors = {status: {"model": ErrorOut, "description": text}
              for status, text in [(401, "no or unknown token"), (413, "request body too large"),
                                   (422, "invalid input")]}
    app = FastAPI(title="pathoseg", version="0.1.0", responses=errors,
                  description="Review gland predictions, correct them, retrain in the background. "
                              'Every error is {"detail": "one line"}.')
    app.state.project, app.state.worker = project, worker
    app.router.add_event_handler("shutdown", worker.shutdown)
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status_code=422)

    not_found = {404: {"model": ErrorOut, "description": "no such image, job or model version"}}

    def user(authorization: Annotated[str | None, Header()] = None) -> User:
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "log in: send Authorization: Bearer <token>")
        with project.session() as s:
            found = user_for_token(s, authorization.removeprefix("Bearer ").strip())
        if found is None:
            raise HTTPException(401, "unknown token")
        return found

    Authed = Annotated[User, Depends(user)]

    def get_image(image_id: int) -> Image:
        with project.session() as s:
            image = s.get(Image, image_id)
        if image is None:
            raise HTTPException(404, f"no image with id {image_id}")
        return image

    @app.get("/api/me")
    def me(u: Authed) -> dict:
        return {"name": u.name, "is_admin": u.is_admin}

    @app.get("/api/images", response_model=list[ImageOut])
    def list_images(u: Authed, order: str = "uncertainty") -> list[ImageOut]:
        if order not in ("uncertainty", "random", "name"):
            raise HTTPException(422, "order must be uncertainty, random or name")
        with project.session() as s:
            images = list(s.scalars(select(Image).order_by(Image.name)))
        if order == "uncertainty":  # most uncertain unfinished first; finished ones last
            images.sort(key=lambda i: (i.status in ("corrected", "approved"), -(i.uncertainty or 0.0)))
        elif order == "random":
            random.Random(u.id).shuffle(images)
        return [_image_out(i) for i in images]

    @app.post("/api/images", response_model=ImageOut, status_code=201)
    async def upload(u: Authed, file: Annotated[UploadFile, File()]) -> ImageOut:
        data = await file.read(MAX_UPLOAD_BYTES + 1)  # never more than the limit in memory
        try:
            name = safe_name(file.filename or "")
            image = add_image(project, name, decode_upload(data, file.filename or "upload"), user=u.name)
        except PathosegError as exc:
            raise HTTPException(422, str(exc)) from None
        return _image_out(image)

    @app.get("/api/images/{image_id}", response_model=ImageOut, responses=not_found)
    def image_info(image_id: Id, u: Authed) -> ImageOut:
        return _image_out(get_image(image_id))

    def placed(path: Path) -> FileResponse:
        """A file whose row committed; in the moment before its save renames it into place
        (or after a crash there), settle the staged files first."""
        if not path.is_file():
            project.settle_staged_files()
        if not path.is_file():
            raise HTTPException(503, "this file is being saved right now; try again", headers={"Retry-After": "1"})
        return FileResponse(path, media_type="image/png")

    @app.get("/api/images/{image_id}/image.png", responses=not_found)
    def image_png(image_id: Id, u: Authed) -> FileResponse:
        return placed(project.image_path(get_image(image_id).name))

    @app.get("/api/images/{image_id}/mask.png", responses=not_found)
    def mask_png(image_id: Id, u: Authed) -> Response:
        """The latest saved mask; without one, the active model's glands (instance decoder)."""
        image = get_image(image_id)
        if image.mask_version:
            return placed(project.mask_path(image.name, image.mask_version))
        glands = predicted_instances(project, image)
        if glands is None:
            probs = _prediction(image)
            glands = (probs > 127) if probs is not None else np.zeros((image.height, image.width), bool)
        return _png((glands > 0).astype(np.uint8) * 255)

    @app.get("/api/images/{image_id}/instances.png", responses=not_found)
    def instances_png(image_id: Id, u: Authed) -> Response:
        """The active model's glands as a label map (0 background, 1..N; 16-bit when N > 255)."""
        glands = predicted_instances(project, get_image(image_id))
        if glands is None:
            raise HTTPException(404, "no prediction yet: no model is active")
        return _png(glands.astype(np.uint16) if glands.max(initial=0) > 255 else glands.astype(np.uint8))

    @app.get("/api/images/{image_id}/prediction.png", responses=not_found)
    def prediction_png(image_id: Id, u: Authed) -> Response:
        """The active model's gland probability x 255."""
        probs = _prediction(get_image(image_id))
        if probs is None:
            raise HTTPException(404, "no prediction yet: no model is active")
        return _png(probs)

    def _prediction(image: Image) -> np.ndarray | None:
        with project.session() as s:
            active = project.active_model(s)
        if active is None or not project.prediction_path(active.version, image.name).is_file():
            return None
        return np.array(PILImage.open(project.prediction_path(active.version, image.name)))

    @app.put("/api/images/{image_id}/mask", response_model=ImageOut,
             responses={**not_found, 409: {"model": ErrorOut, "description": "someone saved it since; names who"}})
    def put_mask(image_id: Id, body: MaskIn, u: Authed) -> ImageOut:
        image = get_image(image_id)
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
        return _image_out(saved)

    @app.post("/api/train", response_model=JobOut, status_code=202)
    def train(u: Authed) -> JobOut:
        return job(worker.submit("train"), u)

    @app.post("/api/predict", response_model=JobOut, status_code=202)
    def predict(u: Authed) -> JobOut:
        return job(worker.submit("predict"), u)

    @app.get("/api/jobs/{job_id}", response_model=JobOut, responses=not_found)
    def job(job_id: Id, u: Authed) -> JobOut:
        with project.session() as s:
            j = s.get(Job, job_id)
        if j is None:
            raise HTTPException(404, f"no job {job_id}")
        return JobOut(id=j.id, kind=j.kind, status=j.status, progress=j.progress, message=j.message)

    @app.get("/api/jobs", response_model=list[JobOut])
    def jobs(u: Authed) -> list[JobOut]:
        with project.session() as s:
            rows = list(s.scalars(select(Job).order_by(Job.id.desc()).limit(20)))
        return [JobOut(id=j.id, kind=j.kind, status=j.status, progress=j.progress, message=j.message) for j in rows]

    @app.get("/api/models", response_model=list[ModelOut])
    def models(u: Authed) -> list[ModelOut]:
        with project.session() as s:
            rows = list(s.scalars(select(ModelVersion).order_by(ModelVersion.version)))
        return [ModelOut(version=m.version, val_iou=m.val_iou, active=m.active, trained_on=m.trained_on) for m in rows]

    @app.post("/api/models/{version}/activate", response_model=JobOut, status_code=202, responses=not_found)
    def activate(version: Id, u: Authed) -> JobOut:
        """Roll back (or forward) to a model version; predictions refresh in the background."""
        with project.session() as s:
            target = s.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
            if target is None:
                raise HTTPException(404, f"no model version {version}")
            for m in s.scalars(select(ModelVersion).where(ModelVersion.active)):
                m.active = False
            target.active = True
            s.commit()
        return job(worker.submit("predict"), u)

    @app.get("/api/export")
    def export_zip(u: Authed) -> Response:
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            export(project, Path(tmp) / "export")
            archive = shutil.make_archive(str(Path(tmp) / "export"), "zip", Path(tmp) / "export")
            data = Path(archive).read_bytes()
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="pathoseg-export.zip"'})

    app.mount("/", StaticFiles(directory=WEB, html=True), name="web")
    return app


def _png(array: np.ndarray) -> Response:
    buf = io.BytesIO()
    PILImage.fromarray(array).save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png")

