"""Every SQL statement about identity: users, teams, grants, public patterns, robot and refresh
tokens, the audit log and failed-login counters.

Secrets never reach this module: passwords arrive hashed, tokens as their SHA-256.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from registry.metadata.db import Database, SQLConnection
from registry.metadata.tables import (
    audit_log,
    grants,
    login_failures,
    public_repositories,
    refresh_tokens,
    robot_tokens,
    team_members,
    teams,
    users,
)


def now() -> datetime:
    return datetime.now(UTC)


def aware(stamp: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; every one we store is UTC."""
    if stamp is None:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


class IdentityConflict(Exception):
    """The name is taken."""


class IdentityNotFound(Exception):
    """No such user, team, token or grant."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    password_hash: str
    admin: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TeamRecord:
    name: str
    members: list[str]


@dataclass(frozen=True, slots=True)
class GrantRecord:
    kind: str  # "user" or "team"
    subject: str
    pattern: str
    actions: str


@dataclass(frozen=True, slots=True)
class RobotRecord:
    id: int
    name: str  # robot$<owner>+<name> or robot$<name>
    owner: str | None
    scopes: list[tuple[str, str]]
    admin: bool
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    legacy_name: str | None = None  # its name before robots had their own namespace

    def expired(self, at: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= at


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    user_id: int | None
    robot_id: int | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    address: str
    action: str
    target: str
    detail: dict[str, Any]


class IdentityStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Users --------------------------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str, admin: bool = False) -> None:
        stamp = now()
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    insert(users).values(
                        name=name,
                        password_hash=password_hash,
                        admin=admin,
                        created_at=stamp,
                        password_changed_at=stamp,
                    )
                )
        except IntegrityError:
            raise IdentityConflict(f"user {name} exists") from None

    async def get_user(self, name: str) -> UserRecord | None:
        return await self._user(users.c.name == name)

    async def get_user_by_id(self, user_id: int) -> UserRecord | None:
        return await self._user(users.c.id == user_id)

    async def _user(self, where: Any) -> UserRecord | None:
        query = select(
            users.c.id, users.c.name, users.c.password_hash, users.c.admin, users.c.created_at
        ).where(where)
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return UserRecord(row[0], row[1], row[2], bool(row[3]), aware(row[4]) or now())

    async def list_users(self) -> list[UserRecord]:
        query = select(
            users.c.id, users.c.name, users.c.password_hash, users.c.admin, users.c.created_at
        ).order_by(users.c.name)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [UserRecord(r[0], r[1], r[2], bool(r[3]), aware(r[4]) or now()) for r in rows]

    async def set_password(self, name: str, password_hash: str, *, sign_out: bool = True) -> None:
        """Replace the hash; with `sign_out`, identity tokens issued before stop working."""
        async with self.db.write() as conn:
            user_id = await self._user_id(conn, name)
            await conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(password_hash=password_hash, password_changed_at=now())
            )
            if sign_out:
                await conn.execute(
                    delete(refresh_tokens).where(refresh_tokens.c.user_id == user_id)
                )

    async def set_admin(self, name: str, admin: bool) -> None:
        async with self.db.write() as conn:
            user_id = await self._user_id(conn, name)
            await conn.execute(update(users).where(users.c.id == user_id).values(admin=admin))

    async def delete_user(self, name: str) -> None:
        async with self.db.write() as conn:
            user_id = await self._user_id(conn, name)
            # Explicitly, as SQLite enforces ON DELETE CASCADE only with foreign keys on.
            owned = select(robot_tokens.c.id).where(robot_tokens.c.owner_id == user_id)
            await conn.execute(delete(refresh_tokens).where(refresh_tokens.c.robot_id.in_(owned)))
            await conn.execute(delete(robot_tokens).where(robot_tokens.c.owner_id == user_id))
            await conn.execute(delete(refresh_tokens).where(refresh_tokens.c.user_id == user_id))
            await conn.execute(delete(grants).where(grants.c.user_id == user_id))
            await conn.execute(delete(team_members).where(team_members.c.user_id == user_id))
            await conn.execute(delete(users).where(users.c.id == user_id))

    async def _user_id(self, conn: SQLConnection, name: str) -> int:
        user_id = (await conn.execute(select(users.c.id).where(users.c.name == name))).scalar()
        if user_id is None:
            raise IdentityNotFound(f"no user {name}")
        return int(user_id)

    # Teams --------------------------------------------------------------------------------

    async def create_team(self, name: str) -> None:
        try:
            async with self.db.write() as conn:
                await conn.execute(insert(teams).values(name=name, created_at=now()))
        except IntegrityError:
            raise IdentityConflict(f"team {name} exists") from None

    async def delete_team(self, name: str) -> None:
        async with self.db.write() as conn:
            team_id = await self._team_id(conn, name)
            await conn.execute(delete(grants).where(grants.c.team_id == team_id))
            await conn.execute(delete(team_members).where(team_members.c.team_id == team_id))
            await conn.execute(delete(teams).where(teams.c.id == team_id))

    async def add_member(self, team: str, user: str) -> None:
        async with self.db.write() as conn:
            team_id = await self._team_id(conn, team)
            user_id = await self._user_id(conn, user)
            await conn.execute(
                self.db.insert_ignore(team_members).values(team_id=team_id, user_id=user_id)
            )

    async def remove_member(self, team: str, user: str) -> None:
        async with self.db.write() as conn:
            team_id = await self._team_id(conn, team)
            user_id = await self._user_id(conn, user)
            result = await conn.execute(
                delete(team_members).where(
                    team_members.c.team_id == team_id, team_members.c.user_id == user_id
                )
            )
            if not result.rowcount:
                raise IdentityNotFound(f"{user} is not in team {team}")

    async def list_teams(self) -> list[TeamRecord]:
        query = (
            select(teams.c.name, users.c.name)
            .select_from(
                teams.outerjoin(team_members, team_members.c.team_id == teams.c.id).outerjoin(
                    users, users.c.id == team_members.c.user_id
                )
            )
            .order_by(teams.c.name, users.c.name)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        found: dict[str, list[str]] = {}
        for team, member in rows:
            found.setdefault(team, [])
            if member is not None:
                found[team].append(member)
        return [TeamRecord(name, members) for name, members in found.items()]

    async def teams_of(self, user_id: int) -> list[str]:
        query = (
            select(teams.c.name)
            .select_from(teams.join(team_members, team_members.c.team_id == teams.c.id))
            .where(team_members.c.user_id == user_id)
            .order_by(teams.c.name)
        )
        async with self.db.read() as conn:
            return list((await conn.execute(query)).scalars())

    async def _team_id(self, conn: SQLConnection, name: str) -> int:
        team_id = (await conn.execute(select(teams.c.id).where(teams.c.name == name))).scalar()
        if team_id is None:
            raise IdentityNotFound(f"no team {name}")
        return int(team_id)

    # Grants -------------------------------------------------------------------------------

    async def _subject(self, conn: SQLConnection, kind: str, name: str) -> tuple[str, int]:
        """The grants column and id of the user or team `name`."""
        if kind == "user":
            return "user_id", await self._user_id(conn, name)
        if kind == "team":
            return "team_id", await self._team_id(conn, name)
        raise ValueError(f"grants go to a user or a team, not {kind!r}")

    async def set_grant(self, kind: str, name: str, pattern: str, actions: str) -> None:
        """Give `actions` on `pattern`, replacing what the subject had on it."""
        async with self.db.write() as conn:
            column, subject_id = await self._subject(conn, kind, name)
            await conn.execute(
                delete(grants).where(grants.c[column] == subject_id, grants.c.pattern == pattern)
            )
            await conn.execute(
                insert(grants).values(
                    {
                        column: subject_id,
                        "pattern": pattern,
                        "actions": actions,
                        "created_at": now(),
                    }
                )
            )

    async def get_grant(self, kind: str, name: str, pattern: str) -> str | None:
        async with self.db.read() as conn:
            column, subject_id = await self._subject(conn, kind, name)
            query = select(grants.c.actions).where(
                grants.c[column] == subject_id, grants.c.pattern == pattern
            )
            return (await conn.execute(query)).scalar()

    async def delete_grant(self, kind: str, name: str, pattern: str) -> None:
        async with self.db.write() as conn:
            column, subject_id = await self._subject(conn, kind, name)
            result = await conn.execute(
                delete(grants).where(grants.c[column] == subject_id, grants.c.pattern == pattern)
            )
            if not result.rowcount:
                raise IdentityNotFound(f"{kind} {name} has no grant on {pattern}")

    async def list_grants(self) -> list[GrantRecord]:
        query = (
            select(users.c.name, teams.c.name, grants.c.pattern, grants.c.actions)
            .select_from(
                grants.outerjoin(users, users.c.id == grants.c.user_id).outerjoin(
                    teams, teams.c.id == grants.c.team_id
                )
            )
            .order_by(grants.c.pattern, grants.c.id)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            GrantRecord("user" if user else "team", user or team, pattern, actions)
            for user, team, pattern, actions in rows
        ]

    async def grants_for_user(self, user_id: int) -> list[tuple[str, str]]:
        """(pattern, actions) given to the user directly or through any of their teams."""
        in_team = select(team_members.c.team_id).where(team_members.c.user_id == user_id)
        query = select(grants.c.pattern, grants.c.actions).where(
            or_(grants.c.user_id == user_id, grants.c.team_id.in_(in_team))
        )
        async with self.db.read() as conn:
            return [(r[0], r[1]) for r in (await conn.execute(query)).all()]

    # Public repositories ------------------------------------------------------------------

    async def add_public(self, pattern: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                self.db.insert_ignore(public_repositories).values(pattern=pattern, created_at=now())
            )

    async def remove_public(self, pattern: str) -> None:
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(public_repositories).where(public_repositories.c.pattern == pattern)
            )
            if not result.rowcount:
                raise IdentityNotFound(f"{pattern} is not public")

    async def public_patterns(self) -> list[str]:
        query = select(public_repositories.c.pattern).order_by(public_repositories.c.pattern)
        async with self.db.read() as conn:
            return list((await conn.execute(query)).scalars())

    # Robot tokens -------------------------------------------------------------------------

    async def create_robot(
        self,
        name: str,
        owner: str | None,
        secret_hash: str,
        scopes: Sequence[tuple[str, str]],
        admin: bool,
        expires_at: datetime | None,
    ) -> None:
        try:
            async with self.db.write() as conn:
                owner_id = await self._user_id(conn, owner) if owner else None
                await conn.execute(
                    insert(robot_tokens).values(
                        name=name,
                        owner_id=owner_id,
                        secret_hash=secret_hash,
                        scopes=json.dumps([list(s) for s in scopes]),
                        admin=admin,
                        created_at=now(),
                        expires_at=expires_at,
                    )
                )
        except IntegrityError:
            raise IdentityConflict(f"token {name} exists") from None

    def _robot_query(self) -> Any:
        return select(
            robot_tokens.c.id,
            robot_tokens.c.name,
            users.c.name,
            robot_tokens.c.scopes,
            robot_tokens.c.admin,
            robot_tokens.c.created_at,
            robot_tokens.c.expires_at,
            robot_tokens.c.last_used_at,
            robot_tokens.c.legacy_name,
        ).select_from(robot_tokens.outerjoin(users, users.c.id == robot_tokens.c.owner_id))

    @staticmethod
    def _robot(row: Any) -> RobotRecord:
        scopes = [(str(p), str(a)) for p, a in json.loads(row[3])]
        return RobotRecord(
            row[0], row[1], row[2], scopes, bool(row[4]),
            aware(row[5]) or now(), aware(row[6]), aware(row[7]), row[8],
        )  # fmt: skip

    async def robot_by_secret(self, secret_hash: str) -> RobotRecord | None:
        query = self._robot_query().where(robot_tokens.c.secret_hash == secret_hash)
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        return self._robot(row) if row else None

    async def robot_by_name(self, name: str) -> RobotRecord | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(self._robot_query().where(robot_tokens.c.name == name))
            ).first()
        return self._robot(row) if row else None

    async def robot_by_id(self, robot_id: int) -> RobotRecord | None:
        query = self._robot_query().where(robot_tokens.c.id == robot_id)
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        return self._robot(row) if row else None

    async def list_robots(self, owner: str | None = None) -> list[RobotRecord]:
        query = self._robot_query().order_by(robot_tokens.c.name)
        if owner is not None:
            query = query.where(users.c.name == owner)
        async with self.db.read() as conn:
            return [self._robot(row) for row in (await conn.execute(query)).all()]

    async def delete_robot(self, name: str) -> None:
        async with self.db.write() as conn:
            robot_id = (
                await conn.execute(select(robot_tokens.c.id).where(robot_tokens.c.name == name))
            ).scalar()
            if robot_id is None:
                raise IdentityNotFound(f"no token {name}")
            await conn.execute(delete(refresh_tokens).where(refresh_tokens.c.robot_id == robot_id))
            await conn.execute(delete(robot_tokens).where(robot_tokens.c.id == robot_id))

    async def touch_robot(self, robot_id: int, every: timedelta = timedelta(minutes=1)) -> None:
        """Record a use, at most once per `every` (each write serialises on SQLite)."""
        stamp = now()
        async with self.db.write() as conn:
            await conn.execute(
                update(robot_tokens)
                .where(
                    robot_tokens.c.id == robot_id,
                    or_(
                        robot_tokens.c.last_used_at.is_(None),
                        robot_tokens.c.last_used_at < stamp - every,
                    ),
                )
                .values(last_used_at=stamp)
            )

    # Refresh tokens -----------------------------------------------------------------------

    async def create_refresh(
        self,
        secret_hash: str,
        user_id: int | None,
        robot_id: int | None,
        client_id: str | None,
        expires_at: datetime,
    ) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                insert(refresh_tokens).values(
                    secret_hash=secret_hash,
                    user_id=user_id,
                    robot_id=robot_id,
                    client_id=client_id,
                    created_at=now(),
                    expires_at=expires_at,
                )
            )

    async def refresh_by_secret(self, secret_hash: str) -> RefreshRecord | None:
        query = select(
            refresh_tokens.c.user_id, refresh_tokens.c.robot_id, refresh_tokens.c.expires_at
        ).where(refresh_tokens.c.secret_hash == secret_hash)
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return RefreshRecord(row[0], row[1], aware(row[2]) or now())

    async def purge_expired_refresh(self) -> int:
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(refresh_tokens).where(refresh_tokens.c.expires_at < now())
            )
            return int(result.rowcount or 0)

    # Audit log ----------------------------------------------------------------------------

    async def audit(
        self, actor: str, address: str, action: str, target: str, detail: dict[str, Any] | None
    ) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                insert(audit_log).values(
                    at=now(),
                    actor=actor[:128],
                    address=address[:64],
                    action=action[:32],
                    target=target[:512],
                    detail=json.dumps(detail) if detail else None,
                )
            )

    async def audit_entries(
        self,
        limit: int = 100,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
    ) -> list[AuditRecord]:
        """Newest first."""
        query = select(
            audit_log.c.id,
            audit_log.c.at,
            audit_log.c.actor,
            audit_log.c.address,
            audit_log.c.action,
            audit_log.c.target,
            audit_log.c.detail,
        )
        if actor is not None:
            query = query.where(audit_log.c.actor == actor)
        if action is not None:
            query = query.where(audit_log.c.action == action)
        if since is not None:
            query = query.where(audit_log.c.at >= since)
        query = query.order_by(audit_log.c.id.desc()).limit(limit)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            AuditRecord(r[0], aware(r[1]) or now(), r[2], r[3], r[4], r[5],
                        json.loads(r[6]) if r[6] else {})
            for r in rows
        ]  # fmt: skip

    # Failed logins ------------------------------------------------------------------------

    async def failures(self, keys: Sequence[str]) -> dict[str, tuple[int, datetime]]:
        query = select(
            login_failures.c.key, login_failures.c.failures, login_failures.c.window_started_at
        ).where(login_failures.c.key.in_(list(keys)))
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return {r[0]: (int(r[1]), aware(r[2]) or now()) for r in rows}

    async def count_failure(self, keys: Sequence[str], window: timedelta) -> None:
        """One more failure for each key, in its current window or a new one."""
        stamp = now()
        expired = login_failures.c.window_started_at < stamp - window
        async with self.db.write() as conn:
            for key in keys:
                await conn.execute(
                    self.db.insert_ignore(login_failures).values(
                        key=key, failures=0, window_started_at=stamp
                    )
                )
                await conn.execute(
                    update(login_failures)
                    .where(login_failures.c.key == key)
                    .values(
                        failures=case((expired, 1), else_=login_failures.c.failures + 1),
                        window_started_at=case(
                            (expired, stamp), else_=login_failures.c.window_started_at
                        ),
                    )
                )

    async def clear_failures(self, key: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(login_failures).where(login_failures.c.key == key))

    async def purge_failures(self, older_than: datetime) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                delete(login_failures).where(login_failures.c.window_started_at < older_than)
            )
