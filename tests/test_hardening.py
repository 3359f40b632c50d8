"""The app under a hostile network and careless hands: forwarded headers, the login throttle,
security headers, export targets, portable names, the last admin, token lifetimes, and what
annotators see of the workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pathoseg.cli import main
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.errors import PathosegError
from pathoseg.server.app import ServerConfig, create_app
from pathoseg.server.services.export import export
from pathoseg.server.services.images import add_image, safe_name
from pathoseg.server.storage import Job, Project, add_user, now, reissue_token, revoke_token
from tiny import create_user

CFG = SyntheticConfig(size=(48, 48))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path):
    project = Project(tmp_path / "lab", create=True)
    for i in range(2):
        image, labels = synthetic_sample(300 + i, CFG)
        add_image(project, f"img{i}", image, labels if i == 0 else None)
    yield project
    project.engine.dispose()


def _client(project: Project, **settings) -> TestClient:
    return TestClient(create_app(ServerConfig(str(project.root), retrain_every=0, worker=False, **settings)))


def test_every_answer_carries_the_security_headers(project):
    token = create_user(project, "ana", admin=True)
    with _client(project) as client:
        for path, headers in (("/", {}), ("/app.js", {}), ("/api/images", {}),
                              ("/api/images", {"Authorization": f"Bearer {token}"})):
            r = client.get(path, headers=headers)
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
        docs = client.get("/docs")
        assert docs.status_code == 200 and "content-security-policy" not in docs.headers  # its inline script
        assert docs.headers["x-frame-options"] == "DENY"


def test_a_good_token_works_from_an_address_throttled_by_someone_elses_guesses(project):
    token = create_user(project, "ana")
    with _client(project, login_attempts=2, login_window=60) as client:
        for k in range(2):
            assert client.get("/api/me", headers={"Authorization": f"Bearer guess{k}"}).status_code == 401
        assert client.get("/api/me", headers={"Authorization": "Bearer guess2"}).status_code == 429
        assert client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_a_forwarded_address_from_loopback_is_not_trusted_by_default(project, tmp_path):
    """A real server: X-Forwarded-For from 127.0.0.1 does not make each guess a new client."""
    project.engine.dispose()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "pathoseg.cli", "serve", "--project", str(project.root),
                               "--port", str(port), "--no-worker", "--login-attempts", "3"], cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log.open("wb"),
                              stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/api/me"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and server.poll() is None, log.read_text()[-2000:]
                time.sleep(0.2)
        codes = [httpx.get(url, headers={"Authorization": f"Bearer guess{k}", "X-Forwarded-For": f"10.0.0.{k}"},
                           timeout=5).status_code for k in range(5)]
        assert codes == [401, 401, 401, 429, 429], codes
    finally:
        server.terminate()
        server.wait(30)


def test_export_refuses_a_file_a_foreign_folder_and_the_project_and_keeps_predictions_apart(project, tmp_path,
                                                                                            capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    foreign = tmp_path / "thesis"
    (foreign / "chapter1").mkdir(parents=True)
    for target, words in ((afile, "is a file"), (foreign, "not an earlier pathoseg export"),
                          (project.root, "the project's own folder")):
        assert main(["project", "export", str(project.root), str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
    assert afile.read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == ["chapter1"]
    # a new folder, then again over the same export: only saved masks at the top level
    out = export(project, tmp_path / "out")
    assert (out / "instances" / "img0.png").is_file() and not (out / "instances" / "img1.png").exists()
    assert export(project, out) == out  # an earlier export may be replaced


def test_names_that_are_not_portable_are_refused_with_the_reason():
    for name, why in (("CON.png", "device name"), ("lpt1.tif", "device name"), ("nul.x.png", "device name"),
                      ("ok..png", "ending in '.'")):
        with pytest.raises(PathosegError, match=why):
            safe_name(name)
    assert safe_name("console.png") == "console" and safe_name("a.b.png") == "a.b"


def test_the_last_admins_token_is_revoked_only_with_force(project, capsys):
    create_user(project, "ana", admin=True)
    create_user(project, "ben")
    assert main(["project", "users", "revoke", str(project.root), "ana"]) == 2
    err = capsys.readouterr().err.strip()
    assert "last admin with a working token" in err and "--force" in err and len(err.splitlines()) == 1
    revoke_token(project, "ben")  # annotators: no question
    assert main(["project", "users", "revoke", str(project.root), "ana", "--force"]) == 0
    create_user(project, "cai", admin=True)
    reissue_token(project, "ana")
    assert revoke_token(project, "ana").revoked  # another admin still works


def test_a_reissued_token_keeps_the_users_lifetime(project):
    add_user(project, "ana", "admin", days=7)
    again = reissue_token(project, "ana")
    assert timedelta(days=6) < again.expires - now() <= timedelta(days=7)
    longer = reissue_token(project, "ana", days=30)
    assert timedelta(days=29) < longer.expires - now() <= timedelta(days=30)
    assert timedelta(days=29) < reissue_token(project, "ana").expires - now()  # the new lifetime stays


def test_annotators_do_not_see_which_worker_runs_a_job(project):
    admin, annotator = create_user(project, "ana", admin=True), create_user(project, "ben")
    with project.session() as s:
        s.add(Job(kind="train", status="running", worker="lab-gpu-7:4242:a1b2c3", heartbeat_at=now(),
                  message="running on lab-gpu-7:4242:a1b2c3"))
        s.commit()
    with _client(project) as client:
        seen = client.get("/api/jobs", headers={"Authorization": f"Bearer {annotator}"}).json()[0]
        assert seen["worker"] is None and "lab-gpu-7" not in seen["message"] and "4242" not in seen["message"]
        assert seen["message"] == "running on a worker"
        full = client.get("/api/jobs/1", headers={"Authorization": f"Bearer {admin}"}).json()
        assert full["worker"] == "lab-gpu-7:4242:a1b2c3"
