"""What the routers share: the app's project, worker and settings, the logged-in user and
their role, and a few response helpers. Everything comes from ``request.app.state``, so
several apps (tests) can live in one process."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image as PILImage

from pathoseg.server.config import ServerConfig
from pathoseg.server.limits import LoginThrottle
from pathoseg.server.schemas import ErrorOut, ImageOut
from pathoseg.server.services.predictions import predicting
from pathoseg.server.services.worker import Worker
from pathoseg.server.storage import MAX_ID, Image, Project, TokenError, User, authenticate

Id = Annotated[int, PathParam(ge=1, le=MAX_ID, description=f"1 to {MAX_ID}")]
NOT_FOUND = {404: {"model": ErrorOut, "description": "no such image, job, model version or user"}}
ADMIN_ONLY = {403: {"model": ErrorOut, "description": "admins only"}}
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}
BAD_BODY = {400: {"model": ErrorOut, "description": "the body cannot be parsed (not JSON, or not multipart)"}}

# FastAPI's own parser of "Authorization: Bearer <token>" (scheme in any case); it also puts
# the scheme into the OpenAPI schema, so /docs has an "Authorize" button.
bearer = HTTPBearer(auto_error=False, scheme_name="token",
                    description="a login token from `pathoseg project users add` (or `users token`)")


def get_project(request: Request) -> Project:
    return request.app.state.project


def get_worker(request: Request) -> Worker:
    return request.app.state.worker


def get_config(request: Request) -> ServerConfig:
    return request.app.state.config


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def current_user(request: Request,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> User:
    """The user whose token came with the request: 401 without one or with a bad one (unknown,
    expired, revoked), 429 for a bad one while this client is throttled for too many.

    A good token always works, also from a throttled address: behind a proxy every client has
    the proxy's address, and one client's wrong guesses must not lock the others out. That a
    throttled guesser can still tell a right token from a wrong one costs nothing: a token is
    192 random bits, and the throttle still caps the guesses to ``attempts`` per window."""
    if credentials is None:
        raise HTTPException(401, "log in: send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
    throttle: LoginThrottle = request.app.state.throttle
    client = client_address(request)
    with get_project(request).session() as s:
        try:
            return authenticate(s, credentials.credentials)
        except TokenError as exc:
            wait = throttle.retry_after(client)
            if wait:
                raise HTTPException(429, f"too many wrong tokens from this address; try again in {wait} s",
                                    headers={"Retry-After": str(wait)}) from None
            throttle.failed(client)
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    """403 unless the user is an admin."""
    if not user.is_admin:
        raise HTTPException(403, f"only an admin may do this ({user.name} is an {user.role})")
    return user


Annotator = Annotated[User, Depends(current_user)]  # any logged-in user
Admin = Annotated[User, Depends(admin_user)]
ProjectDep = Annotated[Project, Depends(get_project)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
ConfigDep = Annotated[ServerConfig, Depends(get_config)]


def get_image(project: Project, image_id: int) -> Image:
    with project.session() as s:
        image = s.get(Image, image_id)
    if image is None:
        raise HTTPException(404, f"no image with id {image_id}")
    return image


def image_outs(project: Project, images: list[Image]) -> list[ImageOut]:
    """What the API says of ``images``, with whether each waits for its prediction."""
    return [ImageOut.of(i, p) for i, p in zip(images, predicting(project, images), strict=True)]


def placed(project: Project, path: Path) -> FileResponse:
    """A file whose row committed; in the moment before its save renames it into place
    (or after a crash there), settle the staged files first."""
    if not path.is_file():
        project.settle_staged_files()
    if not path.is_file():
        raise HTTPException(503, "this file is being saved right now; try again", headers={"Retry-After": "1"})
    return FileResponse(path, media_type="image/png")


def prediction(project: Project, image: Image) -> np.ndarray | None:
    """The active model's gland probability x 255 for ``image``, when predicted."""
    with project.session() as s:
        active = project.active_model(s)
    if active is None or not project.prediction_path(active.version, image.name).is_file():
        return None
    return np.array(PILImage.open(project.prediction_path(active.version, image.name)))


def png(array: np.ndarray) -> Response:
    buf = io.BytesIO()
    PILImage.fromarray(array).save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png")
