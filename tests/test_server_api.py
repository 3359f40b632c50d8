"""Every endpoint of the correction app's API, with its error cases."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pathoseg.data.cache import to_target
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.server.app import ServerConfig, create_app
from pathoseg.server.services.images import add_image
from pathoseg.server.services.masks import save_mask
from pathoseg.server.services.validation import labelled_images
from pathoseg.server.storage import Image as ImageRow
from pathoseg.server.storage import Project
from tiny import create_user, tiny_worker

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
    settings = tiny_worker()
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
    # ids 1..N, none skipped (a model trained for 4 steps may see gland everywhere: no 0)
    assert set(np.unique(glands)) | {0} == set(range(int(glands.max()) + 1))
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


# -- instance masks (#10): label maps in and out, operation logs, training targets, export ------
def labels_body(labels: np.ndarray, base: int, **extra) -> dict:
    dtype = np.uint8 if labels.max() < 256 else np.uint16
    return {"png_base64": base64.b64encode(png_bytes(labels.astype(dtype))).decode(), "base_version": base, **extra}


def touching_glands() -> np.ndarray:
    """Two glands that share an edge: one blob as a binary mask, two glands as a label map."""
    labels = np.zeros((96, 128), np.int32)
    labels[20:50, 20:50] = 7
    labels[20:50, 50:80] = 3
    return labels


def get_png(client, url, h) -> np.ndarray:
    r = client.get(url, headers=h)
    assert r.status_code == 200, r.text
    return np.array(Image.open(io.BytesIO(r.content)))


def test_label_maps_keep_their_glands(setup):
    client, tokens, project, _ = setup
    h = auth(tokens["ana"])
    target = client.get("/api/images?order=name", headers=h).json()[5]
    r = client.put(f"/api/images/{target['id']}/mask", headers=h, json=labels_body(touching_glands(), 0))
    assert r.status_code == 200, r.text
    stored = np.array(Image.open(project.mask_path("img5", 1)))
    # touching glands stay two glands, numbered 1..N in order of their ids
    assert set(np.unique(stored)) == {0, 1, 2}
    assert (stored[20:50, 50:80] == 1).all() and (stored[20:50, 20:50] == 2).all()
    shown = get_png(client, f"/api/images/{target['id']}/mask.png", h)
    assert np.array_equal(shown, stored)
    # more than 255 glands: a 16-bit PNG in storage and in the API
    many = np.zeros((96, 128), np.int32)
    many[::3, ::3] = np.arange(1, 32 * 43 + 1).reshape(32, 43)
    r = client.put(f"/api/images/{target['id']}/mask", headers=h, json=labels_body(many, 1, kind="labels"))
    assert r.status_code == 200, r.text
    assert Image.open(project.mask_path("img5", 2)).mode.startswith("I")
    shown = get_png(client, f"/api/images/{target['id']}/mask.png", h)
    assert shown.dtype == np.uint16 and shown.max() == 32 * 43 and np.array_equal(shown, many)


def test_binary_masks_become_components(setup):
    client, tokens, project, _ = setup
    h = auth(tokens["ana"])
    target = client.get("/api/images?order=name", headers=h).json()[4]
    binary = np.zeros((96, 128), bool)
    binary[10:20, 10:20] = binary[40:60, 40:70] = binary[50:60, 100:110] = True
    r = client.put(f"/api/images/{target['id']}/mask", headers=h, json=mask_body(binary, 0))
    assert r.status_code == 200, r.text
    stored = np.array(Image.open(project.mask_path("img4", 1)))
    assert stored.max() == 3 and np.array_equal(stored > 0, binary)
    # as a label map the same 0/255 file is one gland (explicitly asked for)
    r = client.put(f"/api/images/{target['id']}/mask", headers=h, json=mask_body(binary, 1, kind="labels"))
    assert r.status_code == 200 and np.array(Image.open(project.mask_path("img4", 2))).max() == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_label_maps_are_refused_with_the_reason(setup):
    client, tokens, project, _ = setup
    h = auth(tokens["ana"])
    target = client.get("/api/images?order=name", headers=h).json()[5]["id"]
    big = np.zeros((96, 128), np.int32)
    big[5:10, 5:10], big[20:30, 20:30] = 1, 70_000
    buf = io.BytesIO()
    Image.fromarray(big, "I").save(buf, format="TIFF")  # 32-bit (a PNG stops at 16)
    cases = {
        "gland ids go up to 65534": {"png_base64": base64.b64encode(buf.getvalue()).decode(), "base_version": 0},
        "65535 marks unlabelled": labels_body(np.where(big > 1, 65535, big), 0),
        "mask is 10x10": labels_body(np.arange(100).reshape(10, 10), 0),
        "single-channel": {**mask_body(np.zeros((96, 128), bool), 0), "kind": "labels",
                           "png_base64": base64.b64encode(png_bytes(np.zeros((96, 128, 3), np.uint8))).decode()},
        "kind": {**labels_body(touching_glands(), 0), "kind": "rgb"},
    }
    for reason, body in cases.items():
        r = client.put(f"/api/images/{target}/mask", headers=h, json=body)
        assert r.status_code == 422 and reason in r.json()["detail"], (reason, r.text)
    assert not project.mask_path("img5", 1).exists()


def test_operation_logs_are_stored_with_their_counts(setup):
    client, tokens, _, _ = setup
    h = auth(tokens["ben"])
    target = client.get("/api/images?order=name", headers=h).json()[5]["id"]
    log = [{"type": "split", "timestamp": "2025-03-01T10:00:00Z", "gland": 3, "other": 9},
           {"type": "delete", "timestamp": "2025-03-01T10:00:05.250Z", "gland": 2},
           {"type": "accept_all", "timestamp": "2025-03-01T10:00:09+01:00", "gland": None},
           {"type": "delete", "timestamp": "2025-03-01T10:00:11Z", "gland": 4}]
    r = client.put(f"/api/images/{target}/mask", headers=h,
                   json=labels_body(touching_glands(), 0, operations=log, seconds=11.0))
    assert r.status_code == 200, r.text
    (saved,) = client.get(f"/api/images/{target}/masks", headers=h).json()
    assert saved["operations"] == {"split": 1, "delete": 2, "accept_all": 1} and saved["user"] == "ben"
    assert [(e["type"], e["gland"], e.get("other")) for e in saved["operation_log"]] == [
        ("split", 3, 9), ("delete", 2, None), ("accept_all", None, None), ("delete", 4, None)]
    assert saved["operation_log"][0]["timestamp"].startswith("2025-03-01T10:00:00")
    # counts alone (older clients) still work, with no log
    r = client.put(f"/api/images/{target}/mask", headers=h, json=labels_body(touching_glands(), 1,
                                                                            operations={"brush": 2}))
    assert r.status_code == 200
    assert client.get(f"/api/images/{target}/masks", headers=h).json()[1]["operation_log"] is None
    assert client.get("/api/images/999/masks", headers=h).status_code == 404


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_operation_logs_are_bounded(setup):
    client, tokens, project, _ = setup
    h = auth(tokens["ben"])
    target = client.get("/api/images?order=name", headers=h).json()[5]["id"]
    entry = {"type": "delete", "timestamp": "2025-03-01T10:00:00Z", "gland": 1}
    bad = {
        "10000": [entry] * 10_001,
        "type": [{**entry, "type": "teleport"}],
        "gland": [{**entry, "gland": 70_000}],
        "timestamp": [{**entry, "timestamp": "yesterday"}],
        "extra": [{**entry, "note": "x"}],
        "other": [{**entry, "other": -1}],
    }
    for name, log in bad.items():
        r = client.put(f"/api/images/{target}/mask", headers=h, json=labels_body(touching_glands(), 0, operations=log))
        assert r.status_code == 422 and isinstance(r.json()["detail"], str), (name, r.text)
        assert "\n" not in r.json()["detail"]
    assert not project.mask_path("img5", 1).exists()
    r = client.put(f"/api/images/{target}/mask", headers=h, json=labels_body(touching_glands(), 0,
                                                                            operations=[entry] * 10_000))
    assert r.status_code == 200 and client.get(f"/api/images/{target}/masks", headers=h).json()[0][
        "operations"] == {"delete": 10_000}


def test_training_uses_the_saved_gland_ids(setup):
    client, tokens, _, app = setup
    h = auth(tokens["ana"])
    target = client.get("/api/images?order=name", headers=h).json()[5]
    client.put(f"/api/images/{target['id']}/mask", headers=h, json=labels_body(touching_glands(), 0))
    labelled = {i.name: to_target(i.load()[1]) for i in labelled_images(app.state.project)}
    assert len(np.unique(labelled["img5"])) == 3  # background and two glands, not one component
    assert np.array_equal(labelled["img0"], synthetic_sample(40, CFG)[1])  # imported: its own ids


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_binary_masks_of_older_projects_still_work(setup):
    client, tokens, project, _ = setup
    h = auth(tokens["ana"])
    # an older project stored every mask as 0/255
    _, labels = synthetic_sample(41, CFG)
    Image.fromarray((labels > 0).astype(np.uint8) * 255).save(project.mask_path("img1", 1))
    img1 = client.get("/api/images?order=name", headers=h).json()[1]["id"]
    shown = get_png(client, f"/api/images/{img1}/mask.png", h)
    assert shown.max() == labels.max() and np.array_equal(shown > 0, labels > 0)  # its components
    target = {i.name: to_target(i.load()[1]) for i in labelled_images(project)}["img1"]
    assert target.max() == labels.max() and np.array_equal(target > 0, labels > 0)
    files = zipfile.ZipFile(io.BytesIO(client.get("/api/export", headers=h).content))
    exported = np.array(Image.open(files.open("instances/img1.png")))
    assert exported.max() == labels.max()


def test_export_has_one_feature_per_gland_with_holes(setup):
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import shape

    client, tokens, _, _ = setup
    h = auth(tokens["ana"])
    labels = np.zeros((96, 128), np.int32)
    yy, xx = np.mgrid[:96, :128]
    ring = np.hypot(yy - 40, xx - 40)
    labels[(ring < 25) & (ring >= 9)] = 1  # a gland with a lumen: a hole
    labels[10:30, 80:100] = 2
    labels[60:70, 80:90] = labels[75:85, 100:110] = 3  # one gland in two pieces
    labels[40:60, 80:100] = 4
    labels[40:60, 100:110] = 5  # touches gland 4: still a gland of its own
    target = client.get("/api/images?order=name", headers=h).json()[5]["id"]
    assert client.put(f"/api/images/{target}/mask", headers=h, json=labels_body(labels, 0)).status_code == 200
    files = zipfile.ZipFile(io.BytesIO(client.get("/api/export", headers=h).content))
    assert np.array_equal(np.array(Image.open(files.open("instances/img5.png"))), labels)
    features = json.loads(files.read("geojson/img5.geojson"))["features"]
    assert [f["properties"]["gland_id"] for f in features] == [1, 2, 3, 4, 5]
    for f in features:
        geom = shape(f["geometry"])
        gland = f["properties"]["gland_id"]
        assert geom.is_valid and geom.area == (labels == gland).sum(), gland
        assert f["properties"]["classification"]["name"] == "Gland"
    holed = shape(features[0]["geometry"])
    assert holed.geom_type == "Polygon" and len(holed.interiors) == 1
    assert shapely.geometry.Point(40.5, 40.5).within(holed) is False  # the lumen is a hole
    assert shape(features[2]["geometry"]).geom_type == "MultiPolygon"


def test_databases_from_before_operation_logs_get_the_column(tmp_path):
    from sqlalchemy import inspect, text

    project = Project(tmp_path / "old", create=True)
    image, labels = synthetic_sample(7, CFG)
    add_image(project, "a", image, labels)
    with project.engine.begin() as c:  # as an older pathoseg made it
        c.execute(text("DROP TABLE alembic_version"))  # before Alembic
        c.execute(text("ALTER TABLE masks DROP COLUMN operation_log"))
    project.engine.dispose()
    reopened = Project(tmp_path / "old")
    assert "operation_log" in {c["name"] for c in inspect(reopened.engine).get_columns("masks")}
    log = [{"type": "merge", "timestamp": "2025-03-01T10:00:00Z", "gland": 1, "other": 2}]
    saved = save_mask(reopened, 1, labels, 1, "ana", 3.0, log)
    assert saved.mask_version == 2
    with reopened.session() as s:
        rows = {m.version: (m.operations, m.operation_log) for m in s.get(ImageRow, 1).masks}
    assert rows[1] == ({}, None) and rows[2][0] == {"merge": 1} and rows[2][1][0]["other"] == 2
