"""Background jobs: start a retrain or a prediction refresh (admins), follow their progress."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import select

from pathoseg.server.deps import ADMIN_ONLY, NOT_FOUND, Admin, Annotator, Id, ProjectDep, WorkerDep
from pathoseg.server.schemas import JobOut
from pathoseg.server.services.queue import queue
from pathoseg.server.storage import Job, Project

router = APIRouter(prefix="/api", tags=["jobs"])


def job_out(project: Project, job_id: int, admin: bool = True) -> JobOut:
    with project.session() as s:
        j = s.get(Job, job_id)
    if j is None:
        raise HTTPException(404, f"no job {job_id}")
    return JobOut.of(j, admin)


@router.post("/train", response_model=JobOut, status_code=202, responses=ADMIN_ONLY)
def train(u: Admin, project: ProjectDep, worker: WorkerDep) -> JobOut:
    """Queue a retrain: a new model version from every saved mask, warm-started from the
    active one. While a retrain is queued (not yet started) this returns that job: it will
    read every mask saved until it starts."""
    return job_out(project, queue(project, worker, "train", u.name))


@router.post("/predict", response_model=JobOut, status_code=202, responses=ADMIN_ONLY)
def predict(u: Admin, project: ProjectDep, worker: WorkerDep) -> JobOut:
    """Predict with the active model every image it has not predicted yet, and recompute every
    image's uncertainty from its stored prediction (while one such job is queued: that one)."""
    return job_out(project, queue(project, worker, "predict", u.name))


@router.get("/jobs/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def job(job_id: Id, u: Annotator, project: ProjectDep) -> JobOut:
    return job_out(project, job_id, u.is_admin)


@router.get("/jobs", response_model=list[JobOut])
def jobs(u: Annotator, project: ProjectDep) -> list[JobOut]:
    with project.session() as s:
        rows = list(s.scalars(select(Job).order_by(Job.id.desc()).limit(20)))
    return [JobOut.of(j, u.is_admin) for j in rows]
