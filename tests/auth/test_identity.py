"""`IdentityStore` and the account logic above it, on migrated SQLite and PostgreSQL: the
same tests for both, as the registry runs on either."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import text

from registry.auth import management
from registry.auth.accounts import Accounts, BadCredentials, Principal
from registry.auth.audit import AuditLog
from registry.auth.passwords import secret_digest
from registry.auth.ratelimit import LoginLimiter, LoginLimits
from registry.errors import TooManyRequests
from registry.metadata.db import Database, migrations_path, upgrade_schema
from registry.metadata.identity import IdentityConflict, IdentityNotFound, IdentityStore, now

from support.postgres import PostgresServer


def migrate(url: str, revision: str = "head") -> None:
    def upgrade() -> None:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(migrations_path()))
        cfg.attributes["database_url"] = url
        command.upgrade(cfg, revision)

    with ThreadPoolExecutor(1) as pool:  # Alembic's env calls asyncio.run
        pool.submit(upgrade if revision != "head" else lambda: upgrade_schema(url)).result()


@pytest.fixture(scope="session")
def identity_postgres(postgres: PostgresServer) -> str:
    url = postgres.create_database("identity_tests")
    migrate(url)
    return url


async def _emptied(url: str) -> str:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        await conn.execute(f"TRUNCATE {', '.join(r[0] for r in rows)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
async def identity(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IdentityStore]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
        await asyncio.to_thread(migrate, url)
    else:
        url = await _emptied(request.getfixturevalue("identity_postgres"))
    db = Database(url, pool_size=4)
    try:
        yield IdentityStore(db)
    finally:
        await db.dispose()


def accounts(identity: IdentityStore, per_account: int = 3) -> Accounts:
    limiter = LoginLimiter(identity, LoginLimits(per_account, 100, 300))
    return Accounts(identity, limiter, AuditLog(identity), refresh_ttl_seconds=3600)


async def test_users(identity: IdentityStore) -> None:
    await management.add_user(identity, "alice", "alice-password", admin=True)
    with pytest.raises(IdentityConflict):
        await management.add_user(identity, "alice", "other-password", admin=False)
    with pytest.raises(management.ManagementError):
        await management.add_user(identity, "Alice!", "alice-password", admin=False)
    user = await identity.get_user("alice")
    assert user is not None and user.admin and user.password_hash.startswith("$argon2id$")
    assert "alice-password" not in user.password_hash
    await identity.set_admin("alice", False)
    assert [(u.name, u.admin) for u in await identity.list_users()] == [("alice", False)]
    with pytest.raises(IdentityNotFound):
        await identity.set_password("nobody", "x")
    await identity.delete_user("alice")
    assert await identity.get_user("alice") is None


async def test_grants_through_teams_and_their_removal(identity: IdentityStore) -> None:
    for name in ("alice", "bob"):
        await management.add_user(identity, name, f"{name}-password", admin=False)
    await identity.create_team("devs")
    await identity.add_member("devs", "alice")
    await identity.add_member("devs", "alice")  # twice is once
    assert await management.grant(identity, "team", "devs", "devs/*", "push") == "pull,push"
    assert await management.grant(identity, "user", "alice", "own/x", "delete") == "delete"
    assert await management.grant(identity, "team", "devs", "devs/*", "delete") == (
        "pull,push,delete"
    )
    alice = await identity.get_user("alice")
    bob = await identity.get_user("bob")
    assert alice is not None and bob is not None
    assert sorted(await identity.grants_for_user(alice.id)) == [
        ("devs/*", "pull,push,delete"),
        ("own/x", "delete"),
    ]
    assert await identity.grants_for_user(bob.id) == []
    assert await management.revoke(identity, "team", "devs", "devs/*", "push") == "pull,delete"
    assert await management.revoke(identity, "team", "devs", "devs/*", "pull") == "delete"
    await identity.remove_member("devs", "alice")
    assert await identity.grants_for_user(alice.id) == [("own/x", "delete")]
    with pytest.raises(IdentityNotFound):
        await identity.remove_member("devs", "alice")
    await identity.delete_team("devs")
    assert [g.subject for g in await identity.list_grants()] == ["alice"]
    assert await identity.list_teams() == []


async def test_robot_and_refresh_tokens(identity: IdentityStore) -> None:
    await management.add_user(identity, "alice", "alice-password", admin=False)
    token = await management.create_token(identity, "ci", ["alice/*:pull"], "1d", "alice")
    assert token.name == "robot$alice+ci"
    with pytest.raises(IdentityConflict):
        await management.create_token(identity, "ci", ["x/*:pull"], owner="alice")
    other = await management.create_token(identity, "ci", ["x/*:pull"])  # no owner: robot$ci
    assert other.name == "robot$ci"
    logins = accounts(identity)
    robot = await logins.login("robot$alice+ci", token.secret, "10.0.0.1")
    assert robot.kind == "robot" and robot.name == "robot$alice+ci" and robot.robot_id
    assert robot.subject == "robot$alice+ci" and robot.account == f"robot:{robot.robot_id}"
    for wrong_name in ("ci", "robot$ci", "alice"):
        with pytest.raises(BadCredentials):
            await logins.login(wrong_name, token.secret, "10.0.0.1")
    rights = await logins.permissions(robot)
    assert rights.actions_on("alice/app") == {"pull"}
    assert rights.actions_on("bob/app") == set()
    refresh = await logins.new_refresh_token(robot, "docker")
    assert (await logins.refresh_login(refresh, "10.0.0.1")).name == "robot$alice+ci"
    # Removing the owner takes the robot and its refresh tokens along.
    await identity.delete_user("alice")
    assert await identity.robot_by_name("robot$alice+ci") is None
    with pytest.raises(BadCredentials):
        await logins.refresh_login(refresh, "10.0.0.1")
    with pytest.raises(BadCredentials):
        await logins.login("robot$alice+ci", token.secret, "10.0.0.1")


async def test_expired_robots_do_not_log_in(identity: IdentityStore) -> None:
    token = await management.create_token(identity, "short", ["x/*:pull"], "1s")
    await asyncio.sleep(1.2)
    with pytest.raises(BadCredentials):
        await accounts(identity).login("robot$short", token.secret, "10.0.0.1")


async def test_failed_login_counting(identity: IdentityStore) -> None:
    await management.add_user(identity, "alice", "alice-password", admin=False)
    logins = accounts(identity, per_account=2)
    for _ in range(2):
        with pytest.raises(BadCredentials):
            await logins.login("alice", "wrong", "10.0.0.2")
    with pytest.raises(TooManyRequests) as caught:
        await logins.login("alice", "alice-password", "10.0.0.2")
    assert 0 < int(caught.value.headers["Retry-After"]) <= 300
    alice = await identity.get_user("alice")
    assert alice is not None
    key = f"account:user:{alice.id}"  # the account's identity, not the name typed
    state = await identity.failures([key, "address:10.0.0.2"])
    assert state[key][0] == 2 and state["address:10.0.0.2"][0] == 2
    # A window that is over starts again at one.
    await identity.count_failure([key], timedelta(seconds=0))
    assert (await identity.failures([key]))[key][0] == 1


async def test_audit_entries(identity: IdentityStore) -> None:
    await identity.audit("alice", "10.0.0.3", "push", "alice/app:v1", None)
    await identity.audit("bob", "10.0.0.4", "denied", "repository:alice/app:push", {"m": "PUT"})
    newest = await identity.audit_entries(limit=10)
    assert [(e.actor, e.action) for e in newest] == [("bob", "denied"), ("alice", "push")]
    assert newest[0].detail == {"m": "PUT"} and newest[0].at <= now()
    assert [e.target for e in await identity.audit_entries(actor="alice")] == ["alice/app:v1"]
    assert await identity.audit_entries(action="login") == []
    assert len(await identity.audit_entries(since=now() - timedelta(minutes=5))) == 2


async def test_public_patterns(identity: IdentityStore) -> None:
    await identity.add_public("library/*")
    await identity.add_public("library/*")
    assert await identity.public_patterns() == ["library/*"]
    anonymous = await accounts(identity).permissions(Principal("anonymous", ""))
    assert anonymous.actions_on("library/busybox") == {"pull"}
    await identity.remove_public("library/*")
    with pytest.raises(IdentityNotFound):
        await identity.remove_public("library/*")


async def test_ids_are_never_reused(identity: IdentityStore) -> None:
    """Tokens name accounts by id, so a removed account's id must never come back (SQLite
    would hand out the highest rowid again without AUTOINCREMENT)."""
    await management.add_user(identity, "alice", "alice-password", admin=False)
    first = await management.create_token(identity, "ci", ["x/*:pull"], owner="alice")
    robot = await identity.robot_by_name(first.name)
    user = await identity.get_user("alice")
    assert robot is not None and user is not None
    await identity.delete_robot(first.name)
    await management.create_token(identity, "ci", ["x/*:pull"], owner="alice")
    again = await identity.robot_by_name(first.name)
    assert again is not None and again.id != robot.id
    await identity.delete_user("alice")
    await management.add_user(identity, "alice", "alice-password", admin=False)
    alice = await identity.get_user("alice")
    assert alice is not None and alice.id != user.id


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_robots_made_before_the_robot_namespace(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Migration 0005 renames robots to robot$<owner>+<name> (robot$<name> without owner);
    their old names still log in with their secrets, and count no failures against users."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database("pre_robot_namespace")
    await asyncio.to_thread(migrate, url, "0004")
    db = Database(url, pool_size=2)
    identity = IdentityStore(db)
    try:
        await management.add_user(identity, "alice", "alice-password", admin=False)
        secrets = {"ci": "pkr_" + "c" * 43, "deploy": "pkr_" + "d" * 43}
        async with db.write() as conn:
            for name, owner in (("ci", "alice"), ("deploy", None)):
                await conn.execute(
                    text(
                        "INSERT INTO robot_tokens (name, owner_id, secret_hash, scopes, admin,"
                        " created_at) VALUES (:name, (SELECT id FROM users WHERE name = :owner),"
                        " :hash, :scopes, false, :now)"
                    ),
                    {"name": name, "owner": owner, "hash": secret_digest(secrets[name]),
                     "scopes": '[["alice/*", "pull"]]', "now": now()},
                )  # fmt: skip
            await conn.execute(
                text("INSERT INTO login_failures VALUES ('account:alice', 4, :now)"), {"now": now()}
            )
    finally:
        await db.dispose()
    await asyncio.to_thread(migrate, url)
    db = Database(url, pool_size=2)
    identity = IdentityStore(db)
    try:
        robots = {r.name: r for r in await identity.list_robots()}
        assert set(robots) == {"robot$alice+ci", "robot$deploy"}
        assert robots["robot$alice+ci"].legacy_name == "ci"
        assert robots["robot$alice+ci"].owner == "alice"
        logins = accounts(identity)
        for login_name in ("ci", "robot$alice+ci"):
            robot = await logins.login(login_name, secrets["ci"], "10.0.0.5")
            assert robot.name == "robot$alice+ci"
        assert (await logins.login("deploy", secrets["deploy"], "10.0.0.5")).name == "robot$deploy"
        with pytest.raises(BadCredentials):
            await logins.login("deploy", secrets["ci"], "10.0.0.5")
        assert await identity.failures(["account:alice"]) == {}  # keyed by name: dropped
    finally:
        await db.dispose()
