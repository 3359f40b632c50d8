"""Roles, tokens and logins in the correction app (issue #11): admins and annotators, token
expiry, revocation and re-issue, login throttling, the `project users` commands, the server
layout (one router per resource, lifespan) and `pathoseg serve`'s settings."""

from __future__ import annotations

import base64
import io
import itertools
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import inspect, select, text, update

from pathoseg.cli import build_parser, main, server_config
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.engine.settings import WarmRound
from pathoseg.errors import PathosegError
from pathoseg.server.app import ServerConfig, create_app
from pathoseg.server.limits import LoginThrottle
from pathoseg.server.services.images import add_image
from pathoseg.server.storage import (
    DEFAULT_TOKEN_DAYS,
    Job,
    Project,
    TokenError,
    User,
    add_user,
    authenticate,
    hash_token,
    now,
    reissue_token,
    revoke_token,
)
from tiny import create_user, tiny_worker

CFG = SyntheticConfig(size=(96, 128))
SETTINGS = tiny_worker()


def auth(token: str, scheme: str = "Bearer") -> dict:
    return {"Authorization": f"{scheme} {token}"}


def png_b64(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def project(tmp_path, db_url):  # on SQLite and on PostgreSQL
    project = Project(tmp_path / "proj", db_url, create=True)
    for i in range(3):
        image, labels = synthetic_sample(80 + i, CFG)
        add_image(project, f"img{i}", image, labels if i == 0 else None)
    return project


def serve(project: Project, **settings) -> TestClient:
    return TestClient(create_app(ServerConfig(str(project.root), project.db_url, retrain_every=0, train=SETTINGS,
                                              **settings)))


@pytest.fixture
def served(project):
    tokens = {"ana": create_user(project, "ana", admin=True), "ben": create_user(project, "ben")}
    with serve(project) as client:
        yield client, tokens, project


# -- roles ------------------------------------------------------------------------------------
ADMIN_ONLY = [("post", "/api/train", {}), ("post", "/api/predict", {}), ("post", "/api/models/1/activate", {}),
              ("get", "/api/export", {}), ("post", "/api/images", {"files": {"file": ("x.png", b"x", "image/png")}}),
              ("get", "/api/users", {}), ("post", "/api/users", {"json": {"name": "cai"}}),
              ("post", "/api/users/ana/revoke", {}), ("post", "/api/users/ana/token", {})]


def test_annotators_get_403_for_admin_actions(served):
    client, tokens, project = served
    for method, url, kw in ADMIN_ONLY:
        r = getattr(client, method)(url, headers=auth(tokens["ben"]), **kw)
        assert r.status_code == 403, (url, r.text)
        assert r.json() == {"detail": "only an admin may do this (ben is an annotator)"}
        assert getattr(client, method)(url, **kw).status_code == 401, url  # no token: 401 before 403
    with project.session() as s:  # nothing happened
        assert s.scalars(select(Job)).first() is None
        assert {u.name for u in s.scalars(select(User))} == {"ana", "ben"}
        assert s.scalars(select(User).where(User.name == "ana")).one().token_revoked_at is None
    assert client.get("/api/me", headers=auth(tokens["ana"])).status_code == 200


def test_admins_may_do_the_admin_actions(served):
    client, tokens, _ = served
    h = auth(tokens["ana"])
    assert client.post("/api/predict", headers=h).status_code == 202
    assert client.post("/api/models/1/activate", headers=h).status_code == 404  # allowed; there is no model
    assert client.get("/api/export", headers=h).status_code == 200
    assert [u["name"] for u in client.get("/api/users", headers=h).json()] == ["ana", "ben"]


def test_annotators_read_save_and_approve(served):
    client, tokens, _ = served
    h = auth(tokens["ben"])
    images = client.get("/api/images?order=name", headers=h).json()
    target = images[1]
    for url in (f"/api/images/{target['id']}", f"/api/images/{target['id']}/image.png",
                f"/api/images/{target['id']}/mask.png", "/api/models", "/api/jobs", "/api/me", "/api/users/me"):
        assert client.get(url, headers=h).status_code == 200, url
    mask = np.zeros((96, 128), bool)
    mask[20:40, 30:70] = True
    r = client.put(f"/api/images/{target['id']}/mask", headers=h,
                   json={"png_base64": png_b64(mask), "base_version": 0})
    assert r.status_code == 200 and r.json()["status"] == "corrected"
    r = client.put(f"/api/images/{target['id']}/mask", headers=h,
                   json={"png_base64": png_b64(mask), "base_version": 1, "approve": True})
    assert r.status_code == 200 and r.json()["status"] == "approved" and r.json()["updated_by"] == "ben"


def test_the_page_shows_admin_controls_to_admins_only(served):
    client, _, _ = served
    page = client.get("/").text
    for element in ('id="retrain" class="admin-only"', 'id="export" class="admin-only"', 'class="upload admin-only"'):
        assert element in page
    assert ".admin-only" in client.get("/app.js").text and "/api/users/me" in client.get("/app.js").text


# -- tokens -----------------------------------------------------------------------------------
def test_bearer_scheme_in_any_case_through_fastapi_security(served):
    client, tokens, _ = served
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        assert client.get("/api/me", headers=auth(tokens["ben"], scheme)).json()["name"] == "ben", scheme
    for headers in ({"Authorization": f"Basic {tokens['ben']}"}, {"Authorization": "Bearer"},
                    {"Authorization": tokens["ben"]}, {}):
        r = client.get("/api/me", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), headers
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes == {"token": {"type": "http", "scheme": "bearer", "description": schemes["token"]["description"]}}


def test_tokens_expire(served):
    client, tokens, project = served
    me = client.get("/api/users/me", headers=auth(tokens["ben"])).json()
    assert me["role"] == "annotator" and not me["revoked"]
    with project.session() as s:
        ben = s.scalars(select(User).where(User.name == "ben")).one()
        assert abs(ben.expires - (now() + timedelta(days=DEFAULT_TOKEN_DAYS))) < timedelta(minutes=5)
        s.execute(update(User).where(User.name == "ben").values(token_expires_at=now() - timedelta(seconds=1)))
        s.commit()
    r = client.get("/api/me", headers=auth(tokens["ben"]))
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    assert client.get("/api/me", headers=auth(tokens["ana"])).status_code == 200


def test_a_token_lasts_the_days_asked_for(project):
    issued = add_user(project, "dee", days=2)
    with project.session() as s:
        assert authenticate(s, issued.token, now() + timedelta(days=1)).name == "dee"
        with pytest.raises(TokenError, match="expired"):
            authenticate(s, issued.token, now() + timedelta(days=2, minutes=1))
    for days in (0, -1, 3651, True):
        with pytest.raises(PathosegError, match="1 to 3650 days"):
            add_user(project, f"x{days}", days=days)


def test_revoke_and_reissue_through_the_api(served):
    client, tokens, _ = served
    h = auth(tokens["ana"])
    r = client.post("/api/users/ben/revoke", headers=h)
    assert r.status_code == 200 and r.json()["revoked"]
    r = client.get("/api/me", headers=auth(tokens["ben"]))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    r = client.post("/api/users/ben/token", headers=h, json={"days": 7})
    assert r.status_code == 200
    new = r.json()
    assert new["name"] == "ben" and new["role"] == "annotator" and new["token"] != tokens["ben"]
    assert client.get("/api/me", headers=auth(tokens["ben"])).status_code == 401  # the old one stays dead
    assert client.get("/api/me", headers=auth(new["token"])).json()["name"] == "ben"
    me = client.get("/api/users/me", headers=auth(new["token"])).json()
    assert not me["revoked"] and me["token_expires_at"].startswith(str((now() + timedelta(days=7)).date()))
    # re-issuing without a revocation also retires the old token; no body: the server's default lifetime
    newer = client.post("/api/users/ben/token", headers=h).json()["token"]
    assert client.get("/api/me", headers=auth(new["token"])).status_code == 401
    assert client.get("/api/me", headers=auth(newer)).status_code == 200
    assert client.post("/api/users/nobody/revoke", headers=h).status_code == 404
    assert client.post("/api/users/nobody/token", headers=h).status_code == 404
    assert client.post("/api/users/bad%20name/revoke", headers=h).status_code == 422


def test_adding_users_through_the_api(served):
    client, tokens, _ = served
    h = auth(tokens["ana"])
    r = client.post("/api/users", headers=h, json={"name": "cai", "role": "admin", "days": 30})
    assert r.status_code == 201 and r.json()["role"] == "admin"
    assert client.get("/api/me", headers=auth(r.json()["token"])).json() == {"name": "cai", "is_admin": True}
    assert client.post("/api/users", headers=h, json={"name": "cai"}).status_code == 409
    for bad in ({"name": "../x"}, {"name": ""}, {"name": "x" * 65}, {"name": "dan", "role": "root"},
                {"name": "dan", "days": 0}, {"name": "dan", "days": 10**6}):
        r = client.post("/api/users", headers=h, json=bad)
        assert r.status_code == 422 and isinstance(r.json()["detail"], str), bad
    listed = client.get("/api/users", headers=h).json()
    assert [u["name"] for u in listed] == ["ana", "ben", "cai"]
    assert all(set(u) == {"name", "role", "token_expires_at", "revoked"} for u in listed)  # no tokens, no hashes


def test_only_token_hashes_are_stored(project):
    issued = add_user(project, "eve", "admin")
    again = reissue_token(project, "eve")
    with project.engine.connect() as c:
        rows = [tuple(map(str, r)) for r in c.execute(text("SELECT * FROM users"))]
    flat = " ".join(itertools.chain.from_iterable(rows))
    assert issued.token not in flat and again.token not in flat and hash_token(again.token) in flat
    if project.db_url is None:
        assert again.token.encode() not in (project.root / "pathoseg.db").read_bytes()


def test_an_older_database_gets_roles_and_expiry_when_opened(project):
    """A users table from before roles (is_admin) and expiry: migrated, tokens still work."""
    key = "SERIAL" if project.engine.dialect.name == "postgresql" else "INTEGER"  # as SQLAlchemy made them
    with project.engine.begin() as c:
        c.execute(text("DROP TABLE alembic_version"))  # before Alembic
        c.execute(text("DROP TABLE users"))
        c.execute(text(f"CREATE TABLE users (id {key} NOT NULL PRIMARY KEY, name VARCHAR(64) NOT NULL UNIQUE, "
                       "token_hash VARCHAR(64) NOT NULL UNIQUE, is_admin BOOLEAN NOT NULL)"))
        for name, admin in [("old_admin", True), ("old_annotator", False)]:
            c.execute(text("INSERT INTO users (name, token_hash, is_admin) VALUES (:n, :h, :a)"),
                      {"n": name, "h": hash_token(f"token-of-{name}"), "a": admin})
    project.engine.dispose()
    reopened = Project(project.root, project.db_url)
    columns = {c["name"] for c in inspect(reopened.engine).get_columns("users")}
    assert {"role", "token_expires_at", "token_revoked_at"} <= columns and "is_admin" not in columns
    with reopened.session() as s:
        admin = authenticate(s, "token-of-old_admin")
        annotator = authenticate(s, "token-of-old_annotator")
        assert (admin.role, annotator.role) == ("admin", "annotator")
        assert timedelta(days=DEFAULT_TOKEN_DAYS - 1) < annotator.expires - now() <= timedelta(days=DEFAULT_TOKEN_DAYS)
    assert create_user(reopened, "new_one")  # inserting works without the old column
    Project(project.root, project.db_url)  # opening again changes nothing
    revoke_token(reopened, "old_admin", force=True)  # the only admin: revoked on purpose
    with reopened.session() as s, pytest.raises(TokenError, match="revoked"):
        authenticate(s, "token-of-old_admin")


# -- login throttling -------------------------------------------------------------------------
def test_login_throttle_counts_failures_in_a_sliding_window():
    moment = [1000.0]
    throttle = LoginThrottle(attempts=3, window=60, clock=lambda: moment[0])
    for _ in range(2):
        throttle.failed("a")
        moment[0] += 10
    assert throttle.retry_after("a") == 0
    throttle.failed("a")  # the third within 60 s: blocked until the first is 60 s old
    assert throttle.retry_after("a") == 40 and throttle.retry_after("b") == 0
    moment[0] += 39.5
    assert throttle.retry_after("a") == 1
    moment[0] += 0.5
    assert throttle.retry_after("a") == 0
    throttle.failed("a")  # 3 within the window again (t = 1010, 1020, 1060)
    assert throttle.retry_after("a") == 10
    moment[0] += 3600
    assert throttle.retry_after("a") == 0 and throttle._failures == {}
    with pytest.raises(ValueError):
        LoginThrottle(attempts=0)


def test_login_throttle_forgets_the_quietest_clients_first(monkeypatch):
    moment = [0.0]
    throttle = LoginThrottle(attempts=2, window=100, clock=lambda: moment[0])
    monkeypatch.setattr(LoginThrottle, "MAX_CLIENTS", 3)
    for client in "abcd":
        throttle.failed(client)
        moment[0] += 1
    assert sorted(throttle._failures) == ["b", "c", "d"]


def test_too_many_wrong_tokens_get_429_with_retry_after(project):
    token = create_user(project, "ana", admin=True)
    with serve(project, login_attempts=3, login_window=60) as client:
        for _ in range(5):  # no token at all is no guess: not counted
            assert client.get("/api/me").status_code == 401
        for k in range(3):
            assert client.get("/api/me", headers=auth(f"guess{k}")).status_code == 401
        r = client.get("/api/images", headers=auth("guess3"))  # blocked: wrong guesses get 429
        assert r.status_code == 429 and r.json()["detail"].startswith("too many wrong tokens")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # another user behind the same address (a proxy) is not locked out by those guesses
        assert client.get("/api/images", headers=auth(token)).status_code == 200
        other = TestClient(client.app, client=("10.1.2.3", 5000))  # another address is not blocked
        assert other.get("/api/me", headers=auth(token)).status_code == 200
        assert other.get("/api/me", headers=auth("guess")).status_code == 401
    assert "429" in client.app.openapi()["paths"]["/api/images"]["get"]["responses"]


# -- layout: routers and lifespan -------------------------------------------------------------
def test_one_router_per_resource():
    from pathoseg.server import routers

    names = {Path(m.__file__).stem for m in (routers.images, routers.masks, routers.models, routers.jobs,
                                              routers.users, routers.export)}
    assert names == {"images", "masks", "models", "jobs", "users", "export"}
    tags = {route.path: route.tags for router in routers.ROUTERS for route in router.routes}
    assert tags["/api/images/{image_id}/mask"] == ["masks"] and tags["/api/export"] == ["export"]
    assert tags["/api/users/{name}/revoke"] == ["users"] and tags["/api/models/{version}/activate"] == ["models"]


def test_lifespan_requeues_jobs_of_a_stopped_server(project):
    # jobs survive a restart (#11): the running one (no heartbeat: its server died) is queued
    # again for a retry, the queued one stays queued; tests/test_server_jobs.py runs them
    with project.session() as s:
        s.add_all([Job(kind="train", status="running"), Job(kind="predict", status="queued"),
                   Job(kind="predict", status="done", progress=1.0)])
        s.commit()
    token = create_user(project, "ana", admin=True)
    app = create_app(ServerConfig(str(project.root), project.db_url, retrain_every=0, train=SETTINGS, worker=False))
    with TestClient(app) as client:
        jobs = {j["id"]: j for j in client.get("/api/jobs", headers=auth(token)).json()}
        assert [jobs[k]["status"] for k in (1, 2, 3)] == ["queued", "queued", "done"]
        assert "retrying" in jobs[1]["message"]
    assert not app.state.worker.running


# -- the command line -------------------------------------------------------------------------
def test_project_commands_keep_their_syntax_and_manage_users(tmp_path, synth_dir, capsys):
    root = str(tmp_path / "lab")
    assert main(["project", "init", root]) == 0
    assert main(["project", "add", root, str(synth_dir)]) == 0
    assert "imported 12 images" in capsys.readouterr().out
    assert main(["project", "users", "add", root, "ana", "--admin"]) == 0
    ana = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert main(["project", "users", "add", root, "ben", "--days", "3"]) == 0
    ben = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert main(["project", "users", "add", root, "ben"]) == 2  # exists already: one-line error
    assert "exists already" in capsys.readouterr().err
    project = Project(root)
    with project.session() as s:
        assert authenticate(s, ana).role == "admin"
        ben_user = authenticate(s, ben)
        assert ben_user.role == "annotator"
        assert timedelta(days=2) < ben_user.expires - now() <= timedelta(days=3)
    assert main(["project", "users", "list", root]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split()[:2] == ["ana", "admin"] and listed[1].split()[:2] == ["ben", "annotator"]
    assert main(["project", "users", "revoke", root, "ben"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert "revoked" in (main(["project", "users", "list", root]), capsys.readouterr().out)[1].splitlines()[1]
    with project.session() as s, pytest.raises(TokenError):
        authenticate(s, ben)
    assert main(["project", "users", "token", root, "ben"]) == 0
    ben2 = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    with project.session() as s:
        assert authenticate(s, ben2).name == "ben"
    assert main(["project", "users", "token", root, "nobody"]) == 2
    assert main(["project", "export", root, str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "status.csv").is_file()
    for old in (["project", "users", root, "cai"], ["project", "users", "add", root, "cai", "--days", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(old)


def test_serve_exposes_its_training_settings_and_limits():
    args = build_parser().parse_args(["serve", "--project", "lab", "--steps", "30", "--batch-size", "2",
                                      "--crop", "128", "--scale", "0.25", "--device", "cpu", "--retrain-every",
                                      "0", "--max-body-mb", "8", "--token-days", "30", "--login-attempts", "4",
                                      "--login-window", "120", "--preset", "lite1", "--warm-steps", "20",
                                      "--freeze-stages", "2"])
    cfg = server_config(args)
    r = cfg.train.round
    assert (r.first_steps, r.warm, r.train.scale, r.train.crop, r.train.batch_size, r.train.model.preset) == \
        (30, WarmRound(20, 0.5, 2), 0.25, 128, 2, "lite1")
    assert cfg.train.device == "cpu" and r.gate.holdout == 0.2
    assert (cfg.retrain_every, cfg.max_body_bytes, cfg.token_days) == (0, 8 * 2**20, 30)
    assert (cfg.login_attempts, cfg.login_window) == (4, 120)
    defaults = server_config(build_parser().parse_args(["serve", "--project", "lab"]))
    assert defaults == ServerConfig("lab")
    for bad in (["--steps", "0"], ["--retrain-every", "-1"], ["--token-days", "0"], ["--max-body-mb", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--project", "lab", *bad])


def test_the_postgresql_cases_really_use_postgresql(project, db_url):
    assert project.engine.dialect.name == ("sqlite" if db_url is None else "postgresql")
