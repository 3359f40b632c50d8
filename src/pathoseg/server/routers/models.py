"""Model versions: list them; make one active (admins: rollback or forward)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from pathoseg.server.deps import ADMIN_ONLY, NOT_FOUND, Admin, Annotator, ConfigDep, Id, ProjectDep, WorkerDep
from pathoseg.server.routers.jobs import job_out, queue
from pathoseg.server.schemas import JobOut, ModelOut, ScoresOut
from pathoseg.server.services.validation import current_validation
from pathoseg.server.storage import ModelVersion, aware

router = APIRouter(prefix="/api/models", tags=["models"])


@router.get("", response_model=list[ModelOut])
def models(u: Annotator, project: ProjectDep, cfg: ConfigDep) -> list[ModelOut]:
    """Every version, with its scores on the project's current validation set (versions not
    scored on that set have none: numbers from different sets are never shown side by side)."""
    _, digest = current_validation(project, cfg.train.round.gate)
    with project.session() as s:
        rows = list(s.scalars(select(ModelVersion).order_by(ModelVersion.version)))

    def scores(m: ModelVersion) -> ScoresOut | None:
        found = m.scores or {}
        return ScoresOut(**{k: found[k] for k in ("iou", "f1", "images")}) if found.get("digest") == digest else None

    return [ModelOut(version=m.version, active=m.active, trained_on=m.trained_on, created_at=aware(m.created_at),
                     note=m.note, scores=scores(m), trained_by=m.trained_by) for m in rows]


@router.post("/{version}/activate", response_model=JobOut, status_code=202, responses={**NOT_FOUND, **ADMIN_ONLY})
def activate(version: Id, u: Admin, project: ProjectDep, worker: WorkerDep) -> JobOut:
    """Roll back (or forward) to a model version; predictions refresh in the background. A
    retrain running meanwhile stores its model without activating it (see the job's message)."""
    if not project.activate_model(version):
        raise HTTPException(404, f"no model version {version}")
    return job_out(project, queue(project, worker, "predict", u.name))
