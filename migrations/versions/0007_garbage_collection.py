"""garbage collection: blob incarnations and deletion marks, review queues, runs

Existing blobs and untagged manifests are queued for review as of the upgrade: each grace
period counts from then, so whatever was pushed just before it is not collected at once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("incarnation", sa.String(length=32), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("deleting_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_blobs_deleting_since", ["deleting_since"], unique=False)
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.alter_column("incarnation", server_default=None)

    op.create_index("ix_repository_blobs_digest", "repository_blobs", ["digest"], unique=False)
    op.create_table(
        "gc_blob_reviews",
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_gc_blob_reviews")),
    )
    op.create_index("ix_gc_blob_reviews_event_at", "gc_blob_reviews", ["event_at"], unique=False)
    op.create_table(
        "gc_manifest_reviews",
        sa.Column("repository_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["repository_id"],
            ["repositories.id"],
            name=op.f("fk_gc_manifest_reviews_repository_id_repositories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("repository_id", "digest", name=op.f("pk_gc_manifest_reviews")),
    )
    op.create_index(
        "ix_gc_manifest_reviews_event_at",
        "gc_manifest_reviews",
        ["event_at"],
        unique=False,
    )
    op.create_table(
        "gc_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("blobs_deleted", sa.BigInteger(), nullable=False),
        sa.Column("bytes_reclaimed", sa.BigInteger(), nullable=False),
        sa.Column("manifests_deleted", sa.BigInteger(), nullable=False),
        sa.Column("uploads_expired", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gc_runs")),
    )
    op.create_index("ix_gc_runs_started_at", "gc_runs", ["started_at"], unique=False)

    # Everything already stored gets one review. (A typed parameter: SQLite keeps times as
    # text, in SQLAlchemy's format.)
    at = sa.bindparam("at", datetime.now(UTC), type_=sa.DateTime(timezone=True))
    op.get_bind().execute(
        sa.text(
            "INSERT INTO gc_blob_reviews (digest, event_at) SELECT digest, :at FROM blobs"
        ).bindparams(at)
    )
    op.get_bind().execute(
        sa.text(
            "INSERT INTO gc_manifest_reviews (repository_id, digest, event_at)"
            " SELECT m.repository_id, m.digest, :at FROM manifests m WHERE NOT EXISTS"
            " (SELECT 1 FROM tags t WHERE t.repository_id = m.repository_id"
            " AND t.manifest_digest = m.digest)"
        ).bindparams(at)
    )


def downgrade() -> None:
    op.drop_index("ix_repository_blobs_digest", table_name="repository_blobs")
    op.drop_index("ix_gc_runs_started_at", table_name="gc_runs")
    op.drop_table("gc_runs")
    op.drop_index("ix_gc_manifest_reviews_event_at", table_name="gc_manifest_reviews")
    op.drop_table("gc_manifest_reviews")
    op.drop_index("ix_gc_blob_reviews_event_at", table_name="gc_blob_reviews")
    op.drop_table("gc_blob_reviews")
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_index("ix_blobs_deleting_since")
        batch_op.drop_column("deleting_since")
        batch_op.drop_column("incarnation")
