from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pathoseg.data.synthetic import SyntheticConfig, write_synthetic

ROOT = Path(__file__).resolve().parents[1]
GLAS = Path(os.environ.get("PATHOSEG_GLAS", ROOT / ".." / "shared" / "data" / "glas")).resolve()


@pytest.fixture(scope="session")
def glas_dir() -> Path:
    if not (GLAS / "Grade.csv").is_file():
        pytest.skip("GlaS not present at ../shared/data/glas")
    return GLAS


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic images/ + masks/ folder shared by several tests."""
    return write_synthetic(tmp_path_factory.mktemp("synth"), n=12, seed=3, cfg=SyntheticConfig(size=(96, 128)))


# -- a throwaway PostgreSQL server for the storage and API tests ---------------------------------
# `make test` installs Debian's postgresql; this starts a private server (initdb into a temporary
# folder, pg_ctl on a free port, as the `postgres` user when the tests run as root) and gives
# each test a database of its own. Without one the PostgreSQL cases skip, except under CI=true,
# where they fail.
def _pg_bin(name: str) -> str | None:
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                      key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return str(versions[-1]) if versions else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _NoPostgres(Exception):
    pass


def _start_postgres(folder: Path) -> tuple[str, Callable[[], None]]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise _NoPostgres("PostgreSQL's initdb/pg_ctl not found (Debian: apt-get install postgresql; make test does)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise _NoPostgres("the psycopg driver is not installed (pip install -e '.[dev]')") from None
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise _NoPostgres("running as root and there is no 'postgres' user to run the server as") from None
        runuser = shutil.which("runuser")
        prefix = [runuser, "-u", "postgres", "--"] if runuser else []
        if not prefix:
            raise _NoPostgres("running as root and runuser is missing")
        shutil.chown(folder, "postgres")
    data, log = folder / "data", folder / "server.log"

    def run(*cmd: str) -> None:
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise _NoPostgres(f"{Path(cmd[0]).name} failed: {' | '.join(tail)}")

    run(initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
    for attempt in range(3):  # the free port may be taken in between: try another
        port = _free_port()
        options = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200")
        try:
            run(pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
            break
        except _NoPostgres:
            if attempt == 2:
                raise

    def stop() -> None:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                       timeout=60)

    return f"postgresql+psycopg://postgres@127.0.0.1:{port}", stop


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL (without database) of a PostgreSQL server started for this test session."""
    folder = Path(tempfile.mkdtemp(prefix="pathoseg-pg-"))  # not under pytest's root-only tmp folder
    try:
        url, stop = _start_postgres(folder)
    except (_NoPostgres, OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        reason = f"PostgreSQL could not be started: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: PostgreSQL tests must run here)", pytrace=False)
        pytest.skip(reason)
    try:
        yield url
    finally:
        stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = postgres_server.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server}/{name}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str | None:
    """Each storage/API test twice: on the project's SQLite file (None) and on PostgreSQL."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
