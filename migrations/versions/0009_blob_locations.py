"""blob locations: where a blob's bytes are, when not at its digest's key

A chunked push on S3 is a multipart upload whose key is chosen before the digest is known;
copying its bytes to the digest's key when it finishes took a quarter of the push. They now
stay where they were written, and the blob row names that key (NULL: the digest's own key,
as for every blob stored before).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 20:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("location", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_column("location")
