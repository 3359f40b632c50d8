"""Which model version each image's uncertainty came from (``images.uncertainty_version``),
so a prediction job recomputes it only for images whose stored value belongs to another
version, instead of reading every image's probability map on each upload.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "uncertainty_version" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("images")}:
        op.add_column("images", sa.Column("uncertainty_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("uncertainty_version")
