"""One loop: image grades (the validation set is drawn per grade), and each model version's
scores on the project's validation set with the gate's note.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table, column in (("images", sa.Column("grade", sa.String(32), nullable=True)),
                          ("models", sa.Column("scores", sa.JSON(), nullable=True)),
                          ("models", sa.Column("note", sa.String(500), nullable=True))):
        if column.name not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}:
            op.add_column(table, column)


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("note")
        batch.drop_column("scores")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("grade")
