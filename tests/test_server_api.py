"""Every endpoint of the correction app's API, with its error cases."""

from __future__ import annotations

import base64
import io
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.server.app import ServerConfig, create_app
from pathoseg.server.jobs import TrainSettings
from pathoseg.server.project import add_image
from pathoseg.server.storage import Project, create_user

CFG = SyntheticConfig(size=(96, 128))


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def setup(tmp_path, db_url):  # on SQLite and on PostgreSQL
    project = Project(tmp_path / "proj", db_url, create=True)
    for i in range(6):
        image, labels = synthetic_sample(40 + i, CFG)
        add_image(project, f"img{i}", image, labels if i < 4 else None)
    tokens = {"ana": create_user(project, "ana", admin=True), "ben": create_user(project, "ben")}
    settings = TrainSettings(steps=4, scale=1.0, crop=64, batch_size=4, device="cpu")
    app = create_app(ServerConfig(str(tmp_path / "proj"), db_url, retrain_every=0, train=settings))
    with TestClient(app) as client:
        yield client, tokens, project, app


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def mask_body(mask: np.ndarray, base: int, **extra) -> dict:
    return {"png_base64": base64.b64encode(png_bytes(mask.astype(np.uint8) * 255)).decode(), "base_version": base,
            **extra}


def test_login_required_everywhere(setup):
    client, tokens, _, _ = setup
    for method, url in [("get", "/api/me"), ("get", "/api/images"), ("get", "/api/images/1/image.png"),
                        ("put", "/api/images/1/mask"), ("post", "/api/train"), ("get", "/api/models"),
                        ("get", "/api/export"), ("post", "/api/images")]:
        assert getattr(client, method)(url).status_code == 401, url
    assert client.get("/api/me", headers=auth("wrong")).status_code == 401
    assert client.get("/api/me", headers=auth(tokens["ben"])).json() == {"name": "ben", "is_admin": False}


def test_queue_images_and_masks(setup):
    client, tokens, _, _ = setup
    h = auth(tokens["ana"])
    images = client.get("/api/images?order=name", headers=h).json()
    assert [i["name"] for i in images] == [f"img{i}" for i in range(6)]
    assert images[0]["status"] == "approved" and images[5]["status"] == "new"
    assert client.get("/api/images?order=bogus", headers=h).status_code == 422
    first = images[0]["id"]
    png = client.get(f"/api/images/{first}/image.png", headers=h)
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (128, 96)
    empty = np.array(Image.open(io.BytesIO(client.get(f"/api/images/{images[5]['id']}/mask.png", headers=h).content)))
    assert empty.shape == (96, 128) and empty.max() == 0
    assert client.get("/api/images/999", headers=h).status_code == 404
    assert client.get(f"/api/images/{images[5]['id']}/prediction.png", headers=h).status_code == 404
    assert client.get("/api/images/..%2F..%2Fetc/image.png", headers=h).status_code in (404, 422)


def test_save_versions_and_conflict(setup):
    client, tokens, project, _ = setup
    target = client.get("/api/images?order=name", headers=auth(tokens["ana"])).json()[5]
    mask = np.zeros((96, 128), bool)
    mask[10:30, 10:40] = True
    r = client.put(f"/api/images/{target['id']}/mask", headers=auth(tokens["ana"]),
                   json=mask_body(mask, 0, seconds=12.5, operations={"brush": 2}))
    assert r.status_code == 200 and r.json()["mask_version"] == 1 and r.json()["status"] == "corrected"
    # ben loaded version 0 too: his save must not silently overwrite ana's
    r = client.put(f"/api/images/{target['id']}/mask", headers=auth(tokens["ben"]), json=mask_body(~mask, 0))
    assert r.status_code == 409 and "ana" in r.json()["detail"]
    stored_png = client.get(f"/api/images/{target['id']}/mask.png", headers=auth(tokens["ben"])).content
    stored = np.array(Image.open(io.BytesIO(stored_png)))
    assert np.array_equal(stored > 0, mask)
    assert project.mask_path(target["name"], 1).is_file()
    # wrong size and junk are refused with a reason
    r = client.put(f"/api/images/{target['id']}/mask", headers=auth(tokens["ana"]),
                   json=mask_body(np.zeros((10, 10), bool), 1))
    assert r.status_code == 422 and "mask is 10x10" in r.json()["detail"]
    r = client.put(f"/api/images/{target['id']}/mask", headers=auth(tokens["ana"]),
                   json={"png_base64": "not base64!!", "base_version": 1})
    assert r.status_code == 422


def test_uploads_are_checked(setup):
    client, tokens, _, _ = setup
    h = auth(tokens["ana"])
    image, _ = synthetic_sample(99, CFG)
    r = client.post("/api/images", headers=h, files={"file": ("new_one.png", png_bytes(image), "image/png")})
    assert r.status_code == 201 and r.json()["name"] == "new_one"
    r = client.post("/api/images", headers=h, files={"file": ("new_one.png", png_bytes(image), "image/png")})
    assert r.status_code == 422 and "already" in r.json()["detail"]
    r = client.post("/api/images", headers=h, files={"file": ("notes.png", b"hello", "image/png")})
    assert r.status_code == 422 and "not a readable image" in r.json()["detail"]
    r = client.post("/api/images", headers=h, files={"file": ("../../evil.png", png_bytes(image), "image/png")})
    assert r.status_code == 201 and r.json()["name"] == "evil"  # folders stripped, never followed
    r = client.post("/api/images", headers=h, files={"file": ("a b;rm.png", png_bytes(image), "image/png")})
    assert r.status_code == 422 and "not allowed" in r.json()["detail"]
    # a decompression bomb: a tiny PNG that claims 50 000 x 50 000 pixels
    bomb = io.BytesIO()
    Image.new("1", (50_000, 50_000)).save(bomb, format="PNG")
    r = client.post("/api/images", headers=h, files={"file": ("bomb.png", bomb.getvalue(), "image/png")})
    assert r.status_code == 422 and "too large" in r.json()["detail"]


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # training once is enough
def test_retrain_makes_a_version_and_rollback_restores_predictions(setup):
    client, tokens, _, app = setup
    h = auth(tokens["ana"])
    job = client.post("/api/train", headers=h).json()
    app.state.worker.wait(job["id"], timeout=300)
    assert client.get(f"/api/jobs/{job['id']}", headers=h).json()["status"] == "done"
    models = client.get("/api/models", headers=h).json()
    assert [m["version"] for m in models] == [1] and models[0]["active"]
    assert sorted(n for n, _ in models[0]["trained_on"]) == ["img0", "img1", "img2", "img3"]
    img5 = client.get("/api/images?order=name", headers=h).json()[5]
    assert img5["status"] == "predicted" and img5["uncertainty"] is not None
    pred_v1 = client.get(f"/api/images/{img5['id']}/prediction.png", headers=h).content
    # the model's glands come from the instance decoder, and the editor's mask is their union
    glands = np.array(Image.open(io.BytesIO(client.get(f"/api/images/{img5['id']}/instances.png",
                                                          headers=h).content)))
    shown = np.array(Image.open(io.BytesIO(client.get(f"/api/images/{img5['id']}/mask.png", headers=h).content)))
    assert glands.shape == (96, 128) and np.array_equal(shown > 0, glands > 0)
    assert set(np.unique(glands)) == set(range(int(glands.max()) + 1))  # ids 0..N, none skipped
    # a correction, a second training run, then roll back to version 1
    mask = np.zeros((96, 128), bool)
    mask[:, :64] = True
    client.put(f"/api/images/{img5['id']}/mask", headers=h, json=mask_body(mask, 0))
    job = client.post("/api/train", headers=h).json()
    app.state.worker.wait(job["id"], timeout=300)
    models = client.get("/api/models", headers=h).json()
    assert [m["active"] for m in models] == [False, True]
    assert ["img5", 1] in models[1]["trained_on"]
    assert client.get(f"/api/images/{img5['id']}/prediction.png", headers=h).content != pred_v1
    job = client.post("/api/models/1/activate", headers=h).json()
    app.state.worker.wait(job["id"], timeout=300)
    assert client.get(f"/api/images/{img5['id']}/prediction.png", headers=h).content == pred_v1
    assert client.post("/api/models/7/activate", headers=h).status_code == 404


def test_jobs_report_failures_without_crashing(setup):
    client, tokens, _, app = setup
    h = auth(tokens["ben"])
    job = client.post("/api/predict", headers=auth(tokens["ana"])).json()  # admins only; no model yet:
    # the job fails, the server lives
    app.state.worker.wait(job["id"], timeout=60)
    done = client.get(f"/api/jobs/{job['id']}", headers=h).json()
    assert done["status"] == "failed" and "no model yet" in done["message"]
    assert client.get("/api/jobs", headers=h).json()[0]["id"] == job["id"]
    assert client.get("/api/jobs/999", headers=h).status_code == 404
    assert client.get("/api/me", headers=h).status_code == 200


def test_approve_marks_the_image(setup):
    client, tokens, _, _ = setup
    h = auth(tokens["ben"])
    target = client.get("/api/images?order=name", headers=h).json()[4]
    r = client.put(f"/api/images/{target['id']}/mask", headers=h,
                   json=mask_body(np.ones((96, 128), bool), 0, approve=True))
    assert r.json()["status"] == "approved" and r.json()["updated_by"] == "ben"
    queue = client.get("/api/images", headers=h).json()
    assert queue[-1]["status"] in ("approved", "corrected")  # finished images sink to the end


def test_export(setup):
    client, tokens, _, _ = setup
    r = client.get("/api/export", headers=auth(tokens["ana"]))
    files = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert "status.csv" in files and "masks/img0.png" in files and "instances/img0.png" in files
    geo = zipfile.ZipFile(io.BytesIO(r.content)).read("geojson/img0.geojson")
    assert b'"Polygon"' in geo and b'"Gland"' in geo
    assert "masks/img5.png" not in files  # nothing saved for it yet


def test_openapi_lists_the_api(setup):
    client, _, _, _ = setup
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/images", "/api/images/{image_id}/mask", "/api/train", "/api/models/{version}/activate"} <= set(paths)
    assert replace(ServerConfig("x")).retrain_every == 5
