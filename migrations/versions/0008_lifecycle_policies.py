"""lifecycle policies: retention, immutable tags, namespace quotas, tag pull statistics

Retention policies and immutable-tag rules per repository pattern, storage quotas per
namespace (registry/policies/), each namespace's deduplicated usage (counted here from what
is stored, then kept by every manifest write: registry/metadata/usage.py), and on every tag
its last pull time and pull count, which the registry flushes in batches (never a write
per pull).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
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
    op.create_table(
        "namespace_blobs",
        sa.Column("namespace", _name_type(255), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("refs", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "digest", name=op.f("pk_namespace_blobs")),
    )
    op.create_table(
        "namespace_usage",
        sa.Column("namespace", _name_type(255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", name=op.f("pk_namespace_usage")),
    )
    _count_existing_usage()


def _count_existing_usage() -> None:
    """What each namespace holds already (registry/metadata/usage.py keeps it from here on):
    every digest once per namespace with the number of manifest rows holding it."""
    conn = op.get_bind()
    manifests = conn.execute(
        sa.text(
            "SELECT m.id, m.digest, m.size, r.name FROM manifests m "
            "JOIN repositories r ON r.id = m.repository_id"
        )
    ).all()
    if not manifests:
        return
    held: dict[int, set[str]] = {row[0]: {row[1]} for row in manifests}
    references = conn.execute(
        sa.text(
            "SELECT DISTINCT mr.manifest_id, mr.digest FROM manifest_references mr "
            "JOIN blobs b ON b.digest = mr.digest WHERE mr.kind <> 'manifest'"
        )
    )
    for manifest_id, digest in references:
        held.setdefault(manifest_id, set()).add(digest)
    sizes = {row[1]: int(row[2]) for row in manifests}
    for digest, size in conn.execute(sa.text("SELECT digest, size FROM blobs")):
        sizes.setdefault(digest, int(size))
    refs: dict[tuple[str, str], int] = {}
    for manifest_id, _digest, _size, name in manifests:
        namespace = name.split("/", 1)[0]
        for digest in held[manifest_id]:
            refs[(namespace, digest)] = refs.get((namespace, digest), 0) + 1
    rows = [
        {"namespace": ns, "digest": d, "size": sizes[d], "refs": n}
        for (ns, d), n in sorted(refs.items())
    ]
    table = sa.table(
        "namespace_blobs",
        sa.column("namespace"), sa.column("digest"), sa.column("size"), sa.column("refs"),
    )  # fmt: skip
    for start in range(0, len(rows), 5000):
        op.bulk_insert(table, rows[start : start + 5000])
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["namespace"]] = totals.get(row["namespace"], 0) + row["size"]
    usage = sa.table("namespace_usage", sa.column("namespace"), sa.column("bytes"))
    op.bulk_insert(usage, [{"namespace": ns, "bytes": n} for ns, n in sorted(totals.items())])


def downgrade() -> None:
    op.drop_table("namespace_usage")
    op.drop_table("namespace_blobs")
    op.drop_table("namespace_quotas")
    op.drop_table("immutable_tag_rules")
    op.drop_table("retention_policies")
    with op.batch_alter_table("tags") as batch:
        batch.drop_column("pull_count")
        batch.drop_column("last_pulled_at")
