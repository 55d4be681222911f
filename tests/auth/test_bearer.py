"""Verified bearer tokens are cached, and the cache gives up a token exactly when an uncached
check would refuse it: expiry, a signing key rotated out, a removed account (at once through
this process, within `auth.revocation_delay_seconds` when removed elsewhere)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from auth.conftest import start_auth_server
from auth.helpers import assert_error, bearer, run_cli, token_for, unique
from auth.test_identity import migrate
from registry.auth import management
from registry.auth.accounts import Accounts
from registry.auth.audit import AuditLog
from registry.auth.bearer import AccountGone, BearerTokens
from registry.auth.cache import VerifiedCache
from registry.auth.key_stores import FolderKeys
from registry.auth.keys import KeyRing
from registry.auth.ratelimit import LoginLimiter, LoginLimits
from registry.auth.scopes import Scope
from registry.auth.tokens import InvalidToken, TokenIssuer, TokenVerifier
from registry.metadata.db import Database
from registry.metadata.identity import IdentityStore

SERVICE = "pocket-registry"


class Clock:
    """Time that moves only when told: the cache's and the key ring's."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self, identity: IdentityStore, folder: Path, recheck: float) -> None:
        self.identity = identity
        self.clock = Clock()
        self.keys = KeyRing(
            FolderKeys(folder), rotation_seconds=1000, overlap_seconds=100, clock=self.clock
        )
        limiter = LoginLimiter(identity, LoginLimits(5, 100, 300))
        self.accounts = Accounts(identity, limiter, AuditLog(identity), 3600)
        self.issuer = TokenIssuer(self.keys, SERVICE, SERVICE, 300)
        verifier = TokenVerifier(self.keys, SERVICE, SERVICE, ["ES256"], 0)
        self.bearer = BearerTokens(verifier, self.accounts, 100, recheck, 0, clock=self.clock)

    async def robot_token(self, name: str = "ci") -> tuple[str, str]:
        made = await management.create_token(self.identity, name, ["x/*:pull"])
        robot = await self.accounts.login(made.name, made.secret, "10.0.0.1")
        access = [Scope("repository", "x/app", ("pull",))]
        return made.name, (await self.issuer.issue(robot.subject, access, robot.account)).token


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[IdentityStore]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    await asyncio.to_thread(migrate, url)
    db = Database(url, pool_size=2)
    try:
        yield IdentityStore(db)
    finally:
        await db.dispose()


async def test_a_removed_account_is_seen_within_the_delay(
    identity: IdentityStore, tmp_path: Path
) -> None:
    world = World(identity, tmp_path / "keys", recheck=10)
    name, token = await world.robot_token()
    context = await world.bearer.authenticate(token)
    assert context.token is not None and context.principal.name == name
    assert context.token.account == context.principal.account
    await identity.delete_robot(name)  # as the CLI or another replica would
    world.clock.now += 9
    assert (await world.bearer.authenticate(token)).principal.name == name  # cached, no look-up
    world.clock.now += 1
    with pytest.raises(AccountGone):
        await world.bearer.authenticate(token)
    with pytest.raises(AccountGone):  # and not cached again
        await world.bearer.authenticate(token)


async def test_no_delay_looks_the_account_up_every_time(
    identity: IdentityStore, tmp_path: Path
) -> None:
    world = World(identity, tmp_path / "keys", recheck=0)
    name, token = await world.robot_token()
    await world.bearer.authenticate(token)
    await identity.delete_robot(name)
    with pytest.raises(AccountGone):
        await world.bearer.authenticate(token)


async def test_forgetting_ends_cached_tokens_at_once(
    identity: IdentityStore, tmp_path: Path
) -> None:
    world = World(identity, tmp_path / "keys", recheck=10)
    name, token = await world.robot_token()
    await world.bearer.authenticate(token)
    await identity.delete_robot(name)
    world.bearer.forget_all()  # what the admin API does after a removal
    with pytest.raises(AccountGone):
        await world.bearer.authenticate(token)


async def test_a_key_rotated_out_ends_its_cached_tokens(
    identity: IdentityStore, tmp_path: Path
) -> None:
    world = World(identity, tmp_path / "keys", recheck=1e9)
    _name, token = await world.robot_token()
    await world.bearer.authenticate(token)
    world.clock.now += 1000  # rotation due: a new key signs from now on...
    await world.keys.signing_key()
    world.clock.now += 50  # ...and the old one still verifies within the overlap
    await world.bearer.authenticate(token)
    world.clock.now += 51
    with pytest.raises(InvalidToken, match="unknown signing key"):
        await world.bearer.authenticate(token)


def test_the_cache_is_bounded_and_keeps_no_secret() -> None:
    clock = Clock()
    cache: VerifiedCache[str] = VerifiedCache(3, clock)
    for i in range(5):
        cache.put(f"value{i}", clock.now + 10, f"secret{i}")
    assert len(cache) == 3
    assert cache.get("secret0") is None and cache.get("secret4") == "value4"
    assert not any("secret" in repr(key) for key in cache._entries)
    cache.put("late", clock.now + 1, "other")
    clock.now += 1
    assert cache.get("other") is None and len(cache) == 2
    cache.put("gone", clock.now - 1, "past")  # already over: not kept
    assert cache.get("past") is None
    assert VerifiedCache[str](0).get("x") is None


# Against a real server ---------------------------------------------------------------------


def test_revocations_elsewhere_reach_a_server_within_the_delay(tmp_path: Path) -> None:
    """A robot revoked by the CLI (another process) while the server holds its token."""
    for delay in (0, 2):
        server = start_auth_server(
            tmp_path / f"d{delay}", env={"REGISTRY_AUTH_REVOCATION_DELAY_SECONDS": str(delay)}
        )
        try:
            made = run_cli(server.data_dir, "token", "create", unique("ci"), "--scope", "x/*:pull")
            assert made.returncode == 0, made.stderr
            name = made.stderr.split("docker login -u '")[1].split("'")[0]
            token = token_for(server.url, ["repository:x/app:pull"], (name, made.stdout.strip()))
            url = f"{server.url}/v2/x/app/tags/list"
            for _ in range(3):
                assert_error(httpx.get(url, headers=bearer(token)), 404, "NAME_UNKNOWN")
            assert run_cli(server.data_dir, "token", "revoke", name).returncode == 0
            deadline = time.monotonic() + delay + 10
            while True:
                answer = httpx.get(url, headers=bearer(token))
                if answer.status_code == 401 or time.monotonic() > deadline:
                    break
                assert delay > 0, "with no delay the first request after must be refused"
                time.sleep(0.2)
            assert "no longer exists" in assert_error(answer, 401)["message"]
        finally:
            server.stop()
