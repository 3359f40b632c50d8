"""Model versions: list them; make one active (admins: rollback or forward)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from pathoseg.server.deps import ADMIN_ONLY, NOT_FOUND, Admin, Annotator, Id, ProjectDep, WorkerDep
from pathoseg.server.routers.jobs import job_out, queue
from pathoseg.server.schemas import JobOut, ModelOut
from pathoseg.server.storage import ModelVersion

router = APIRouter(prefix="/api/models", tags=["models"])


@router.get("", response_model=list[ModelOut])
def models(u: Annotator, project: ProjectDep) -> list[ModelOut]:
    with project.session() as s:
        rows = list(s.scalars(select(ModelVersion).order_by(ModelVersion.version)))
    return [ModelOut(version=m.version, val_iou=m.val_iou, active=m.active, trained_on=m.trained_on) for m in rows]


@router.post("/{version}/activate", response_model=JobOut, status_code=202, responses={**NOT_FOUND, **ADMIN_ONLY})
def activate(version: Id, u: Admin, project: ProjectDep, worker: WorkerDep) -> JobOut:
    """Roll back (or forward) to a model version; predictions refresh in the background. A
    retrain running meanwhile stores its model without activating it (see the job's message)."""
    if not project.activate_model(version):
        raise HTTPException(404, f"no model version {version}")
    return job_out(project, queue(project, worker, "predict"))
