"""Workers: claim queued jobs, heartbeat them, and run them (the one retrain round, prediction
refreshes); see :mod:`pathoseg.server.services.queue` for the rules."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from pathoseg.data.resolution import checkpoint_mpp
from pathoseg.engine.checkpoint import load_checkpoint
from pathoseg.engine.device import choose_device
from pathoseg.engine.rounds import (
    ScaledCache,
    Tallies,
    run_round,
    validation_digest,
)
from pathoseg.server.config import DEAD_AFTER, WorkerSettings
from pathoseg.server.services.imports import project_mpp
from pathoseg.server.services.models import store_model
from pathoseg.server.services.predictions import predict_images
from pathoseg.server.services.queue import MAX_ATTEMPTS, enqueue, reap_dead_jobs, wait_for
from pathoseg.server.services.validation import labelled_images, score_stale_versions, store_scores
from pathoseg.server.storage import Job, ModelVersion, Project, now


class JobLost(Exception):
    """The job is no longer this worker's: it was declared dead (no heartbeat) and requeued."""


class JobReleased(Exception):
    """This worker is stopping: the job goes back to the queue."""


# -- workers -----------------------------------------------------------------------------------
@dataclass
class Claim:
    """A job this worker claimed: its row names ``worker`` and ``attempt``."""

    job_id: int
    kind: str
    attempt: int
    model_version: int | None  # a train job's model, stored by an earlier attempt
    requested_by: str | None = None  # who asked for it (a train job's model records it)
    lost: bool = False  # declared dead and requeued meanwhile: write nothing more
    reported: float = -1e9  # when progress was last written (monotonic clock)


def default_worker_id() -> str:
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    """Runs the queue's jobs, one at a time: in a thread of the server (``start``/``stop``),
    in the foreground (``run_forever``, for ``pathoseg worker``), or one by one (``run_once``)."""

    def __init__(self, project: Project, settings: WorkerSettings | None = None, *, timeout: float = DEAD_AFTER,
                 poll: float = 1.0, name: str | None = None) -> None:
        self.project = project
        self.settings = settings or WorkerSettings()
        self.timeout = timeout
        self.heartbeat = min(15.0, timeout / 4)
        self.poll = poll
        self.id = name or default_worker_id()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._cache = ScaledCache()  # a retrain re-reads only the masks saved since the last one
        # the active version's validation sums per image: the gate scores it on new images only
        self._tallies: dict[int, Tallies] = {}

    # -- the queue side, for the CLI and tests ---------------------------------------------
    def submit(self, kind: str, requested_by: str | None = None) -> int:
        job_id = enqueue(self.project, kind, requested_by=requested_by)
        self.wake()
        return job_id

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        return wait_for(self.project, job_id, timeout)

    def wake(self) -> None:
        """Look at the queue now (a job was just queued) instead of at the next poll."""
        self._wake.set()

    # -- running ---------------------------------------------------------------------------
    def start(self) -> None:
        """Work in a background thread (the server's own worker)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run_forever, name="pathoseg-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop working: a running job goes back to the queue at its next progress report."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_forever(self, idle_exit: bool = False) -> None:
        """Claim and run jobs until ``stop`` (or, with ``idle_exit``, until the queue is empty,
        raising what goes wrong). A database that cannot be reached is tried again at the next
        poll."""
        while not self._stopping.is_set():
            try:
                if self.run_once() is not None:
                    continue
                if idle_exit:
                    return
            except Exception:
                if idle_exit:
                    raise
                traceback.print_exc()
            self._wake.wait(self.poll)
            self._wake.clear()

    def run_until_signalled(self) -> None:
        """``run_forever`` in the foreground; SIGTERM or a first Ctrl+C stop after handing the
        running job back, a second Ctrl+C stops at once (its job is retried after the timeout)."""
        def stop(signum, frame):
            if self._stopping.is_set():
                raise KeyboardInterrupt
            print("pathoseg worker: stopping (the running job goes back to the queue; Ctrl+C again to quit now)",
                  flush=True)
            self.stop(timeout=0)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.run_forever()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run_once(self, job_id: int | None = None) -> int | None:
        """Requeue dead jobs, claim the oldest queued one (or ``job_id``) and run it; returns
        its id, or None when there was nothing to claim."""
        reap_dead_jobs(self.project, self.timeout)
        claim = self.claim(job_id)
        if claim is None:
            return None
        self._run(claim)
        return claim.job_id

    def claim(self, job_id: int | None = None) -> Claim | None:
        """Claim a queued job (compare-and-set on its status); retrains only while no other
        retrain runs."""
        other = aliased(Job)
        train_running = exists().where(other.kind == "train", other.status == "running")
        with self.project.session() as s:
            q = select(Job.id).where(Job.status == "queued").order_by(Job.id).limit(20)
            for candidate in s.scalars(q.where(Job.id == job_id) if job_id is not None else q).all():
                claimed = s.execute(
                    update(Job).where(Job.id == candidate, Job.status == "queued",
                                      or_(Job.kind != "train", ~train_running))
                    .values(status="running", worker=self.id, attempts=Job.attempts + 1, started_at=now(),
                            heartbeat_at=func.current_timestamp(), progress=0.0, finished_at=None,
                            message=f"running on {self.id}")
                    .execution_options(synchronize_session=False)).rowcount == 1
                s.commit()
                if claimed:
                    job = s.get(Job, candidate)
                    s.refresh(job)
                    return Claim(job.id, job.kind, job.attempts, job.model_version, job.requested_by)
        return None

    def _owned(self, claim: Claim):
        return (Job.id == claim.job_id, Job.worker == self.id, Job.attempts == claim.attempt,
                Job.status == "running")

    def _touch(self, claim: Claim, **fields) -> bool:
        """Heartbeat (and set ``fields``) while the job is still this worker's."""
        with self.project.session() as s:
            owned = s.execute(update(Job).where(*self._owned(claim))
                              .values(heartbeat_at=func.current_timestamp(), **fields)
                              .execution_options(synchronize_session=False)).rowcount == 1
            s.commit()
        if not owned:
            claim.lost = True
        return owned

    def _progress(self, claim: Claim, progress: float, message: str | None = None) -> None:
        """Report progress; the job body stops here when the worker is stopping or the job was
        taken from it."""
        if claim.lost:
            raise JobLost
        if self._stopping.is_set():
            raise JobReleased
        if time.monotonic() - claim.reported < 0.5 and progress < 1.0:  # tiny epochs: spare the database
            return
        fields = {"progress": progress, **({"message": message} if message is not None else {})}
        if not self._touch(claim, **fields):
            raise JobLost
        claim.reported = time.monotonic()

    def _beat(self, claim: Claim, done: threading.Event) -> None:
        while not done.wait(self.heartbeat):
            try:
                if not self._touch(claim):
                    return
            except Exception:
                traceback.print_exc()

    def _run(self, claim: Claim) -> None:
        done = threading.Event()
        beat = threading.Thread(target=self._beat, args=(claim, done), name=f"pathoseg-heartbeat-{claim.job_id}",
                                daemon=True)
        beat.start()
        try:
            body: Callable[[Claim], str] = self._train if claim.kind == "train" else self._predict_job
            message = body(claim) + self._retried(claim)
            self._end(claim, status="done", progress=1.0, message=message[:500], finished_at=now())
        except JobLost:
            print(f"pathoseg worker {self.id}: job {claim.job_id} was taken over (no heartbeat in time)", flush=True)
        except JobReleased:
            self._release(claim)
        except Exception as exc:  # a failed job is reported in the UI, never crashes the worker
            traceback.print_exc()
            message = f"{type(exc).__name__}: {exc}"[:450] + self._retried(claim)
            self._end(claim, status="failed", message=message, finished_at=now())
        finally:
            done.set()
            beat.join()

    @staticmethod
    def _retried(claim: Claim) -> str:
        return f" (attempt {claim.attempt} of {MAX_ATTEMPTS}: its first worker died)" if claim.attempt > 1 else ""

    def _end(self, claim: Claim, **fields) -> None:
        with self.project.session() as s:
            s.execute(update(Job).where(*self._owned(claim)).values(**fields)
                      .execution_options(synchronize_session=False))
            s.commit()

    def _release(self, claim: Claim) -> None:
        """Hand the job back to the queue (this attempt does not count)."""
        values = {"status": "queued", "worker": None, "attempts": Job.attempts - 1, "progress": 0.0,
                  "message": f"handed back: worker {self.id} stopped; waiting for a worker"}
        with self.project.session() as s:
            try:
                s.execute(update(Job).where(*self._owned(claim)).values(**values)
                          .execution_options(synchronize_session=False))
                s.commit()
            except IntegrityError:  # one of its kind is queued already
                s.rollback()
                s.execute(update(Job).where(*self._owned(claim)).values(
                    status="failed", finished_at=now(),
                    message=f"worker {self.id} stopped; a queued job of the same kind replaces it")
                    .execution_options(synchronize_session=False))
                s.commit()

    # -- job bodies ------------------------------------------------------------------------
    def _train(self, claim: Claim) -> str:
        """The one retrain round (:func:`pathoseg.engine.rounds.run_round`) on every saved mask;
        the candidate becomes active only when the gate lets it and no admin activated another
        version meanwhile."""
        if claim.model_version is not None:  # an earlier attempt stored its model, then died predicting
            return self._after_training(claim, claim.model_version, None)
        s = self.settings
        device = choose_device(s.device)
        with self.project.session() as session:
            active = self.project.active_model(session)
            models_before = session.scalar(select(func.count(ModelVersion.id))) or 0
        base_version = active.version if active is not None else None  # the rollback rule compares with this
        self._progress(claim, 0.0, "reading the saved masks")
        labelled = labelled_images(self.project)
        if not labelled:
            raise ValueError("no corrected or imported masks to train on yet")
        base = load_checkpoint(self._model_file(base_version)) if base_version is not None else None
        notes = []
        if base is not None and base.mpp is None and base.trained_on is None and checkpoint_mpp(base) is None:
            notes.append(f"model v{base_version} does not record the µm/px it was trained at, so its retrains "
                         "keep it unknown")

        def progress(done: float, message: str) -> None:
            self._progress(claim, 0.8 * done, message)

        outcome = run_round(base, labelled, s.round, device, models_before, self._cache, progress,
                            mpp=None if base is not None else project_mpp(self.project),
                            base_tallies=self._tallies.get(base_version))
        validation = [i for i in labelled if i.name in set(outcome.validation)]
        digest = validation_digest(validation)
        self._progress(claim, 0.85, "storing the model")

        def still_mine(session, version):
            owned = session.execute(update(Job).where(*self._owned(claim))
                                    .values(model_version=version, heartbeat_at=func.current_timestamp())
                                    .execution_options(synchronize_session=False)).rowcount == 1
            if not owned:
                raise JobLost

        scores = {**outcome.candidate_scores, "digest": digest} if outcome.candidate_scores else None
        version, activated = store_model(self.project, outcome.candidate, val_iou=None,
                                         trained_on=outcome.candidate.trained_on,
                                         only_if_active=base_version if outcome.activate else "never",
                                         in_transaction=still_mine, scores=scores, note=outcome.reason,
                                         trained_by=claim.requested_by)
        if outcome.base_scores is not None and base_version is not None:
            store_scores(self.project, base_version, outcome.base_scores, digest)
        if activated:
            self._tallies = {version: outcome.candidate_tallies}
        message = self._after_training(claim, version, outcome.reason if outcome.activate else None,
                                       refused=None if outcome.activate else outcome.reason)
        if outcome.activate and activated:
            score_stale_versions(self.project, validation, digest, device)
        return "; ".join([message, *notes])

    def _after_training(self, claim: Claim, version: int, why: str | None, refused: str | None = None) -> str:
        with self.project.session() as session:
            active = self.project.active_model(session)
        if refused is not None:
            return (f"model v{version} stored but not activated: {refused} (an admin can still activate it "
                    "from the model menu)")
        if active is None or active.version != version:
            other = f"v{active.version}" if active is not None else "no version"
            if why is None:  # a retry after the model was stored
                return f"model v{version} was stored by an earlier attempt; not active ({other} is)"
            return (f"model v{version} stored but not activated: {other} was made active while it trained "
                    "(activate it from the model menu to use it)")
        self._progress(claim, 0.9, f"model v{version} active; predicting")
        self._predict_all(claim, version)
        return f"model v{version} active ({why}); predictions refreshed" if why else \
            f"model v{version} active; predictions refreshed"

    def _predict_job(self, claim: Claim) -> str:
        with self.project.session() as session:
            active = self.project.active_model(session)
        if active is None:
            raise ValueError("no model yet: correct a few images and retrain first")
        predicted = self._predict_all(claim, active.version)
        return (f"predictions of model v{active.version} refreshed: {predicted} image{'s' * (predicted != 1)} "
                "predicted, the others kept (their uncertainty recomputed)")

    def _model_file(self, version: int):
        path = self.project.model_path(version)
        if not path.is_file():  # committed, not renamed into place yet (or its process died there)
            self.project.settle_staged_files()
        return path

    def _predict_all(self, claim: Claim, version: int) -> int:
        """The model's review maps for every image it has not predicted yet, every image's
        uncertainty (:func:`pathoseg.server.services.predictions.predict_images`)."""
        return predict_images(self.project, version, self._model_file(version), self.settings,
                              lambda done: self._progress(claim, 0.9 + 0.1 * done))
