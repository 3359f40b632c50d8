"""The job queue: retraining and prediction run in workers, never in a request.

Jobs live in the database (table ``jobs``): ``queued`` -> ``running`` -> ``done`` or ``failed``.
A worker (the thread that ``pathoseg serve`` starts unless ``--no-worker``, or any number of
``pathoseg worker`` processes, on this machine or on others that share the database and the
project folder) claims the oldest queued job with a compare-and-set, ``UPDATE jobs SET
status='running', worker=<its id>, attempts=attempts+1 WHERE id=? AND status='queued'``, which
exactly one claimer sees change a row, on SQLite and PostgreSQL alike. While the job runs the
worker stamps ``heartbeat_at`` with the database's clock every ``timeout / 4`` seconds (at most
15), and it writes progress and the outcome only while the row still names it.

The rules:

- A job whose heartbeat is older than ``timeout`` (default 60 s) lost its worker (killed,
  crashed, machine gone). Any worker, and the server when it starts, puts it back in the queue
  once; a job whose worker dies on its second attempt (``MAX_ATTEMPTS``) fails for good, with a
  message saying so. A job that raised an error fails at once (the same error would come back).
  A worker that stops cleanly (Ctrl+C, SIGTERM, server shutdown) hands its job back to the
  queue without using up an attempt.
- At most one job of each kind is queued (a partial unique index): asking for a retrain while
  one is queued returns the queued one (it will read every mask saved until it starts), and
  the same for predictions. An automatic retrain (every N corrections) is not queued while a
  retrain is queued or running. Retrains run one at a time, also with several workers.
- A retrain reads its data first and records in its model version which mask version of each
  image trained it (``trained_on``). A correction counts toward the next automatic retrain
  until the active model trained on it (or on a later version of the same image), so saves
  made while a retrain runs count toward the next one.
- A retrain is the one round the HITL study measures (:func:`pathoseg.engine.rounds.run_round`):
  it holds out the project's validation set, trains a candidate derived from the active model
  and scores both on that set. The candidate is activated only when the gate lets it (not
  worse, within the tolerances of :class:`pathoseg.engine.settings.GateConfig`); otherwise it is
  stored inactive and the job's message and the model menu say why, with both scores.
- A finished retrain activates its model only when the active version is still the one that
  was active when the job started. When an admin activated another version meanwhile (a
  rollback), the new version is stored inactive, the job's message says so, and it can be
  activated from the model menu.
- A train job that died after storing its model (while predicting) does not train again on
  retry: it refreshes the predictions of the version it made.
- A prediction job predicts only the images the active model has not predicted yet (and
  recomputes the others' uncertainty): an upload queues one (``requested_by="upload"``), and
  it costs that image (:mod:`pathoseg.server.services.predictions`).
- Every job records who asked for it (``requested_by``: an admin's name, ``"auto"`` for the
  retrain after corrections, ``"upload"``); a retrain's model version records its job's
  (``trained_by``)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from pathoseg.server.config import DEAD_AFTER
from pathoseg.server.storage import Image, Job, Mask, Project, aware, db_now, now

KINDS = ("train", "predict")


MAX_ATTEMPTS = 2  # a job whose worker dies this many times fails for good


FINISHED = ("done", "failed")


# -- the queue ---------------------------------------------------------------------------------
def enqueue(project: Project, kind: str, automatic: bool = False, requested_by: str | None = None) -> int | None:
    """Queue a job of ``kind`` and return its id; when one of that kind is queued already,
    return that one (it keeps its requester). ``automatic`` (a retrain after saves): queue
    nothing and return None while a train job is queued or running. ``requested_by``: who
    asked (a user's name, ``"auto"``, ``"upload"``); a retrain's model records it."""
    if kind not in KINDS:
        raise ValueError(f"job kind must be one of {', '.join(KINDS)}, not {kind!r:.40}")
    for _ in range(10):
        with project.session() as s:
            pending = select(Job.id).where(Job.kind == kind, Job.status.in_(("queued", "running") if automatic
                                                                            else ("queued",)))
            if (existing := s.scalars(pending.order_by(Job.id)).first()) is not None:
                return None if automatic else existing
            job = Job(kind=kind, message="waiting for a worker", requested_by=requested_by)
            s.add(job)
            try:
                s.commit()
                return job.id
            except IntegrityError:  # another request queued one at the same moment: use it
                s.rollback()
    raise RuntimeError(f"could not queue a {kind} job")


def wait_for(project: Project, job_id: int, timeout: float | None = None, poll: float = 0.1) -> Job:
    """Block until job ``job_id`` is done or failed (whoever runs it); TimeoutError after
    ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with project.session() as s:
            job = s.get(Job, job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        if job.status in FINISHED:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
        time.sleep(poll)


def reap_dead_jobs(project: Project, timeout: float = DEAD_AFTER) -> list[int]:
    """Requeue the running jobs whose heartbeat is older than ``timeout`` seconds (by the
    database's clock), or fail them for good when that was their last attempt; returns their
    ids. Jobs without a heartbeat (left by a pathoseg from before the queue) count as dead."""
    reaped = []
    with project.session() as s:
        cutoff = db_now(s) - timedelta(seconds=timeout)
        stale = or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)
        for job_id, kind, attempts, worker in s.execute(
                select(Job.id, Job.kind, Job.attempts, Job.worker).where(Job.status == "running", stale)).all():
            died = f"its worker ({worker or 'unknown'}) stopped: no heartbeat for {timeout:g} s"
            this = (Job.id == job_id, Job.status == "running", Job.attempts == attempts, stale)
            if attempts >= MAX_ATTEMPTS:
                values = {"status": "failed", "finished_at": now(),
                          "message": f"failed for good: {died} on attempt {attempts} of {MAX_ATTEMPTS}"}
            else:
                values = {"status": "queued", "worker": None, "progress": 0.0,
                          "message": f"retrying: {died} on attempt {attempts} of {MAX_ATTEMPTS}"}
            try:
                done = s.execute(update(Job).where(*this).values(**values)).rowcount == 1
                s.commit()
            except IntegrityError:  # one of its kind is queued already: that one replaces it
                s.rollback()
                queued = s.scalars(select(Job.id).where(Job.kind == kind, Job.status == "queued")).first()
                done = s.execute(update(Job).where(*this).values(
                    status="failed", finished_at=now(),
                    message=f"{died}; queued job #{queued} of the same kind replaces it")).rowcount == 1
                s.commit()
            if done:
                reaped.append(job_id)
    return reaped


def corrections_since_last_model(project: Project) -> int:
    """Corrections the active model did not train on: saved masks (source ``correction``)
    newer than the version of their image in the active model's ``trained_on``. Saves made
    while a retrain ran are newer than what it read, so they count toward the next one. An
    imported checkpoint's data is unknown: corrections saved after its import count."""
    with project.session() as s:
        active = project.active_model(s)
        rows = s.execute(select(Image.name, Mask.version, Mask.created_at).join(Image)
                         .where(Mask.source == "correction")).all()
    if active is None:
        return len(rows)
    trained = {}
    for entry in active.trained_on or []:
        if isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[1], int):
            trained[entry[0]] = entry[1]
    if not any(v > 0 for v in trained.values()):  # an imported checkpoint, or a legacy row
        created = active.created_at
        return sum(1 for *_, at in rows if at is not None and aware(at) > aware(created))
    return sum(1 for name, version, _ in rows if version > trained.get(name, 0))


def queue(project: Project, worker: Waker, kind: str, requested_by: str, automatic: bool = False) -> int | None:
    """Queue a job (or find the queued one, see :func:`enqueue`) and tell the server's own
    worker, if it runs, to look at the queue now."""
    job_id = enqueue(project, kind, automatic, requested_by)
    if job_id is not None:
        worker.wake()
    return job_id


class Waker(Protocol):
    def wake(self) -> None: ...
