"""Schema migrations with Alembic: a project's database is brought to the current schema when
the project opens (``server/migrations/versions``, one revision per change).

A new database gets the tables as :mod:`pathoseg.server.storage` declares them, stamped with the
newest revision; a database from before Alembic (no ``alembic_version`` table) starts at
revision 0001, which checks what it has and adds what it lacks; every later revision runs
once. Processes opening a project at the same moment (a server and its workers) migrate one
at a time: a lock file beside a SQLite database, an advisory lock on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, inspect, text

MIGRATIONS = Path(__file__).parent / "migrations"
LOCK_KEY = 0x70617468  # pg_advisory_lock key: "path"


def alembic_config(connection=None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as c:
        return MigrationContext.configure(c).get_current_revision()


@contextlib.contextmanager
def one_at_a_time(engine: Engine, lock_file: Path) -> Iterator[None]:
    """Hold the project's migration lock."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as c:
            c.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
            try:
                yield
            finally:
                c.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                c.commit()
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def migrate(engine: Engine, metadata: MetaData, lock_file: Path) -> None:
    """Bring the database to the newest revision (see the module's docstring)."""
    head = head_revision()
    if current_revision(engine) == head:
        return
    with one_at_a_time(engine, lock_file):
        current = current_revision(engine)  # another process may have migrated meanwhile
        if current == head:
            return
        ours = set(metadata.tables) & set(inspect(engine).get_table_names())
        with engine.begin() as c:
            if current is None and not ours:  # a new database
                metadata.create_all(c)
                command.stamp(alembic_config(c), "head")
            else:
                metadata.create_all(c)  # tables added since (none of the revisions create tables)
                command.upgrade(alembic_config(c), "head")
