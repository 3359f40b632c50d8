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
"""

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
from datetime import timedelta

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from pathoseg.data.images import read_image, write_label_png
from pathoseg.data.resolution import checkpoint_mpp
from pathoseg.engine.backends import BackendConfig, load_backend
from pathoseg.engine.checkpoint import load_checkpoint
from pathoseg.engine.device import choose_device
from pathoseg.engine.rounds import ScaledCache, Tallies, review_maps, run_round, validation_digest
from pathoseg.metrics.uncertainty import mean_entropy
from pathoseg.server.config import DEAD_AFTER, WorkerSettings
from pathoseg.server.project import project_mpp, store_model
from pathoseg.server.storage import Image, Job, Mask, ModelVersion, Project, aware, db_now, now
from pathoseg.server.validation import labelled_images, score_stale_versions, store_scores

__all__ = [
    "DEAD_AFTER",
    "KINDS",
    "MAX_ATTEMPTS",
    "Worker",
    "WorkerSettings",
    "corrections_since_last_model",
    "enqueue",
    "reap_dead_jobs",
    "wait_for",
]

KINDS = ("train", "predict")
MAX_ATTEMPTS = 2  # a job whose worker dies this many times fails for good
FINISHED = ("done", "failed")


class JobLost(Exception):
    """The job is no longer this worker's: it was declared dead (no heartbeat) and requeued."""


class JobReleased(Exception):
    """This worker is stopping: the job goes back to the queue."""


# -- the queue ---------------------------------------------------------------------------------
def enqueue(project: Project, kind: str, automatic: bool = False) -> int | None:
    """Queue a job of ``kind`` and return its id; when one of that kind is queued already,
    return that one. ``automatic`` (a retrain after saves): queue nothing and return None while
    a train job is queued or running."""
    if kind not in KINDS:
        raise ValueError(f"job kind must be one of {', '.join(KINDS)}, not {kind!r:.40}")
    for _ in range(10):
        with project.session() as s:
            pending = select(Job.id).where(Job.kind == kind, Job.status.in_(("queued", "running") if automatic
                                                                            else ("queued",)))
            if (existing := s.scalars(pending.order_by(Job.id)).first()) is not None:
                return None if automatic else existing
            job = Job(kind=kind, message="waiting for a worker")
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


# -- workers -----------------------------------------------------------------------------------
@dataclass
class Claim:
    """A job this worker claimed: its row names ``worker`` and ``attempt``."""

    job_id: int
    kind: str
    attempt: int
    model_version: int | None  # a train job's model, stored by an earlier attempt
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
    def submit(self, kind: str) -> int:
        job_id = enqueue(self.project, kind)
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
                    return Claim(job.id, job.kind, job.attempts, job.model_version)
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
        digest = validation_digest([i for i in labelled if i.name in set(outcome.validation)])
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
                                         in_transaction=still_mine, scores=scores, note=outcome.reason)
        if outcome.base_scores is not None and base_version is not None:
            store_scores(self.project, base_version, outcome.base_scores, digest)
        if activated:
            self._tallies = {version: outcome.candidate_tallies}
        message = self._after_training(claim, version, outcome.reason if outcome.activate else None,
                                       refused=None if outcome.activate else outcome.reason)
        if outcome.activate and activated:
            validation = [i for i in labelled if i.name in set(outcome.validation)]
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
        self._predict_all(claim, active.version)
        return f"predictions of model v{active.version} refreshed"

    def _model_file(self, version: int):
        path = self.project.model_path(version)
        if not path.is_file():  # committed, not renamed into place yet (or its process died there)
            self.project.settle_staged_files()
        return path

    def _predict_all(self, claim: Claim, version: int) -> None:
        """The model's review maps (:func:`pathoseg.engine.rounds.review_maps`, the same the
        HITL study plans from) for every image."""
        with self.project.session() as session:
            names = [i.name for i in session.scalars(select(Image).order_by(Image.id))]
        device = choose_device(self.settings.device)
        model, ckpt = load_backend(self._model_file(version), BackendConfig(self.settings.predict_backend), device)
        for k, name in enumerate(names):
            maps = review_maps(model, ckpt, read_image(self.project.image_path(name)), device)
            write_label_png(self.project.prediction_path(version, name), maps.probs)
            write_label_png(self.project.instances_path(version, name), maps.glands)
            with self.project.session() as session:
                image = session.scalars(select(Image).where(Image.name == name)).one()
                image.uncertainty = mean_entropy(maps.gland_probs)
                if image.status == "new":
                    image.status = "predicted"
                session.commit()
            self._progress(claim, 0.9 + 0.1 * (k + 1) / len(names))
