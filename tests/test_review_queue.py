"""The review queue a pathologist would choose (#20): images that cannot hold a gland are
flagged and sorted last, every upload is predicted without asking, a prediction job costs only
the images not predicted yet, each model version says who asked for it, and a large image's
prediction stays in bounded memory."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, update

from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.engine import rounds
from pathoseg.engine.checkpoint import Checkpoint
from pathoseg.engine.instances import decode_instances
from pathoseg.engine.predict import PredictConfig, predict_logits, predict_maps
from pathoseg.metrics.uncertainty import mean_entropy
from pathoseg.models import ModelConfig, build_model
from pathoseg.server.app import ServerConfig, create_app
from pathoseg.server.services.images import add_image
from pathoseg.server.services.models import register_model
from pathoseg.server.services.worker import Worker
from pathoseg.server.storage import Image as ImageRow
from pathoseg.server.storage import Job, Project
from pathoseg.server.vocabulary import MIN_IMAGE_SIDE
from tiny import HEAD_BIAS, create_user, tiny_worker, untrained_checkpoint

CFG = SyntheticConfig(size=(64, 64))
TINY = tiny_worker(first_steps=2, warm_steps=2, batch_size=2)
ROOT = Path(__file__).resolve().parents[1]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def lab(tmp_path):
    """A project of three labelled synthetic images and an app without its own worker thread
    (the tests run the worker when they want): (client, admin headers, project, worker)."""
    project = Project(tmp_path / "lab", create=True)
    for i in range(3):
        image, labels = synthetic_sample(500 + i, CFG)
        add_image(project, f"img{i}", image, labels)
    h = {"Authorization": f"Bearer {create_user(project, 'ana', admin=True)}"}
    app = create_app(ServerConfig(str(project.root), retrain_every=0, train=TINY, worker=False))
    with TestClient(app) as client:
        yield client, h, project, Worker(project, TINY)
    project.engine.dispose()


def _upload(client: TestClient, h: dict, name: str, array: np.ndarray) -> dict:
    r = client.post("/api/images", headers=h, files={"file": (f"{name}.png", _png(array), "image/png")})
    assert r.status_code == 201, r.text
    return r.json()


def _set_uncertainty(project: Project, values: dict[str, float | None]) -> None:
    """Stored uncertainties; None: none, from no model (as before migration 0005)."""
    with project.session() as s:
        for name, value in values.items():
            scored = {} if value is not None else {"uncertainty_version": None}
            s.execute(update(ImageRow).where(ImageRow.name == name).values(uncertainty=value, **scored))
        s.commit()


def _jobs(project: Project) -> list[Job]:
    with project.session() as s:
        return list(s.scalars(select(Job).order_by(Job.id)))


# -- flags ----------------------------------------------------------------------------------------
def test_images_that_cannot_hold_a_gland_are_flagged_and_sorted_last_in_every_order(lab):
    client, h, project, _ = lab
    tiny = _upload(client, h, "a_tiny", synthetic_sample(1, CFG)[0][:10, :10])
    white = _upload(client, h, "b_white", np.full((512, 512, 3), 255, np.uint8))
    normal = _upload(client, h, "c_normal", synthetic_sample(2, SyntheticConfig(size=(512, 512)))[0])
    assert (tiny["flag"], white["flag"], normal["flag"]) == ("too small", "no tissue", None)
    # the flagged ones are the most uncertain and first by name: still last
    _set_uncertainty(project, {"a_tiny": 0.9, "b_white": 0.8, "c_normal": 0.1, "img0": 0.2, "img1": 0.3,
                               "img2": 0.4})
    for order in ("uncertainty", "name", "random"):
        names = [i["name"] for i in client.get(f"/api/images?order={order}", headers=h).json()]
        assert set(names[-2:]) == {"a_tiny", "b_white"}, (order, names)
        if order == "uncertainty":
            assert names == ["c_normal", "img2", "img1", "img0", "a_tiny", "b_white"]  # then the labelled ones
        if order == "name":
            assert names == ["c_normal", "img0", "img1", "img2", "a_tiny", "b_white"]
    vocabulary = client.get("/api/vocabulary", headers=h).json()
    assert vocabulary["image_flags"] == ["too small", "no tissue"]
    assert vocabulary["min_image_side"] == MIN_IMAGE_SIDE and 0 < vocabulary["min_tissue_share"] < 1
    # just wide enough is not too small
    edge = _upload(client, h, "edge", synthetic_sample(3, SyntheticConfig(size=(MIN_IMAGE_SIDE, 96)))[0])
    assert edge["flag"] is None


# -- uploads are predicted ------------------------------------------------------------------------
def test_an_upload_is_predicted_by_the_worker_without_asking(lab, tmp_path):
    client, h, project, worker = lab
    image = synthetic_sample(7, CFG)[0]
    before = _upload(client, h, "before_any_model", image)
    assert not before["predicting"] and _jobs(project) == []  # no model: nothing to predict with
    register_model(project, untrained_checkpoint(tmp_path / "m.pt"))
    new = _upload(client, h, "fresh", image)
    assert new["predicting"] and new["status"] == "new"
    (job,) = _jobs(project)
    assert (job.kind, job.status, job.requested_by) == ("predict", "queued", "upload")
    # a second upload while it is queued reuses it
    _upload(client, h, "second", image)
    assert [j.id for j in _jobs(project)] == [job.id]
    assert client.get(f"/api/images/{new['id']}/prediction.png", headers=h).status_code == 404
    assert worker.run_once() == job.id
    done = client.get(f"/api/jobs/{job.id}", headers=h).json()
    assert done["status"] == "done" and done["requested_by"] == "upload", done
    shown = client.get(f"/api/images/{new['id']}", headers=h).json()
    assert shown["status"] == "predicted" and shown["uncertainty"] is not None and not shown["predicting"]
    r = client.get(f"/api/images/{new['id']}/prediction.png", headers=h)
    assert r.status_code == 200 and np.array(Image.open(io.BytesIO(r.content))).shape == (64, 64)


def test_a_prediction_job_predicts_only_what_is_missing_and_refreshes_only_stale_uncertainties(lab, tmp_path):
    client, h, project, worker = lab
    register_model(project, untrained_checkpoint(tmp_path / "v1.pt"))
    worker.run_once(client.post("/api/predict", headers=h).json()["id"])
    files = [project.prediction_path(1, "img0"), project.instances_path(1, "img0")]
    kept = [(f.stat().st_mtime_ns, f.read_bytes()) for f in files]
    stored = np.array(Image.open(files[0]))
    _set_uncertainty(project, {"img0": None, "img1": 0.4321})  # img1's stays v1's: not read again
    new = _upload(client, h, "fresh", synthetic_sample(8, CFG)[0])
    job_id = _jobs(project)[-1].id
    worker.run_once(job_id)
    assert "1 image predicted" in client.get(f"/api/jobs/{job_id}", headers=h).json()["message"]
    assert [(f.stat().st_mtime_ns, f.read_bytes()) for f in files] == kept  # not predicted again
    shown = {i["name"]: i for i in client.get("/api/images", headers=h).json()}
    assert shown["img0"]["uncertainty"] == pytest.approx(mean_entropy(stored.astype(np.float32) / 255))
    assert shown["img1"]["uncertainty"] == 0.4321
    assert project.prediction_path(1, "fresh").is_file() and shown["fresh"]["id"] == new["id"]


def test_activating_an_older_version_reorders_the_queue_from_its_stored_predictions(lab, tmp_path):
    client, h, project, worker = lab
    register_model(project, untrained_checkpoint(tmp_path / "v1.pt"))
    worker.run_once(client.post("/api/predict", headers=h).json()["id"])
    first = {i["name"]: i["uncertainty"] for i in client.get("/api/images", headers=h).json()}
    register_model(project, untrained_checkpoint(tmp_path / "v2.pt", gland_bias=30.0))  # sure of everything
    worker.run_once(client.post("/api/predict", headers=h).json()["id"])
    sure = {i["name"]: i["uncertainty"] for i in client.get("/api/images", headers=h).json()}
    assert max(sure.values()) < 0.01 < min(first.values())
    mtime = project.prediction_path(1, "img1").stat().st_mtime_ns
    worker.run_once(client.post("/api/models/1/activate", headers=h).json()["id"])
    back = {i["name"]: i["uncertainty"] for i in client.get("/api/images", headers=h).json()}
    assert back == pytest.approx(first, abs=2e-3)  # from the stored bytes: a quantisation away
    assert project.prediction_path(1, "img1").stat().st_mtime_ns == mtime


def test_images_wait_for_a_prediction_while_a_job_is_queued(lab, tmp_path):
    client, h, project, worker = lab
    register_model(project, untrained_checkpoint(tmp_path / "v1.pt"))
    worker.run_once(client.post("/api/predict", headers=h).json()["id"])
    add_image(project, "late", synthetic_sample(9, CFG)[0])  # `pathoseg project add`: not predicted
    assert not any(i["predicting"] for i in client.get("/api/images", headers=h).json())  # no job: not waiting
    client.post("/api/train", headers=h)
    shown = {i["name"]: i["predicting"] for i in client.get("/api/images", headers=h).json()}
    assert shown == {"img0": False, "img1": False, "img2": False, "late": True}


# -- who trained each version ---------------------------------------------------------------------
def test_each_version_says_who_asked_for_it(lab, tmp_path, monkeypatch):
    client, h, project, worker = lab
    monkeypatch.setattr(rounds, "fit", lambda *args, **kwargs: None)  # the round without its training
    register_model(project, untrained_checkpoint(tmp_path / "v1.pt"))
    job = client.post("/api/train", headers=h).json()
    assert job["requested_by"] == "ana"
    worker.run_once(job["id"])
    assert client.get(f"/api/jobs/{job['id']}", headers=h).json()["status"] == "done"
    assert client.post("/api/predict", headers=h).json()["requested_by"] == "ana"
    worker.run_once()
    # an automatic retrain after a correction
    app = create_app(ServerConfig(str(project.root), retrain_every=1, train=TINY, worker=False))
    ben = {"Authorization": f"Bearer {create_user(project, 'ben')}"}
    with TestClient(app) as auto_client:
        labels = synthetic_sample(500, CFG)[1].astype(np.uint8)
        body = {"png_base64": base64.b64encode(_png(labels)).decode(), "base_version": 1, "kind": "labels"}
        assert auto_client.put("/api/images/1/mask", headers=ben, json=body).status_code == 200
        (auto,) = [j for j in auto_client.get("/api/jobs", headers=ben).json() if j["status"] == "queued"]
        assert (auto["kind"], auto["requested_by"]) == ("train", "auto")
        worker.run_once(auto["id"])
        models = auto_client.get("/api/models", headers=ben).json()
    assert [(m["version"], m["trained_by"]) for m in models] == [(1, "import"), (2, "ana"), (3, "auto")]
    assert all(m["created_at"] for m in models)


# -- large images ---------------------------------------------------------------------------------
def test_a_large_image_is_decoded_at_the_working_scale_and_brought_to_native_size():
    """Above LARGE_IMAGE pixels the maps come from the tiler and the stitched decoder at the
    working scale (here one window: the same logits as whole-image prediction)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig("lite0", weights="none"))
    image, _ = synthetic_sample(11, SyntheticConfig(size=(300, 400), glands=(6, 9)))
    logits = predict_logits(model, image, PredictConfig(scale=0.5), "cpu", native=False)[0]
    with torch.no_grad():  # half the pixels gland: a few blobs, not one everywhere
        model.state_dict()[HEAD_BIAS][0] -= float(logits.median())
        model.state_dict()[HEAD_BIAS][1] = -20.0  # no contours: one interior per blob
    ckpt = Checkpoint.of(model, 0.5)
    whole = rounds.review_maps(model, ckpt, image, "cpu")
    assert whole.gland_probs is not None and whole.glands.dtype == np.int32
    old = rounds.LARGE_IMAGE
    try:
        rounds.LARGE_IMAGE = 100 * 100
        large = rounds.review_maps(model, ckpt, image, "cpu")
    finally:
        rounds.LARGE_IMAGE = old
    assert large.gland_probs is None and large.probs.shape == large.glands.shape == (300, 400)
    assert np.abs(large.probs.astype(int) - whole.probs).max() <= 1  # bilinear as before, float16 logits
    assert large.uncertainty == pytest.approx(whole.uncertainty, rel=1e-3)
    # the glands: the one decoder on the working-scale maps, each working pixel 2 x 2 native ones
    working = predict_maps(model, image, PredictConfig(scale=0.5), "cpu", native=False)
    expected = decode_instances(working, ckpt.instance_config().scaled(0.5)).repeat(2, 0).repeat(2, 1)
    pairs = {(int(a), int(b)) for a, b in zip(large.glands.ravel(), expected.ravel(), strict=True)}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) > 3  # one to one
    assert (0, 0) in pairs


@pytest.mark.slow
def test_a_6000_px_image_is_predicted_in_bounded_memory():
    """The worker's path on a 6000 x 6000 image in a fresh process (bench/predict_memory.py):
    whole-image prediction peaked at ~5 GB there; tiled and stitched, about 1.5 GB."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "predict_memory.py"), "--one", "6000"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["peak_rss_gb"] < 2.5, row
    assert row["glands"] > 100  # it did predict and decode the whole image
