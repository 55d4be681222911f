"""upload resume state: the hash state and the storage driver's state saved with the session

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 10:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hash_state", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("storage_state", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_column("storage_state")
        batch_op.drop_column("hash_state")
