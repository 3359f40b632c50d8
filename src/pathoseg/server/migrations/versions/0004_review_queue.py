"""The review queue (#20): why an image sorts last (``images.flag``: "no tissue", "too
small"), who asked for each job (``jobs.requested_by``: a user, "auto", "upload") and who
asked for the retrain that made each model version (``models.trained_by``; "import" for a
registered checkpoint).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COLUMNS = {"images": ("flag", 32), "jobs": ("requested_by", 64), "models": ("trained_by", 64)}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, (column, length) in COLUMNS.items():
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            op.add_column(table, sa.Column(column, sa.String(length), nullable=True))


def downgrade() -> None:
    for table, (column, _) in COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
