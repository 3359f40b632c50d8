"""The correction app under hostile or unlucky input (security review, issue #11): racing
saves, oversized bodies, out-of-range numbers, masks in odd channels, error shapes."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import threading
import time

import numpy as np
import pytest
import sqlalchemy
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from pathoseg.cli import build_parser
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.errors import PathosegError
from pathoseg.server.app import ServerConfig, create_app
from pathoseg.server.routers import masks as masks_router
from pathoseg.server.services.images import add_image
from pathoseg.server.services.masks import ConflictError, save_mask
from pathoseg.server.storage import Image as ImageRow
from pathoseg.server.storage import Mask, Project
from tiny import create_user, tiny_worker

CFG = SyntheticConfig(size=(96, 128))
SHAPE = (96, 128)
SETTINGS = tiny_worker()


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def square(k: int) -> np.ndarray:
    """A distinct mask per annotator, so the stored file tells who won."""
    mask = np.zeros(SHAPE, bool)
    mask[5 + 10 * k: 15 + 10 * k, 10:40] = True
    return mask


def mask_files(project: Project, name: str) -> list[str]:
    folder = project.mask_path(name, 1).parent
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def mask_rows(project: Project, image_id: int) -> list[int]:
    with project.session() as s:
        return sorted(s.scalars(select(Mask.version).where(Mask.image_id == image_id)))


@pytest.fixture
def project(tmp_path, db_url):  # every test here runs on SQLite and on PostgreSQL
    project = Project(tmp_path / "proj", db_url, create=True)
    for i in range(3):
        image, _ = synthetic_sample(60 + i, CFG)
        add_image(project, f"img{i}", image)
    return project


@pytest.fixture
def served(project):
    tokens = {name: create_user(project, name, admin=name == "ana") for name in ("ana", "ben", "cai", "dan", "eve")}
    app = create_app(ServerConfig(str(project.root), project.db_url, retrain_every=0, train=SETTINGS))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, tokens, project, app


def image_id(project: Project, name: str) -> int:
    with project.session() as s:
        return s.scalars(select(ImageRow.id).where(ImageRow.name == name)).one()


# -- 1. racing saves ------------------------------------------------------------------------
def test_concurrent_saves_through_the_api_have_exactly_one_winner(served):
    client, tokens, project, _ = served
    target = image_id(project, "img0")
    names = list(tokens)
    barrier = threading.Barrier(len(names))
    results: dict[str, object] = {}

    def save(k: int, name: str) -> None:
        body = {"png_base64": b64(png_bytes(square(k).astype(np.uint8) * 255)), "base_version": 0}
        barrier.wait()
        results[name] = client.put(f"/api/images/{target}/mask", headers=auth(tokens[name]), json=body)

    threads = [threading.Thread(target=save, args=(k, n)) for k, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = {n: r.status_code for n, r in results.items()}
    winners = [n for n, c in codes.items() if c == 200]
    assert len(winners) == 1, codes
    winner = winners[0]
    for name, r in results.items():
        if name != winner:
            assert r.status_code == 409 and winner in r.json()["detail"], (name, r.text)
    assert mask_rows(project, target) == [1]
    assert mask_files(project, "img0") == ["v1.png"]
    stored = np.array(Image.open(project.mask_path("img0", 1)))
    assert np.array_equal(stored > 0, square(names.index(winner)))


def test_concurrent_direct_saves_have_exactly_one_winner(project):
    target = image_id(project, "img1")
    n = 6
    barrier = threading.Barrier(n)
    outcomes: list[tuple[int, object]] = []

    def save(k: int) -> None:
        barrier.wait()
        try:
            outcomes.append((k, save_mask(project, target, square(k), 0, f"user{k}")))
        except ConflictError as exc:
            outcomes.append((k, exc))

    threads = [threading.Thread(target=save, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wins = [(k, r) for k, r in outcomes if not isinstance(r, Exception)]
    assert len(outcomes) == n and len(wins) == 1, outcomes
    k, image = wins[0]
    assert image.mask_version == 1 and image.updated_by == f"user{k}"
    assert all(f"user{k}" in str(r) for _, r in outcomes if isinstance(r, Exception))
    assert mask_rows(project, target) == [1]
    assert mask_files(project, "img1") == ["v1.png"]
    assert np.array_equal(np.array(Image.open(project.mask_path("img1", 1))) > 0, square(k))
    # the next save builds on the winner's version
    assert save_mask(project, target, square(0), 1, "ana").mask_version == 2
    assert mask_rows(project, target) == [1, 2] and mask_files(project, "img1") == ["v1.png", "v2.png"]


def test_masks_table_refuses_duplicate_versions(project):
    target = image_id(project, "img0")
    save_mask(project, target, square(0), 0, "ana")
    with project.session() as s, pytest.raises(IntegrityError):
        s.add(Mask(image_id=target, version=1, source="correction", user="mallory"))
        s.commit()


def test_an_older_database_gets_the_unique_index_when_opened(project):
    with project.engine.begin() as c:  # as a pathoseg from before the index (and before Alembic) left it
        c.execute(text("DROP TABLE alembic_version"))
        c.execute(text("DROP INDEX uq_masks_image_version"))
    assert not any(i["unique"] for i in inspect(project.engine).get_indexes("masks"))
    reopened = Project(project.root, project.db_url)
    unique = [i["column_names"] for i in inspect(reopened.engine).get_indexes("masks") if i["unique"]]
    assert unique == [["image_id", "version"]]


def test_a_failed_save_leaves_no_file_and_no_row(project, monkeypatch):
    target = image_id(project, "img2")

    def broken_commit(self):
        raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(sqlalchemy.orm.Session, "commit", broken_commit)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        save_mask(project, target, square(1), 0, "ana")
    monkeypatch.undo()
    assert mask_files(project, "img2") == []
    assert mask_rows(project, target) == []
    with project.session() as s:
        assert s.get(ImageRow, target).mask_version == 0
    assert save_mask(project, target, square(1), 0, "ana").mask_version == 1  # nothing blocks a retry


def test_leftover_staged_files_are_cleaned_when_the_project_opens(project):
    target = image_id(project, "img0")
    save_mask(project, target, square(0), 0, "ana")
    folder = project.mask_path("img0", 1).parent
    # a crash after the commit, before the rename: the committed mask is moved into place
    final = project.mask_path("img0", 1)
    committed = project.staged_path(final)
    os.replace(final, committed)
    # a crash before the commit (version 2 never committed), long ago: deleted
    abandoned = project.staged_path(project.mask_path("img0", 2))
    abandoned.write_bytes(png_bytes(np.zeros(SHAPE, np.uint8)))
    old = time.time() - 3600
    os.utime(abandoned, (old, old))
    # an import that died before its commit
    stray_image = project.staged_path(project.image_path("never"))
    stray_image.write_bytes(b"x")
    os.utime(stray_image, (old, old))
    # a save in flight in another process right now (fresh, uncommitted): left alone
    in_flight = project.staged_path(project.mask_path("img0", 2))
    in_flight.write_bytes(b"y")

    Project(project.root, project.db_url)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["v1.png", in_flight.name])
    assert np.array_equal(np.array(Image.open(final)) > 0, square(0))
    assert not stray_image.exists()


def test_a_mask_committed_but_not_yet_in_place_is_served(served):
    """The moment between a save's commit and its rename (or a crash there): the reader
    settles the staged file instead of failing with 500."""
    client, tokens, project, _ = served
    target = image_id(project, "img1")
    save_mask(project, target, square(1), 0, "ana")
    final = project.mask_path("img1", 1)
    os.replace(final, project.staged_path(final))
    r = client.get(f"/api/images/{target}/mask.png", headers=auth(tokens["ana"]))
    assert r.status_code == 200
    assert np.array_equal(np.array(Image.open(io.BytesIO(r.content))) > 0, square(1))
    assert mask_files(project, "img1") == ["v1.png"]
    final.unlink()  # gone for good (deleted by hand): a clear 503, not a 500
    r = client.get(f"/api/images/{target}/mask.png", headers=auth(tokens["ana"]))
    assert r.status_code == 503 and isinstance(r.json()["detail"], str)


# -- 2. request size limit before authentication ---------------------------------------------
@pytest.fixture
def small_limit(project, monkeypatch):
    calls = []
    monkeypatch.setattr(masks_router, "save_mask", lambda *a, **k: calls.append(a))
    tokens = {"ana": create_user(project, "ana")}
    app = create_app(ServerConfig(str(project.root), project.db_url, retrain_every=0, train=SETTINGS,
                                  max_body_bytes=2000))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, tokens, project, app, calls


def test_oversized_bodies_are_refused_before_auth_and_parsing(small_limit):
    client, tokens, project, _, calls = small_limit
    target = image_id(project, "img0")
    big = json.dumps({"png_base64": "A" * 5000, "base_version": 0})
    for headers in ({}, auth("wrong"), auth(tokens["ana"])):
        r = client.put(f"/api/images/{target}/mask", content=big,
                       headers={**headers, "Content-Type": "application/json"})
        assert r.status_code == 413, (headers, r.text)
        assert r.json() == {"detail": "request body larger than 2000 bytes"}
    # a chunked body without Content-Length is counted as it streams
    r = client.put(f"/api/images/{target}/mask", content=(c for c in [big[:1500].encode(), big[1500:].encode()]),
                   headers=auth(tokens["ana"]))
    assert r.status_code == 413 and "2000 bytes" in r.json()["detail"]
    r = client.post("/api/images", headers=auth(tokens["ana"]),
                    files={"file": ("big.png", b"\0" * 5000, "image/png")})
    assert r.status_code == 413
    assert calls == [] and mask_files(project, "img0") == []
    # small bodies still reach the app: auth first, then the handler
    small = json.dumps({"png_base64": "AAAA", "base_version": 0})
    assert client.put(f"/api/images/{target}/mask", content=small).status_code == 401
    assert client.get("/api/images/1", headers=auth(tokens["ana"])).status_code == 200


def test_a_streamed_body_is_cut_off_at_the_limit_without_reaching_the_handler(small_limit):
    """Raw ASGI: a body in many chunks and no Content-Length; reading stops at the limit."""
    _, tokens, project, app, calls = small_limit
    chunks = [b"{" + b" " * 499] * 10  # 5000 bytes, 500 at a time
    sent: list[dict] = []
    pulled = 0

    async def receive():
        nonlocal pulled
        pulled += 1
        if pulled <= len(chunks):
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT", "scheme": "http",
             "path": f"/api/images/{image_id(project, 'img0')}/mask", "raw_path": b"", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 1), "server": ("testserver", 80),
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {tokens['ana']}".encode())]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 413 and json.loads(body) == {"detail": "request body larger than 2000 bytes"}
    assert pulled == 5  # 2500 bytes read, then it stopped
    assert calls == []


def test_the_default_limit_fits_the_largest_upload():
    from pathoseg.server.vocabulary import MAX_UPLOAD_BYTES

    limit = ServerConfig("x").max_body_bytes
    assert MAX_UPLOAD_BYTES * 4 // 3 < limit < 2 * MAX_UPLOAD_BYTES  # a base64 mask of the largest upload


# -- 3. hostile numbers ----------------------------------------------------------------------
def test_huge_and_odd_ids_never_give_500(served):
    client, tokens, project, _ = served
    h = auth(tokens["ana"])  # an admin: activating a model is for admins
    body = {"png_base64": b64(png_bytes(np.zeros(SHAPE, np.uint8))), "base_version": 0}
    for bad in (2**31, 2**63 - 1, 2**63, 2**64, 10**30, 0, -1, -(2**63) - 1):
        for method, url, kw in [("get", f"/api/images/{bad}", {}), ("get", f"/api/images/{bad}/image.png", {}),
                                ("get", f"/api/images/{bad}/mask.png", {}),
                                ("get", f"/api/images/{bad}/instances.png", {}),
                                ("get", f"/api/images/{bad}/prediction.png", {}),
                                ("put", f"/api/images/{bad}/mask", {"json": body}),
                                ("get", f"/api/jobs/{bad}", {}), ("post", f"/api/models/{bad}/activate", {})]:
            r = getattr(client, method)(url, headers=h, **kw)
            assert r.status_code in (404, 422), (url, r.status_code, r.text)
            assert isinstance(r.json()["detail"], str)
    target = image_id(project, "img0")
    for base in (2**31, 2**63, -1):
        r = client.put(f"/api/images/{target}/mask", headers=h, json={**body, "base_version": base})
        assert r.status_code == 422, (base, r.text)
    assert mask_files(project, "img0") == []


@pytest.mark.parametrize("extra", [
    {"seconds": float("nan")}, {"seconds": float("inf")}, {"seconds": float("-inf")}, {"seconds": -1},
    {"seconds": 86401}, {"seconds": 1e300}, {"operations": {"brush": 10**6 + 1}}, {"operations": {"brush": -1}},
    {"operations": {"brush": 2**70}}, {"operations": {"brush": 1.5}}, {"operations": {"x" * 65: 1}},
    {"operations": {f"op{k}": 1 for k in range(101)}},
])
def test_hostile_effort_numbers_are_refused_and_leave_no_file(served, extra):
    client, tokens, project, _ = served
    target = image_id(project, "img1")
    body = {"png_base64": b64(png_bytes(square(0).astype(np.uint8) * 255)), "base_version": 0, **extra}
    r = client.put(f"/api/images/{target}/mask", headers={**auth(tokens["ben"]), "Content-Type": "application/json"},
                   content=json.dumps(body))  # json.dumps writes NaN / Infinity as Python does
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], str)
    assert mask_files(project, "img1") == [] and mask_rows(project, target) == []


def test_effort_numbers_in_range_are_kept(served):
    client, tokens, project, _ = served
    target = image_id(project, "img1")
    body = {"png_base64": b64(png_bytes(square(0).astype(np.uint8) * 255)), "base_version": 0,
            "seconds": 86400, "operations": {"brush": 10**6, "polygon": 0}}
    assert client.put(f"/api/images/{target}/mask", headers=auth(tokens["ben"]), json=body).status_code == 200
    with project.session() as s:
        row = s.scalars(select(Mask).where(Mask.image_id == target)).one()
    assert row.seconds == 86400 and row.operations == {"brush": 10**6, "polygon": 0}


@pytest.mark.parametrize("seconds,operations", [(float("nan"), {}), (-5.0, {}), (1.0, {"brush": -2}),
                                                (1.0, {"brush": True}), (1.0, {3: 1})])
def test_save_mask_itself_refuses_hostile_numbers(project, seconds, operations):
    target = image_id(project, "img2")
    with pytest.raises(PathosegError):
        save_mask(project, target, square(0), 0, "ana", seconds, operations)
    assert mask_files(project, "img2") == [] and mask_rows(project, target) == []


# -- 4. masks in any channel -----------------------------------------------------------------
def channel_variants(mask: np.ndarray) -> dict[str, bytes]:
    m = mask.astype(np.uint8) * 255
    zero = np.zeros_like(m)
    rgba_red = np.stack([m, zero, zero, m], -1)
    rgba_red[~mask] = (200, 180, 90, 0)  # transparent background with junk colour under it
    palette = Image.fromarray(mask.astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 0, 200, 0])
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    return {
        "gray": png_bytes(m),
        "white-on-black rgb": png_bytes(np.stack([m, m, m], -1)),
        "green only": png_bytes(np.stack([zero, m, zero], -1)),
        "blue only": png_bytes(np.stack([zero, zero, m], -1)),
        "alpha only": png_bytes(np.stack([zero, zero, zero, m], -1)),
        "gray + alpha": png_bytes(np.stack([zero, m], -1), "LA"),
        "opaque editor rgba": png_bytes(np.stack([m, m, m, np.full_like(m, 255)], -1)),
        "red on transparent": png_bytes(rgba_red),
        "16-bit labels": png_bytes(mask.astype(np.uint16) * 7),
        "1-bit": _one_bit(mask),
        "palette": buf.getvalue(),
    }


def _one_bit(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def test_a_mask_in_any_channel_is_read_as_drawn(served):
    client, tokens, project, _ = served
    h = auth(tokens["ana"])
    target = image_id(project, "img2")
    mask = square(2)
    version = 0
    for kind, data in channel_variants(mask).items():
        r = client.put(f"/api/images/{target}/mask", headers=h, json={"png_base64": b64(data), "base_version": version})
        assert r.status_code == 200, (kind, r.text)
        version = r.json()["mask_version"]
        stored = np.array(Image.open(project.mask_path("img2", version)))
        assert np.array_equal(stored > 0, mask), kind
        shown = np.array(Image.open(io.BytesIO(client.get(f"/api/images/{target}/mask.png", headers=h).content)))
        assert np.array_equal(shown > 0, mask), kind


# -- 5. one error shape; the login page's command ----------------------------------------------
def test_validation_errors_have_the_documented_shape(served):
    client, tokens, project, _ = served
    h = auth(tokens["ana"])
    target = image_id(project, "img0")
    cases = [
        client.put(f"/api/images/{target}/mask", headers=h, json={"base_version": 0}),
        client.put(f"/api/images/{target}/mask", headers=h, json={"png_base64": "AAAA", "base_version": 0,
                                                                   "seconds": "soon"}),
        client.put(f"/api/images/{target}/mask", headers={**h, "Content-Type": "application/json"}, content=b"{oops"),
        client.get("/api/images/abc", headers=h),
        client.get("/api/jobs/1.5", headers=h),
    ]
    for r in cases:
        assert r.status_code == 422, r.text
        assert set(r.json()) == {"detail"} and isinstance(r.json()["detail"], str), r.text
        assert "\n" not in r.json()["detail"] and r.json()["detail"]
    assert "png_base64" in cases[0].json()["detail"] and "seconds" in cases[1].json()["detail"]
    # the handlers' own 422s have the same shape
    r = client.get("/api/images?order=bogus", headers=h)
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)
    # and the OpenAPI schema documents that shape, not FastAPI's default list
    schema = client.get("/openapi.json").json()
    ref = schema["paths"]["/api/images/{image_id}/mask"]["put"]["responses"]["422"]["content"]["application/json"]
    assert ref["schema"]["$ref"].endswith("/ErrorOut")
    assert schema["components"]["schemas"]["ErrorOut"]["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in json.dumps(schema)


def test_login_page_names_commands_that_exist(served):
    client, _, _, _ = served
    page = client.get("/").text
    for action in ("add", "token", "revoke"):
        assert f"<code>pathoseg project users {action} PROJECT NAME</code>" in page
        args = build_parser().parse_args(["project", "users", action, "PROJECT", "NAME"])
        assert (args.action, args.users_action, args.project, args.name) == ("users", action, "PROJECT", "NAME")


def test_nothing_stray_after_a_burst_of_mixed_saves(served):
    """Valid, conflicting and hostile saves at once: rows and files agree afterwards."""
    client, tokens, project, _ = served
    target = image_id(project, "img0")
    bodies = [{"png_base64": b64(png_bytes(square(k % 3).astype(np.uint8) * 255)), "base_version": 0,
               **({"seconds": -1} if k % 2 else {})} for k in range(6)]
    barrier = threading.Barrier(len(bodies))
    codes = []

    def put(body):
        barrier.wait()
        codes.append(client.put(f"/api/images/{target}/mask", headers=auth(tokens["ana"]), json=body).status_code)

    threads = [threading.Thread(target=put, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409, 409, 422, 422, 422]
    assert mask_rows(project, target) == [1] and mask_files(project, "img0") == ["v1.png"]
    with project.session() as s:
        assert s.scalar(select(func.count(Mask.id))) == 1
