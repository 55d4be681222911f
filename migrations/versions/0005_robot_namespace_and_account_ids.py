"""robot namespace and account ids: robots named robot$<owner>+<name>, ids never reused

Robots shared one namespace with users, so a user could make a robot named like another
user, log in as it, and reset that user's failed-login count. Robots are now named
`robot$<owner>+<name>` (`robot$<name>` without owner), which no user name can equal; each
existing robot is renamed so, and keeps its old name in `legacy_name`, still accepted at
login with its secret, so CI jobs keep working until they are moved to the new name.

Tokens now name their account by id. On SQLite, `users` and `robot_tokens` are rebuilt with
AUTOINCREMENT so a removed account's id is never given to a new one (PostgreSQL's sequences
never reuse). Failed-login counts keyed by typed name are dropped: they are now keyed by
account id, and the old keys would never be read again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_robots = sa.table(
    "robot_tokens",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("legacy_name", sa.String),
    sa.column("owner_id", sa.Integer),
)
_users = sa.table("users", sa.column("id", sa.Integer), sa.column("name", sa.String))


def _rebuild_kwargs() -> dict[str, object]:
    """SQLite: rebuild the table with AUTOINCREMENT; elsewhere plain ALTERs do."""
    if op.get_bind().dialect.name == "sqlite":
        return {"recreate": "always", "table_kwargs": {"sqlite_autoincrement": True}}
    return {}


def upgrade() -> None:
    with op.batch_alter_table("users", **_rebuild_kwargs()) as batch_op:  # type: ignore[arg-type]
        pass
    with op.batch_alter_table("robot_tokens", **_rebuild_kwargs()) as batch_op:  # type: ignore[arg-type]
        batch_op.alter_column(
            "name", existing_type=sa.String(length=64), type_=sa.String(length=160)
        )
        batch_op.add_column(sa.Column("legacy_name", sa.String(length=64), nullable=True))

    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_robots.c.id, _robots.c.name, _users.c.name).select_from(
            _robots.outerjoin(_users, _users.c.id == _robots.c.owner_id)
        )
    ).all()
    for robot_id, name, owner in rows:
        if name.startswith("robot$"):
            continue
        new = f"robot${owner}+{name}" if owner else f"robot${name}"
        bind.execute(
            sa.update(_robots)
            .where(_robots.c.id == robot_id)
            .values(name=new, legacy_name=name)
        )
    failures = sa.table("login_failures", sa.column("key", sa.String))
    bind.execute(sa.delete(failures).where(failures.c.key.like("account:%")))


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_robots.c.id, _robots.c.name, _robots.c.legacy_name)
    ).all()
    taken = {legacy for _id, _name, legacy in rows if legacy}
    for robot_id, name, legacy in rows:
        old = legacy
        if old is None:  # made after the upgrade: its short name, made unique if need be
            old = name.removeprefix("robot$").split("+")[-1][:50]
            if old in taken:
                old = f"{old}-{robot_id}"
            taken.add(old)
        bind.execute(sa.update(_robots).where(_robots.c.id == robot_id).values(name=old))
    with op.batch_alter_table("robot_tokens") as batch_op:
        batch_op.drop_column("legacy_name")
        batch_op.alter_column(
            "name", existing_type=sa.String(length=160), type_=sa.String(length=64)
        )
