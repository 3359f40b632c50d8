"""The job queue in the database (#11): workers claim jobs atomically, heartbeat them, and a
job whose worker died is retried once; one queued job per kind; saves made during a retrain
count toward the next; a retrain does not override a rollback made while it ran; and real
``pathoseg serve`` / ``pathoseg worker`` processes killed with SIGKILL lose nothing."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, text, update

from pathoseg.cli import build_parser, main, server_config
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.engine import rounds
from pathoseg.engine.checkpoint import Checkpoint, load_checkpoint
from pathoseg.models import ModelConfig, build_model
from pathoseg.server.app import ServerConfig, create_app
from pathoseg.server.services import validation
from pathoseg.server.services.files import as_labels, read_labels
from pathoseg.server.services.images import add_image
from pathoseg.server.services.masks import save_mask
from pathoseg.server.services.models import register_model
from pathoseg.server.services.queue import MAX_ATTEMPTS, corrections_since_last_model, enqueue, reap_dead_jobs
from pathoseg.server.services.worker import Worker
from pathoseg.server.storage import STAGED, Job, Mask, ModelVersion, Project, db_now
from pathoseg.server.storage import Image as ImageRow
from tiny import create_user, tiny_worker

CFG = SyntheticConfig(size=(64, 64))
TINY = tiny_worker(first_steps=2, warm_steps=2, batch_size=2)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained lite0 checkpoint to register as model versions."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    model = build_model(ModelConfig("lite0", weights="none"))
    return Checkpoint.of(model, 1.0).save(path)


@pytest.fixture
def project(tmp_path, db_url):  # on SQLite and on PostgreSQL
    project = Project(tmp_path / "proj", db_url, create=True)
    for i in range(4):
        image, labels = synthetic_sample(200 + i, CFG)
        add_image(project, f"img{i}", image, labels if i < 3 else None)
    yield project
    project.engine.dispose()


def job(project: Project, job_id: int) -> Job:
    with project.session() as s:
        return s.get(Job, job_id)


def models(project: Project) -> dict[int, bool]:
    with project.session() as s:
        return {m.version: m.active for m in s.scalars(select(ModelVersion).order_by(ModelVersion.version))}


def age_heartbeat(project: Project, job_id: int, seconds: float = 3600) -> None:
    """As if the job's worker had stopped heartbeating ``seconds`` ago."""
    with project.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=db_now(s) - timedelta(seconds=seconds)))
        s.commit()


def fake_fit(during=None):
    """``fit`` without the training: runs ``during()`` (what happens while a retrain runs), then
    reports one epoch."""
    def fit(model, train, val, cfg, device, on_epoch=None, **_):
        if during is not None:
            during()
        if on_epoch is not None:
            on_epoch(SimpleNamespace(epoch=cfg.epochs), model, None, None)
    return fit


# -- the queue ------------------------------------------------------------------------------------
def test_claims_are_atomic(project):
    ids = [enqueue(project, "predict"), enqueue(project, "train")]
    start = threading.Barrier(6)
    claims: list[tuple[str, int]] = []

    errors: list[Exception] = []

    def claim(k: int) -> None:
        worker = Worker(project, TINY, name=f"w{k}")
        start.wait()
        try:
            while (c := worker.claim()) is not None:
                claims.append((worker.id, c.job_id))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(j for _, j in claims) == sorted(ids)  # each job claimed exactly once
    for who, job_id in claims:
        row = job(project, job_id)
        assert (row.status, row.worker, row.attempts) == ("running", who, 1)
        assert row.heartbeat_at is not None and row.started_at is not None


def test_one_queued_job_per_kind_and_one_retrain_at_a_time(project):
    results: list[int | Exception] = []

    def ask() -> None:
        try:
            results.append(enqueue(project, "train"))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and isinstance(results[0], int)  # six at the same moment: one queued job
    first = results[0]
    assert enqueue(project, "train", automatic=True) is None  # queued: no automatic one
    assert enqueue(project, "predict") != first  # another kind queues beside it
    a, b = Worker(project, TINY, name="a"), Worker(project, TINY, name="b")
    assert a.claim(first).job_id == first
    assert enqueue(project, "train", automatic=True) is None  # running: no automatic one either
    second = enqueue(project, "train")  # asked for by hand while one runs: queued behind it
    assert second not in (None, first) and enqueue(project, "train") == second
    assert b.claim(second) is None  # retrains run one at a time, also on other workers
    with pytest.raises(ValueError, match="job kind"):
        enqueue(project, "mine bitcoin")


def test_a_dead_workers_job_is_retried_once_then_fails_for_good(project):
    job_id = enqueue(project, "predict")
    first = Worker(project, TINY, timeout=60, name="first")
    claim = first.claim()
    assert reap_dead_jobs(project, 60) == []  # heartbeat fresh: alive
    age_heartbeat(project, job_id)
    assert reap_dead_jobs(project, 60) == [job_id]
    row = job(project, job_id)
    assert (row.status, row.attempts, row.worker) == ("queued", 1, None)
    assert "retrying" in row.message and "first" in row.message and f"attempt 1 of {MAX_ATTEMPTS}" in row.message
    assert not first._touch(claim) and claim.lost  # the dead worker cannot write to it any more
    second = Worker(project, TINY, timeout=60, name="second")
    assert second.claim().job_id == job_id
    age_heartbeat(project, job_id)
    assert reap_dead_jobs(project, 60) == [job_id]
    row = job(project, job_id)
    assert row.status == "failed" and row.attempts == 2 and row.finished_at is not None
    assert row.message.startswith("failed for good") and "second" in row.message
    assert reap_dead_jobs(project, 60) == []


def test_a_dead_job_whose_kind_is_queued_again_is_replaced(project):
    old = enqueue(project, "train")
    Worker(project, TINY, name="gone").claim()
    new = enqueue(project, "train")
    age_heartbeat(project, old)
    assert reap_dead_jobs(project, 60) == [old]
    assert job(project, old).status == "failed" and f"#{new}" in job(project, old).message
    assert job(project, new).status == "queued"


def test_heartbeats_keep_a_long_job_alive(project, checkpoint, monkeypatch):
    register_model(project, checkpoint)
    seen = {}

    def slow():
        time.sleep(3.0)  # longer than the timeout, without a single progress report
        seen["reaped"] = reap_dead_jobs(project, 2.0)

    monkeypatch.setattr(rounds, "fit", fake_fit(slow))
    job_id = enqueue(project, "train")
    Worker(project, TINY, timeout=2.0).run_once()
    assert seen["reaped"] == [] and job(project, job_id).status == "done"
    assert job(project, job_id).attempts == 1


def test_a_stopping_worker_hands_its_job_back(project, checkpoint, monkeypatch):
    register_model(project, checkpoint)
    worker = Worker(project, TINY)
    monkeypatch.setattr(rounds, "fit", fake_fit(lambda: worker.stop(timeout=0)))
    job_id = enqueue(project, "train")
    worker.run_once()
    row = job(project, job_id)
    assert (row.status, row.attempts, row.worker) == ("queued", 0, None) and "handed back" in row.message
    monkeypatch.setattr(rounds, "fit", fake_fit())
    Worker(project, TINY).run_once()
    assert job(project, job_id).status == "done" and job(project, job_id).attempts == 1


# -- retrains and their data --------------------------------------------------------------------
def test_a_retrain_does_not_override_a_rollback_made_while_it_ran(project, checkpoint, monkeypatch):
    register_model(project, checkpoint)
    register_model(project, checkpoint)
    assert models(project) == {1: False, 2: True}
    monkeypatch.setattr(rounds, "fit", fake_fit(lambda: project.activate_model(1)))  # an admin rolls back
    job_id = enqueue(project, "train")
    Worker(project, TINY).run_once()
    row = job(project, job_id)
    assert row.status == "done" and row.model_version == 3
    assert "stored but not activated: v1 was made active" in row.message
    assert models(project) == {1: True, 2: False, 3: False}  # the rollback stands
    assert project.model_path(3).is_file() and not project.prediction_path(3, "img0").exists()
    # without a rollback meanwhile, the new version becomes active and predicts
    monkeypatch.setattr(rounds, "fit", fake_fit())
    job_id = enqueue(project, "train")
    Worker(project, TINY).run_once()
    assert job(project, job_id).message.startswith("model v4") and "active" in job(project, job_id).message
    assert models(project) == {1: False, 2: False, 3: False, 4: True}
    assert all(project.prediction_path(4, f"img{i}").is_file() for i in range(4))
    assert load_checkpoint(project.model_path(4)).trained_on == [[f"img{i}", 1] for i in range(3)]


def test_a_first_model_is_not_activated_over_one_imported_meanwhile(project, checkpoint, monkeypatch):
    monkeypatch.setattr(rounds, "fit", fake_fit(lambda: register_model(project, checkpoint)))
    job_id = enqueue(project, "train")
    Worker(project, TINY).run_once()
    assert models(project) == {1: True, 2: False} and "v1 was made active" in job(project, job_id).message


def test_a_retry_after_the_model_was_stored_does_not_train_again(project, checkpoint, monkeypatch):
    register_model(project, checkpoint)
    with project.session() as s:  # a train job that stored v1, then lost its worker while predicting
        s.add(Job(kind="train", status="queued", attempts=1, model_version=1))
        s.commit()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(rounds, "fit", no_training)
    job_id = Worker(project, TINY).run_once()
    row = job(project, job_id)
    assert row.status == "done" and row.attempts == 2 and "attempt 2 of 2" in row.message
    assert project.prediction_path(1, "img3").is_file()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_later_retrains_are_warm_with_frozen_stages_and_reread_only_new_masks(project, checkpoint, monkeypatch):
    register_model(project, checkpoint)  # v1 active: the next retrain is warm-started from it
    reads, seen = [], []
    monkeypatch.setattr(validation, "read_labels", lambda path: reads.append(path) or read_labels(path))
    real_fit = rounds.fit

    def fit(model, train, val, cfg, device, **kwargs):
        seen.append((cfg.lr, cfg.epochs, [n for n, p in model.named_parameters() if not p.requires_grad]))
        return real_fit(model, train, val, cfg, device, **kwargs)

    monkeypatch.setattr(rounds, "fit", fit)
    settings = tiny_worker(first_steps=50, warm_steps=3, lr_scale=0.25, freeze_stages=2, batch_size=3)
    worker = Worker(project, settings)
    worker.submit("train")
    worker.run_once()
    lr, epochs, frozen = seen[0]
    assert lr == pytest.approx(2e-3 * 0.25) and epochs == 3  # 3 steps of 3 crops over 3 labelled images
    assert "net.encoder.model.conv_stem.weight" in frozen and not any("blocks.2." in n for n in frozen)
    v1 = load_checkpoint(project.model_path(1)).state_dict
    v2 = load_checkpoint(project.model_path(2)).state_dict
    assert v1["net.encoder.model.conv_stem.weight"].equal(v2["net.encoder.model.conv_stem.weight"])
    assert not v1["net.segmentation_head.0.weight"].equal(v2["net.segmentation_head.0.weight"])
    assert len(reads) == 3
    worker.submit("train")  # nothing new saved: the resized images and masks are reused
    worker.run_once()
    assert len(reads) == 3 and len(seen) == 2


def test_saves_made_during_a_retrain_count_toward_the_next(tmp_path, db_url, checkpoint, monkeypatch):
    project = Project(tmp_path / "proj", db_url, create=True)
    for i in range(4):
        image, labels = synthetic_sample(200 + i, CFG)
        add_image(project, f"img{i}", image, labels if i < 3 else None)
    token = create_user(project, "ana", admin=True)
    register_model(project, checkpoint)
    h = {"Authorization": f"Bearer {token}"}
    labels = synthetic_sample(300, CFG)[1]
    save_mask(project, 4, labels, 0, "ana")  # a correction of img3 before the retrain
    assert corrections_since_last_model(project) == 1
    # a save while the retrain runs: after it read its data, before its model exists
    monkeypatch.setattr(rounds, "fit", fake_fit(lambda: save_mask(project, 1, labels, 1, "ben")))
    Worker(project, TINY).run_once(enqueue(project, "train"))
    with project.session() as s:
        trained = s.scalars(select(ModelVersion).where(ModelVersion.version == 2)).one().trained_on
    assert ["img3", 1] in trained and ["img0", 1] in trained  # the mask versions it read
    assert corrections_since_last_model(project) == 1  # img0's save during the retrain
    cfg = ServerConfig(str(project.root), db_url, retrain_every=2, train=TINY, worker=False)
    with TestClient(create_app(cfg)) as client:
        body = {"png_base64": base64.b64encode(png(labels)).decode(), "base_version": 0, "kind": "labels"}
        assert client.put("/api/images/2/mask", headers=h, json={**body, "base_version": 1}).status_code == 200
        queued = client.get("/api/jobs", headers=h).json()[0]
        assert queued["kind"] == "train" and queued["status"] == "queued"  # 2 corrections since the snapshot
    # a rollback to v1 (which trained on none of them) counts every correction again
    project.activate_model(1)
    assert corrections_since_last_model(project) == 3
    project.engine.dispose()


def png(labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# -- the API and the server's worker --------------------------------------------------------------
def test_the_api_returns_the_queued_job_and_queues_one_automatic_retrain(project):
    token = create_user(project, "ana", admin=True)
    h = {"Authorization": f"Bearer {token}"}
    cfg = ServerConfig(str(project.root), project.db_url, retrain_every=1, train=TINY, worker=False)
    labels = synthetic_sample(300, CFG)[1]
    with TestClient(create_app(cfg)) as client:
        def save(image_id: int, base: int) -> None:
            body = {"png_base64": base64.b64encode(png(labels)).decode(), "base_version": base, "kind": "labels"}
            assert client.put(f"/api/images/{image_id}/mask", headers=h, json=body).status_code == 200

        def trains() -> list[dict]:
            return [j for j in client.get("/api/jobs", headers=h).json() if j["kind"] == "train"]

        save(4, 0)
        (auto,) = trains()
        assert auto["status"] == "queued" and auto["attempts"] == 0
        save(4, 1)  # queued already: no second automatic retrain
        assert [j["id"] for j in trains()] == [auto["id"]]
        assert client.post("/api/train", headers=h).json()["id"] == auto["id"]  # by hand: the queued one
        Worker(project, TINY, name="gpu-box").claim()
        save(4, 2)  # running: still no second one
        running = client.get(f"/api/jobs/{auto['id']}", headers=h).json()
        assert [j["id"] for j in trains()] == [auto["id"]] and running["status"] == "running"
        assert running["worker"] == "gpu-box" and running["attempts"] == 1 and running["heartbeat_at"]
        manual = client.post("/api/train", headers=h).json()  # by hand while one runs: queued behind it
        assert manual["id"] != auto["id"] and manual["status"] == "queued"
        assert client.post("/api/train", headers=h).json()["id"] == manual["id"]


def test_without_a_worker_jobs_wait_for_an_external_one(project, checkpoint):
    register_model(project, checkpoint)
    token = create_user(project, "ana", admin=True)
    h = {"Authorization": f"Bearer {token}"}
    cfg = ServerConfig(str(project.root), project.db_url, retrain_every=0, train=TINY, worker=False)
    app = create_app(cfg)
    with TestClient(app) as client:
        queued = client.post("/api/predict", headers=h).json()
        time.sleep(1.5)
        assert client.get(f"/api/jobs/{queued['id']}", headers=h).json()["status"] == "queued"
        assert not app.state.worker.running
        assert Worker(project, TINY, name="elsewhere").run_once() == queued["id"]
        done = client.get(f"/api/jobs/{queued['id']}", headers=h).json()
        assert done["status"] == "done" and done["worker"] == "elsewhere" and done["finished_at"]


def test_the_servers_worker_runs_jobs_left_by_a_stopped_server(project, checkpoint):
    register_model(project, checkpoint)
    with project.session() as s:  # a server killed mid-job (no heartbeat) and a job it never started
        s.add_all([Job(kind="predict", status="running", attempts=1, worker="old:1:x"),
                   Job(kind="train", status="queued")])
        s.commit()
    token = create_user(project, "ana", admin=True)
    h = {"Authorization": f"Bearer {token}"}
    app = create_app(ServerConfig(str(project.root), project.db_url, retrain_every=0, train=TINY))
    with TestClient(app) as client:
        assert app.state.worker.running
        for job_id in (1, 2):
            app.state.worker.wait(job_id, timeout=120)
        rows = {j["id"]: j for j in client.get("/api/jobs", headers=h).json()}
        assert rows[1]["status"] == "done" and rows[1]["attempts"] == 2
        assert rows[2]["status"] == "done" and rows[2]["model_version"] == 2
        pred = client.post("/api/predict", headers=h).json()  # the worker is woken, not polled for
        assert app.state.worker.wait(pred["id"], timeout=60).status == "done"
    assert not app.state.worker.running  # the lifespan's end stopped it


def test_concurrent_activations_leave_one_active_version(project, checkpoint):
    for _ in range(3):
        register_model(project, checkpoint)
    start = threading.Barrier(6)
    results: list[bool | Exception] = []

    def flip(k: int) -> None:
        start.wait()
        for i in range(5):
            try:
                results.append(project.activate_model(1 + (k + i) % 3))
            except Exception as exc:
                results.append(exc)

    threads = [threading.Thread(target=flip, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 30
    assert sum(models(project).values()) == 1
    assert not project.activate_model(9)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_databases_from_before_the_queue_get_its_columns(project):
    with project.session() as s:
        s.add_all([Job(kind="predict"), Job(kind="train", status="done")])
        s.commit()
    with project.engine.begin() as c:  # as an older pathoseg made it: no queue columns, no index
        c.execute(text("DROP TABLE alembic_version"))  # before Alembic
        c.execute(text("DROP INDEX uq_jobs_one_queued"))
        c.execute(text("INSERT INTO jobs (kind, status, progress, message, created_at) "
                       "VALUES ('predict', 'queued', 0, '', '2025-01-01 00:00:00')"))
        for column in ("attempts", "worker", "started_at", "heartbeat_at", "model_version"):
            c.execute(text(f"ALTER TABLE jobs DROP COLUMN {column}"))
    project.engine.dispose()
    reopened = Project(project.root)
    rows = {j.id: j for j in reopened.session().scalars(select(Job))}
    assert rows[1].status == "queued" and rows[1].attempts == 0
    assert rows[3].status == "failed" and "duplicate of queued job #1" in rows[3].message
    assert enqueue(reopened, "predict") == 1
    reopened.engine.dispose()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_committed_model_whose_file_was_not_renamed_is_settled(project, checkpoint):
    register_model(project, checkpoint)
    final = project.model_path(1)
    staged = project.staged_path(final)
    os.replace(final, staged)  # killed between the commit and the rename
    junk = final.parent / ".v2.pt.abc123.pt"  # a checkpoint's own half-written file, long ago
    junk.write_bytes(b"half")
    os.utime(junk, (time.time() - 3600, time.time() - 3600))
    project.engine.dispose()
    Project(project.root).engine.dispose()
    assert final.is_file() and not staged.exists() and not junk.exists()


# -- the command line -----------------------------------------------------------------------------
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_worker_command_and_serve_options(project, checkpoint, capsys):
    register_model(project, checkpoint)
    job_id = enqueue(project, "predict")
    args = ["--project", str(project.root), "--device", "cpu", "--steps", "2", "--crop", "64", "--scale", "1"]
    assert main(["worker", *args, "--once", "--job-timeout", "5"]) == 0
    assert "waiting for jobs" in capsys.readouterr().out
    assert job(project, job_id).status == "done"
    cfg = server_config(build_parser().parse_args(["serve", *args, "--no-worker", "--job-timeout", "7"]))
    assert cfg.worker is False and cfg.job_timeout == 7 and cfg.train.round.first_steps == 2
    assert server_config(build_parser().parse_args(["serve", "--project", "x"])).worker is True


# -- real processes killed with SIGKILL (item 9) --------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pathoseg(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pathoseg.cli", *args], cwd=ROOT, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (result := check()):
            return result
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
    raise AssertionError(f"{what} did not happen in {timeout} s\n{tail}")


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def check_masks_agree_with_the_database(project: Project) -> None:
    """Every mask row has its readable file, every mask file its row, and every image's
    current version is its newest row."""
    with project.session() as s:
        rows = {(m.image.name, m.version) for m in s.scalars(select(Mask))}
        images = {i.name: i.mask_version for i in s.scalars(select(ImageRow))}
    for name, version in rows:
        assert read_labels(project.mask_path(name, version)).shape == (64, 64), (name, version)
    files = {(p.parent.name, int(p.stem[1:])) for p in (project.root / "masks").glob("*/v*.png")}
    assert files == rows
    for name, current in images.items():
        assert current == max([v for n, v in rows if n == name], default=0), name


def glands(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((64, 64), np.int32)
    for k in range(1, 4):
        y, x = rng.integers(0, 48, 2)
        labels[y:y + 12, x:x + 12] = k
    return labels


@pytest.mark.slow
def test_kill_9_during_saves_loses_no_committed_mask(tmp_path):
    project = Project(tmp_path / "proj", create=True)
    for i in range(8):
        add_image(project, f"img{i}", synthetic_sample(400 + i, CFG)[0])
    token = create_user(project, "ana")
    project.engine.dispose()
    port, log = free_port(), tmp_path / "serve.log"
    serve = ["serve", "--project", str(project.root), "--port", str(port), "--retrain-every", "0",
             "--device", "cpu", "--job-timeout", "5"]
    h = {"Authorization": f"Bearer {token}"}
    import httpx

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/me", headers=h, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    server = pathoseg(*serve, log=log)
    try:
        until(ready, 60, "the server's start", server, log)
        saved: dict[tuple[int, int], np.ndarray] = {}  # (image id, version) -> what a 200 answered for
        refused: list[str] = []
        stop = threading.Event()

        def annotate(image_ids: list[int]) -> None:
            versions = dict.fromkeys(image_ids, 0)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=h, timeout=10) as client:
                while not stop.is_set():
                    for image_id in image_ids:
                        labels = glands(image_id * 1000 + versions[image_id])
                        body = {"png_base64": base64.b64encode(png(labels)).decode(),
                                "base_version": versions[image_id], "kind": "labels"}
                        try:
                            r = client.put(f"/api/images/{image_id}/mask", json=body)
                        except httpx.HTTPError:
                            return  # the server is gone
                        if r.status_code != 200:
                            refused.append(f"{r.status_code} {r.text}")
                            return
                        versions[image_id] += 1
                        saved[image_id, versions[image_id]] = labels

        threads = [threading.Thread(target=annotate, args=([k, k + 4],)) for k in range(1, 5)]
        for t in threads:
            t.start()
        until(lambda: len(saved) >= 30, 60, "30 saves", server, log)
        kill9(server)  # mid-save: four annotators are saving
        stop.set()
        for t in threads:
            t.join(15)
        assert not refused
        server = pathoseg(*serve, log=log)  # the restart settles what the kill left
        until(ready, 60, "the server's restart", server, log)
        with sqlite3.connect(project.root / "pathoseg.db") as db:  # before anything else opens the project
            committed = set(db.execute("SELECT images.name, masks.version FROM masks JOIN images "
                                       "ON images.id = masks.image_id").fetchall())
        for tmp in (project.root / "masks").glob("*/.*.tmp"):  # only saves that never committed are left
            assert (tmp.parent.name, int(STAGED.match(tmp.name)["final"][1:-4])) not in committed, tmp
        reopened = Project(project.root)
        with reopened.session() as s:
            names = {i.id: i.name for i in s.scalars(select(ImageRow))}
        for (image_id, version), labels in saved.items():  # every answered save is there, as sent
            assert np.array_equal(read_labels(reopened.mask_path(names[image_id], version)), as_labels(labels))
        check_masks_agree_with_the_database(reopened)
        # and work goes on from where the database says each image is
        with reopened.session() as s:
            current = s.get(ImageRow, 1).mask_version
        body = {"png_base64": base64.b64encode(png(glands(7))).decode(), "base_version": current, "kind": "labels"}
        r = httpx.put(f"http://127.0.0.1:{port}/api/images/1/mask", headers=h, json=body, timeout=10)
        assert r.status_code == 200 and r.json()["mask_version"] == current + 1
        reopened.engine.dispose()
    finally:
        server.kill()
        server.wait(10)


@pytest.mark.slow
def test_kill_9_during_a_retrain_retries_it_in_the_restarted_worker(tmp_path):
    project = Project(tmp_path / "proj", create=True)
    for i in range(4):
        image, labels = synthetic_sample(500 + i, CFG)
        add_image(project, f"img{i}", image, labels if i < 3 else None)
    job_id = enqueue(project, "train")
    log = tmp_path / "worker.log"
    common = ["worker", "--project", str(project.root), "--device", "cpu", "--crop", "64", "--scale", "1",
              "--batch-size", "2", "--job-timeout", "4", "--poll", "0.2"]
    worker = pathoseg(*common, "--steps", "5000", log=log)  # a long retrain, killed mid-way
    try:
        until(lambda: job(project, job_id).status == "running" and job(project, job_id).progress > 0, 60,
              "the retrain's first epoch", worker, log)
        kill9(worker)
        row = job(project, job_id)
        assert (row.status, row.attempts) == ("running", 1) and row.message.startswith("epoch")
        assert models(project) == {}
        worker = pathoseg(*common, "--steps", "4", log=log)  # restarted: requeues it after 4 s, runs it
        until(lambda: job(project, job_id).status in ("done", "failed"), 90, "the retried retrain", worker, log)
        row = job(project, job_id)
        assert row.status == "done" and row.attempts == 2, row.message
        assert "attempt 2 of 2" in row.message and row.model_version == 1
        assert models(project) == {1: True}
        assert load_checkpoint(project.model_path(1)).trained_on == [[f"img{i}", 1] for i in range(3)]
        assert all(project.prediction_path(1, f"img{i}").is_file() for i in range(4))
        assert not list((project.root / "models").glob(".*"))  # no staged file left
        worker.send_signal(signal.SIGTERM)  # a clean stop
        assert worker.wait(30) == 0
    finally:
        worker.kill()
        worker.wait(10)
        project.engine.dispose()
