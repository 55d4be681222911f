"""lifecycle policies: retention, immutable tags, namespace quotas, tag pull statistics

Retention policies and immutable-tag rules per repository pattern, storage quotas per
namespace (registry/policies/), and on every tag its last pull time and pull count, which
the registry flushes in batches (never a write per pull).

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def _name_type(length: int) -> sa.String:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")  # type: ignore[return-value]


def upgrade() -> None:
    with op.batch_alter_table("tags") as batch:
        batch.add_column(sa.Column("last_pulled_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("pull_count", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_table(
        "retention_policies",
        sa.Column("pattern", sa.String(length=255), nullable=False),
        sa.Column("keep_last", sa.Integer(), nullable=True),
        sa.Column("keep_tags", sa.String(length=1024), nullable=True),
        sa.Column("keep_pulled_within", sa.BigInteger(), nullable=True),
        sa.Column("keep_pushed_within", sa.BigInteger(), nullable=True),
        sa.Column("untagged_after", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pattern", name=op.f("pk_retention_policies")),
    )
    op.create_table(
        "immutable_tag_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pattern", sa.String(length=255), nullable=False),
        sa.Column("tags", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_immutable_tag_rules")),
        sa.UniqueConstraint("pattern", "tags", name="uq_immutable_tag_rules_pattern_tags"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "namespace_quotas",
        sa.Column("namespace", _name_type(255), nullable=False),
        sa.Column("limit_bytes", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("namespace", name=op.f("pk_namespace_quotas")),
    )


def downgrade() -> None:
    op.drop_table("namespace_quotas")
    op.drop_table("immutable_tag_rules")
    op.drop_table("retention_policies")
    with op.batch_alter_table("tags") as batch:
        batch.drop_column("pull_count")
        batch.drop_column("last_pulled_at")
