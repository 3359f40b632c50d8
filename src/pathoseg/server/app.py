"""The FastAPI app: REST API (described by its OpenAPI schema) plus the browser UI.

Every request to the API needs a user's token (``Authorization: Bearer <token>``, checked by
FastAPI's ``HTTPBearer``); admins may also train, activate models, export, upload images and
manage users. Images are addressed by integer id, so no parameter ever becomes a path. Bodies
over ``max_body_bytes`` are refused (413) before anything reads them; too many wrong tokens
from one address get 429; every error is ``{"detail": "one line"}``. The endpoints live in
``routers/``, one module per resource, over the storage layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from pathoseg.server.config import MAX_BODY_BYTES, ServerConfig
from pathoseg.server.limits import BodySizeLimit, LoginThrottle, SecurityHeaders
from pathoseg.server.routers import ROUTERS
from pathoseg.server.schemas import ErrorOut
from pathoseg.server.services.queue import reap_dead_jobs
from pathoseg.server.services.worker import Worker
from pathoseg.server.storage import Project

__all__ = ["MAX_BODY_BYTES", "ServerConfig", "create_app"]

WEB = Path(__file__).parent / "web"


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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start: running jobs whose worker died (no heartbeat for ``job_timeout`` seconds) go back
    to the queue (once; see ``pathoseg.server.services.queue``), queued jobs stay queued, and the
    server's own worker thread starts (unless ``worker=False``: then ``pathoseg worker``
    processes run the jobs). Stop: the worker hands its running job back to the queue at its
    next progress report and stops; the database connections close."""
    cfg: ServerConfig = app.state.config
    reap_dead_jobs(app.state.project, cfg.job_timeout)
    if cfg.worker:
        app.state.worker.start()
    try:
        yield
    finally:
        app.state.worker.stop()
        app.state.project.engine.dispose()


def create_app(cfg: ServerConfig) -> FastAPI:
    project = Project(cfg.project, cfg.db_url)
    errors = {status: {"model": ErrorOut, "description": text}
              for status, text in [(401, "no token, or an unknown, expired or revoked one"),
                                   (413, "request body too large"), (422, "invalid input"),
                                   (429, "too many wrong tokens from this address; see Retry-After")]}
    app = FastAPI(title="pathoseg", version="0.1.0", responses=errors, lifespan=lifespan,
                  description="Review gland predictions, correct them, retrain in the background. "
                              "Log in with `Authorization: Bearer <token>`; roles: admin, annotator. "
                              'Every error is {"detail": "one line"}.')
    app.state.config = cfg
    app.state.project = project
    app.state.worker = Worker(project, cfg.train, timeout=cfg.job_timeout)
    app.state.throttle = LoginThrottle(cfg.login_attempts, cfg.login_window)
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status_code=422)

    for router in ROUTERS:
        app.include_router(router)
    app.mount("/", StaticFiles(directory=WEB, html=True), name="web")
    return app
