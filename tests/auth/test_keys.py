"""Signing keys: made on first start, kept, rotated, retired, shared; on each store (a folder,
the database on SQLite and on PostgreSQL). Several rings on one store stand for several
processes or replicas: each has its own connections (or reads the folder itself)."""

from __future__ import annotations

import asyncio
import functools
import secrets
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select, update

from registry.auth.key_stores import DatabaseKeys, FolderKeys, seal, sealing_key
from registry.auth.keys import (
    RETIRE_MARGIN,
    KeyChange,
    KeyRing,
    KeyStore,
    KeyStoreError,
    SigningKey,
    thumbprint,
)
from registry.metadata.db import Database, upgrade_schema
from registry.metadata.tables import signing_keys

SECRET = secrets.token_urlsafe(32)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """A store that counts its reads (to see what the ring asks of it)."""

    def __init__(self, store: KeyStore) -> None:
        self.store, self.where, self.loads = store, store.where, 0

    async def load(self) -> list[SigningKey]:
        self.loads += 1
        await asyncio.sleep(0)  # let others run meanwhile, as a database's round trip does
        return await self.store.load()

    async def change(self, plan: Callable[[list[SigningKey]], KeyChange]) -> list[SigningKey]:
        return await self.store.change(plan)


@dataclass
class Backing:
    """One place keys are kept, and a store on it for each process that asks."""

    kind: str  # folder, sqlite, postgresql
    folder: Path
    url: str = ""
    dbs: list[Database] = field(default_factory=list)

    def store(self, secret: str = SECRET) -> KeyStore:
        if self.kind == "folder":
            return FolderKeys(self.folder)
        db = Database(self.url, pool_size=2)
        self.dbs.append(db)
        return DatabaseKeys(db, secret)

    def ring(self, clock: Clock, **settings: Any) -> KeyRing:
        return KeyRing(self.store(), clock=clock, **settings)

    async def stored(self) -> list[str]:
        """The kids the store holds, oldest first, read from it directly."""
        if self.kind == "folder":
            names = sorted(p.name for p in self.folder.glob("*.pem"))
            return [name.split("-", 1)[1].removesuffix(".pem") for name in names]
        db = Database(self.url, pool_size=1)
        try:
            async with db.read() as conn:
                c = signing_keys.c
                rows = await conn.execute(select(c.kid).order_by(c.created_ms))
                return [row[0] for row in rows]
        finally:
            await db.dispose()


@pytest.fixture(params=["folder", "sqlite", "postgresql"])
async def backing(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backing]:
    folder = tmp_path / "keys"
    if request.param == "folder":
        found = Backing("folder", folder)
    else:
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
        else:
            url = request.getfixturevalue("postgres").create_database(f"k{uuid.uuid4().hex[:12]}")
        await asyncio.to_thread(upgrade_schema, url)
        found = Backing(request.param, folder, url)
    yield found
    for db in found.dbs:
        await db.dispose()


database_only = pytest.mark.parametrize("backing", ["sqlite", "postgresql"], indirect=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# Every store -------------------------------------------------------------------------------


async def test_first_start_makes_one_key_and_the_next_uses_it(backing: Backing) -> None:
    ring = backing.ring(Clock())
    await ring.ensure()
    key = await ring.signing_key()
    assert key.algorithm == "ES256" and isinstance(key.private_key, ec.EllipticCurvePrivateKey)
    assert key.kid == thumbprint(key.public_key)
    assert await backing.stored() == [key.kid]
    again = backing.ring(Clock())  # another process, or a restart
    await again.ensure()
    assert (await again.signing_key()).kid == key.kid and await backing.stored() == [key.kid]


async def test_rsa_keys(backing: Backing) -> None:
    ring = backing.ring(Clock(), algorithm="RS256")
    key = await ring.signing_key()
    assert key.algorithm == "RS256" and isinstance(key.private_key, rsa.RSAPrivateKey)
    [jwk] = (await ring.jwks())["keys"]
    assert jwk["kty"] == "RSA" and jwk["kid"] == key.kid and jwk["alg"] == "RS256"
    assert "d" not in jwk  # public parts only
    assert (await backing.ring(Clock(), algorithm="RS256").signing_key()).kid == key.kid


async def test_changing_the_algorithm_makes_a_new_key(backing: Backing) -> None:
    first = await backing.ring(Clock(), algorithm="ES256").signing_key()
    second = await backing.ring(Clock(), algorithm="RS256").signing_key()
    assert second.algorithm == "RS256" and second.kid != first.kid


async def test_a_key_made_in_the_same_instant_still_comes_last(backing: Backing) -> None:
    clock = Clock()
    first = await backing.ring(clock, algorithm="ES256").signing_key()
    second = await backing.ring(clock, algorithm="RS256").signing_key()  # same clock reading
    assert second.created > first.created
    assert (await backing.ring(clock, algorithm="RS256").signing_key()).kid == second.kid


async def test_no_rotation_when_disabled(backing: Backing) -> None:
    clock = Clock()
    ring = backing.ring(clock, rotation_seconds=0)
    kid = (await ring.signing_key()).kid
    clock.now += 10 * 365 * 86400
    assert (await ring.signing_key()).kid == kid


async def test_rotation_overlap_and_retirement_across_processes(backing: Backing) -> None:
    """A rotates; B, which still signed with the old key, follows. The old key verifies on
    both until the new one is `overlap` old (tokens B signed with it late end then too),
    then on neither; a minute later it is deleted from the store, never to come back."""
    clock = Clock()
    settings = {"rotation_seconds": 100, "overlap_seconds": 30}
    a, b = backing.ring(clock, **settings), backing.ring(clock, **settings)
    old = await a.signing_key()
    assert (await b.signing_key()).kid == old.kid
    clock.now += 99
    assert (await a.signing_key()).kid == old.kid
    clock.now += 1
    new = await a.signing_key()
    assert new.kid != old.kid
    assert (await b.signing_key()).kid == new.kid  # due for B too: B finds A's key, makes none
    assert await backing.stored() == [old.kid, new.kid]
    clock.now += 29
    for ring in (a, b):
        assert await ring.verification_key(old.kid) is not None
        assert {k["kid"] for k in (await ring.jwks())["keys"]} == {old.kid, new.kid}
    clock.now += 2
    for ring in (a, b):
        assert await ring.verification_key(old.kid) is None and ring.known(old.kid) is None
        assert [k["kid"] for k in (await ring.jwks())["keys"]] == [new.kid]
    assert await backing.stored() == [old.kid, new.kid]  # kept, unused, for the margin
    clock.now += RETIRE_MARGIN
    await b.refresh()
    assert await backing.stored() == [new.kid]
    fresh = backing.ring(clock, **settings)
    assert await fresh.verification_key(old.kid) is None
    assert [k.kid for k in fresh.current()] == [new.kid]


async def test_an_old_key_ends_on_time_however_late_it_signed(backing: Backing) -> None:
    """A rotation made elsewhere (`registry keys rotate`): B signs with the old key until it
    learns of the new one; the old key still ends `overlap` after the new key was made, the
    same moment on every replica, whenever B last signed with it."""
    clock = Clock()
    a = backing.ring(clock, overlap_seconds=30)
    b = backing.ring(clock, overlap_seconds=30)
    old = await b.signing_key()
    clock.now += 10
    await a.ensure(rotate_now=True)
    new = a.current()[-1]
    clock.now += 5
    assert (await b.signing_key()).kid == old.kid  # B has not looked since
    assert await b.verification_key(new.kid) is not None  # a token of the new key: B looks
    assert (await b.signing_key()).kid == new.kid
    for ring in (a, b):
        assert ring.verifies_until(old.kid) == new.created + 30
        clock.now = new.created + 29.999
        assert ring.known(old.kid) is not None
        clock.now = new.created + 30.001
        assert ring.known(old.kid) is None


async def test_a_key_made_elsewhere_is_found_at_once(backing: Backing) -> None:
    clock = Clock()
    mine = backing.ring(clock, rotation_seconds=100, overlap_seconds=30)
    await mine.ensure()
    theirs = backing.ring(clock, rotation_seconds=100, overlap_seconds=30)
    await theirs.ensure(rotate_now=True)
    rotated = await theirs.signing_key()
    # Asked within a second of its last read, `mine` waits for the next one, never refuses.
    found = await mine.verification_key(rotated.kid)
    assert found is not None and found.kid == rotated.kid


async def test_unknown_kids_read_the_store_at_most_once_a_second(backing: Backing) -> None:
    clock = Clock()
    store = CountingStore(backing.store())
    ring = KeyRing(store, clock=clock)
    await ring.ensure()
    before = store.loads
    clock.now += 5
    bogus = [f"unknown-kid-{i:04d}-xxxxxxxx" for i in range(10)]
    assert await asyncio.gather(*(ring.verification_key(kid) for kid in bogus)) == [None] * 10
    # Ten at once: the first reads; the nine that came while it read share the next read,
    # which waits for the second to pass (a key may have been made just after the first).
    assert store.loads == before + 2
    # Sooner than a second after that read, the next one waits for the second to pass.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ring.verification_key("unknown-kid-soon-xxxxxxxx"), 0.2)
    assert store.loads == before + 2
    clock.now += 1
    assert await ring.verification_key("unknown-kid-again-xxxxxxxx") is None
    assert store.loads == before + 3
    key = await ring.signing_key()
    assert await ring.verification_key(key.kid) is not None and store.loads == before + 3


async def test_a_rotation_elsewhere_is_seen_without_any_request(backing: Backing) -> None:
    """B is never shown a token of A's new key: its background refresh finds the key, so B
    signs with it and ends the old one on time."""
    clock = Clock()
    a = backing.ring(clock, overlap_seconds=30)
    b = backing.ring(clock, overlap_seconds=30)
    old = await b.signing_key()
    await a.ensure(rotate_now=True)
    new = a.current()[-1]
    assert b.verifies_until(old.kid) == float("inf")
    task = asyncio.create_task(b.keep_fresh(interval=0.01))
    try:
        for _ in range(500):
            if b.verifies_until(old.kid) != float("inf"):
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert (await b.signing_key()).kid == new.kid
    clock.now += 31
    assert b.known(old.kid) is None


async def test_processes_starting_at_once_make_one_key(backing: Backing) -> None:
    rings = [backing.ring(Clock()) for _ in range(4)]
    await asyncio.gather(*(ring.ensure() for ring in rings))
    [kid] = await backing.stored()
    assert {(await ring.signing_key()).kid for ring in rings} == {kid}


async def test_processes_rotating_at_once_make_one_key(backing: Backing) -> None:
    clock = Clock()
    rings = [backing.ring(clock, rotation_seconds=100) for _ in range(4)]
    await asyncio.gather(*(ring.ensure() for ring in rings))
    clock.now += 100
    signing = await asyncio.gather(*(ring.signing_key() for ring in rings))
    stored = await backing.stored()
    assert len(stored) == 2 and {key.kid for key in signing} == {stored[-1]}


def test_only_es256_and_rs256_sign(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError):
        KeyRing(FolderKeys(tmp_path), "HS256")


# The folder ------------------------------------------------------------------------------


async def test_the_folder_and_its_keys_are_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / "auth" / "keys"
    key = await KeyRing(FolderKeys(folder)).signing_key()
    [key_file] = folder.glob("*.pem")
    assert mode(folder) == 0o700 and mode(key_file) == 0o600 and key.kid in key_file.name
    key_file.chmod(0o644)
    await KeyRing(FolderKeys(folder)).ensure()
    assert mode(key_file) == 0o600


async def test_unreadable_key_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "1700000000-AAAAAAAAAAAAAAAAAAAAAAAA.pem").write_text("not a key")
    ring = KeyRing(FolderKeys(tmp_path))
    await ring.ensure()
    assert len((await ring.jwks())["keys"]) == 1


# The database ----------------------------------------------------------------------------


async def raw_rows(url: str) -> list[dict[str, Any]]:
    db = Database(url, pool_size=1)
    try:
        async with db.read() as conn:
            return [dict(row._mapping) for row in await conn.execute(select(signing_keys))]
    finally:
        await db.dispose()


@database_only
async def test_the_table_holds_no_private_key_in_the_clear(backing: Backing) -> None:
    keys = [
        await backing.ring(Clock(), algorithm="ES256").signing_key(),
        await backing.ring(Clock(), algorithm="RS256").signing_key(),
    ]
    rows = await raw_rows(backing.url)
    assert sorted(row["kid"] for row in rows) == sorted(key.kid for key in keys)
    stored = b"|".join(
        value if isinstance(value, bytes) else str(value).encode()
        for row in rows
        for value in row.values()
    )
    for key in keys:
        numbers = key.private_key.private_numbers()
        if isinstance(numbers, ec.EllipticCurvePrivateNumbers):
            scalar = numbers.private_value
        else:
            scalar = numbers.d
        clear = [
            scalar.to_bytes((scalar.bit_length() + 7) // 8, "big"),
            key.private_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            b"PRIVATE KEY",
        ]
        assert not any(part in stored for part in clear)


@database_only
async def test_a_wrong_secret_is_refused_and_makes_no_key(backing: Backing) -> None:
    kid = (await backing.ring(Clock()).signing_key()).kid
    wrong = KeyRing(backing.store(secret=secrets.token_urlsafe(32)), clock=Clock())
    for attempt in (wrong.ensure, functools.partial(wrong.ensure, rotate_now=True), wrong.read):
        with pytest.raises(KeyStoreError, match=r"do not decrypt with auth\.keys_secret"):
            await attempt()
    assert await backing.stored() == [kid]


@database_only
async def test_a_sealed_key_opens_only_in_its_own_row(backing: Backing) -> None:
    """The kid and age are bound to the sealed key: a row whose age was changed (to keep an
    old key signing) or that was given another row's key does not open."""
    first = await backing.ring(Clock()).signing_key()
    db = Database(backing.url, pool_size=1)
    try:
        async with db.write() as conn:
            await conn.execute(
                update(signing_keys).where(signing_keys.c.kid == first.kid).values(
                    created_ms=first.created_ms + 1
                )
            )
    finally:
        await db.dispose()
    with pytest.raises(KeyStoreError, match="do not decrypt"):
        await backing.ring(Clock()).read()


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(KeyStoreError, match="at least 32"):
        sealing_key("x" * 31)
    sealing_key("x" * 32)


@database_only
async def test_a_row_whose_key_is_not_its_kid_is_refused(backing: Backing) -> None:
    """Sealed with the right secret, but under another key's kid (a bug, or someone holding
    the secret): refused, rather than verifying tokens in the other key's name."""
    ring = backing.ring(Clock())
    key = await ring.signing_key()
    store = backing.store()
    assert isinstance(store, DatabaseKeys)
    other = SigningKey("x" * 43, key.algorithm, key.private_key, key.created + 1)
    await store.table.change(lambda rows: (seal(sealing_key(SECRET), other), []))
    with pytest.raises(KeyStoreError, match="not the key it names"):
        await backing.ring(Clock()).read()
