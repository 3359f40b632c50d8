"""Bring a project database from before Alembic (any pathoseg up to 912216b) to the baseline.

Each step checks what the database has, so a database made by any earlier version gets
exactly what it lacks: the unique (image, version) index of masks, user roles and token
expiry (``is_admin`` becomes ``role``), the editor's operation log, the job queue's columns,
one queued job per kind and one active model.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TOKEN_DAYS = 90  # tokens issued before expiry existed expire this long after the upgrade


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def _indexes(table: str) -> set[str]:
    return {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table)}


def upgrade() -> None:
    bind = op.get_bind()
    if "uq_masks_image_version" not in _indexes("masks"):
        dupes = bind.execute(sa.text("SELECT image_id, version FROM masks GROUP BY image_id, version "
                                     "HAVING COUNT(*) > 1")).first()
        if dupes is None:
            op.create_index("uq_masks_image_version", "masks", ["image_id", "version"], unique=True)
        else:
            warnings.warn("the masks table has duplicate (image, version) rows from an older pathoseg; new saves "
                          "are still checked, but remove the duplicates to get the database's own guard",
                          stacklevel=2)
    users = _columns("users")
    with op.batch_alter_table("users") as batch:
        if "role" not in users:
            batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="annotator"))
        if "token_expires_at" not in users:
            batch.add_column(sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=True))
        if "token_revoked_at" not in users:
            batch.add_column(sa.Column("token_revoked_at", sa.DateTime(timezone=True), nullable=True))
    if "is_admin" in users:
        bind.execute(sa.text("UPDATE users SET role = 'admin' WHERE is_admin"))
        with op.batch_alter_table("users") as batch:
            batch.drop_column("is_admin")
    bind.execute(sa.text("UPDATE users SET token_expires_at = :at WHERE token_expires_at IS NULL"),
                 {"at": datetime.now(UTC) + timedelta(days=TOKEN_DAYS)})
    if "operation_log" not in _columns("masks"):
        op.add_column("masks", sa.Column("operation_log", sa.JSON(), nullable=True))
    jobs = _columns("jobs")
    for column in (sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
                   sa.Column("worker", sa.String(200), nullable=True),
                   sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
                   sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
                   sa.Column("model_version", sa.Integer(), nullable=True)):
        if column.name not in jobs:
            op.add_column("jobs", column)
    if "uq_jobs_one_queued" not in _indexes("jobs"):
        # queued duplicates (several servers' leftovers) fail first, naming the one kept
        kept: dict[str, int] = {}
        for job_id, kind in bind.execute(sa.text("SELECT id, kind FROM jobs WHERE status = 'queued' ORDER BY id")):
            if kind in kept:
                bind.execute(sa.text("UPDATE jobs SET status = 'failed', finished_at = :at, message = :m "
                                     "WHERE id = :id"),
                             {"at": datetime.now(UTC), "m": f"a duplicate of queued job #{kept[kind]}", "id": job_id})
            kept.setdefault(kind, job_id)
        op.create_index("uq_jobs_one_queued", "jobs", ["kind"], unique=True,
                        sqlite_where=sa.text("status = 'queued'"), postgresql_where=sa.text("status = 'queued'"))
    if "uq_models_one_active" not in _indexes("models"):
        # several active (a race of older servers): the newest stays active
        active = [v for (v,) in bind.execute(sa.text("SELECT version FROM models WHERE active "
                                                     "ORDER BY version DESC"))]
        for version in active[1:]:
            bind.execute(sa.text("UPDATE models SET active = :no WHERE version = :v"), {"no": False, "v": version})
        op.create_index("uq_models_one_active", "models", ["active"], unique=True,
                        sqlite_where=sa.text("active"), postgresql_where=sa.text("active"))


def downgrade() -> None:
    raise NotImplementedError("pathoseg projects are not downgraded: restore a backup of the project instead")
