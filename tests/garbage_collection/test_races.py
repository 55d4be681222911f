"""Garbage collection against pushes at the same moment, on SQLite and PostgreSQL.

First each rule of the protocol (registry/gc/__init__.py) in a fixed interleaving, so that a
mutation of the check it guards fails here every time; then hundreds of rounds of pushes,
deletes, mounts and two collectors running at once, checking after every round that every
manifest's blobs are stored with the right bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.util import await_only

from garbage_collection.conftest import Stack
from registry.metadata.gcstore import BlobBatch
from registry.metadata.store import MissingReferences, now
from registry.oci import mediatypes as mt
from registry.oci.digest import Digest
from registry.oci.manifest import parse_manifest
from registry.storage.driver import StorageError

LATER = timedelta(hours=1)  # a cutoff past every review entry: "the grace period is over"


def image(config: str, layers: list[str]) -> tuple[bytes, list[str]]:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": config, "size": 1},
        "layers": [{"mediaType": mt.OCI_LAYER, "digest": d, "size": 1} for d in layers],
    }
    return json.dumps(doc).encode(), [config, *layers]


async def put(stack: Stack, repository: str, content: bytes, blobs: list[str]) -> object:
    return await stack.metadata.put_manifest(
        repository, str(Digest.of(content)), content, parse_manifest(content), ["v1"],
        required_blobs=blobs,
    )  # fmt: skip


class TestRules:
    async def test_a_manifest_push_after_the_mark_is_refused_and_its_retry_succeeds(
        self, stack: Stack
    ) -> None:
        config = await stack.upload("r", b"config")
        layer = await stack.upload("r", b"layer")
        batch = await stack.gc.mark_blobs(now() + LATER, 10)  # both unreferenced: marked
        assert sorted(d.digest for d in batch.doomed) == sorted([config, layer])
        content, blobs = image(config, [layer])
        missing = await put(stack, "r", content, blobs)
        assert isinstance(missing, MissingReferences)
        assert sorted(missing.blobs) == sorted(blobs)
        assert await stack.count("manifests") == 0
        await stack.blobs.delete_blobs([Digest.parse(config), Digest.parse(layer)])
        await stack.gc.forget_blobs([config, layer])
        # The client pushes the blobs again and retries: that works, and holds.
        await stack.upload("r", b"config")
        await stack.upload("r", b"layer")
        assert await put(stack, "r", content, blobs) is None
        assert (await stack.gc.mark_blobs(now() + LATER, 10)).doomed == []
        assert stack.path(layer).read_bytes() == b"layer"

    async def test_a_referenced_blob_is_never_marked(self, stack: Stack) -> None:
        await stack.push("r", "v1", [b"in use"])
        batch = await stack.gc.mark_blobs(now() + LATER, 10)
        assert batch.examined == 2 and batch.doomed == []
        assert await stack.gc.mark_unreferenced([str(Digest.of(b"in use"))]) == []

    async def test_an_upload_waits_while_the_old_copy_is_being_deleted(self, stack: Stack) -> None:
        digest = await stack.upload("r", b"bytes")
        (_doomed,) = (await stack.gc.mark_blobs(now() + LATER, 10)).doomed
        # Its old bytes are still there, but going: no upload may count on them.
        assert stack.stored(digest)
        assert await stack.metadata.reserve_blob(digest, 5) is None
        await stack.blobs.delete_blobs([Digest.parse(digest)])
        assert await stack.metadata.reserve_blob(digest, 5) is None  # until the row is gone
        await stack.gc.forget_blobs([digest])
        assert await stack.upload("r", b"bytes") == digest  # then it writes them afresh
        assert stack.path(digest).read_bytes() == b"bytes"
        assert await stack.metadata.blob_size_in_repository("r", digest) == 5

    async def test_an_upload_collected_after_its_reservation_is_not_acknowledged(
        self, stack: Stack
    ) -> None:
        digest = str(Digest.of(b"raced"))
        session = await stack.metadata.create_upload("r")
        incarnation = await stack.metadata.reserve_blob(digest, 5)
        assert incarnation is not None
        await stack.blobs.place_data(b"raced", Digest.parse(digest))
        # A collector with no grace period takes the reserved row before the upload ends.
        (_doomed,) = (await stack.gc.mark_blobs(now() + LATER, 10)).doomed
        assert not await stack.metadata.finish_upload(session.id, "r", digest, 5, incarnation)
        await stack.blobs.delete_blobs([Digest.parse(digest)])
        await stack.gc.forget_blobs([digest])
        # ...and a row made again meanwhile is another incarnation: still no acknowledgement.
        assert await stack.metadata.reserve_blob(digest, 5) not in (None, incarnation)
        assert not await stack.metadata.finish_upload(session.id, "r", digest, 5, incarnation)
        assert await stack.metadata.blob_size_in_repository("r", digest) is None

    async def test_a_mount_of_a_blob_being_deleted_is_refused(self, stack: Stack) -> None:
        digest = await stack.upload("source", b"mounted")
        await stack.gc.mark_blobs(now() + LATER, 10)
        assert not await stack.metadata.mount_blob("target", digest)
        assert await stack.metadata.blob_size_in_repository("target", digest) is None

    async def test_a_mount_restarts_the_grace_period(self, stack: Stack) -> None:
        digest = await stack.upload("source", b"mounted")
        await stack.age(7200)
        assert await stack.metadata.mount_blob("target", digest)
        assert (await stack.gc.mark_blobs(now() - timedelta(seconds=60), 10)).doomed == []

    async def test_orphan_bytes_are_marked_before_they_go(self, stack: Stack) -> None:
        digest = str(Digest.of(b"orphan"))
        await stack.blobs.place_data(b"orphan", Digest.parse(digest))
        assert await stack.gc.mark_orphan(digest, 6)
        assert await stack.metadata.reserve_blob(digest, 6) is None  # an upload waits
        assert not await stack.gc.mark_orphan(digest, 6)  # (once)
        await stack.blobs.delete_blobs([Digest.parse(digest)])
        await stack.gc.forget_blobs([digest])
        assert await stack.upload("r", b"orphan") == digest
        assert stack.stored(digest)


class TestPostgresLocks:
    """What only PostgreSQL can show: two transactions open at once."""

    @pytest.fixture(autouse=True)
    def postgres_only(self, stack: Stack) -> None:
        if stack.db.dialect != "postgresql":
            pytest.skip("SQLite runs one write transaction at a time")

    async def test_the_collector_skips_a_blob_a_manifest_push_holds(self, stack: Stack) -> None:
        config = await stack.upload("r", b"config")
        content, blobs = image(config, [])
        raw = await asyncpg.connect(stack.db.url.replace("postgresql+asyncpg", "postgresql"))
        try:
            tx = raw.transaction()
            await tx.start()
            # The share lock a manifest push takes while it stores the manifest.
            await raw.execute("SELECT digest FROM blobs WHERE digest = $1 FOR SHARE", config)
            batch = await stack.gc.mark_blobs(now() + LATER, 10)
            assert (batch.busy, batch.doomed) == (1, [])
            await tx.rollback()
        finally:
            await raw.close()
        assert await put(stack, "r", content, blobs) is None
        assert (await stack.gc.mark_blobs(now() + LATER, 10)).doomed == []  # referenced now
        assert stack.stored(config)

    async def test_a_manifest_push_waits_for_the_collector_then_sees_the_mark(
        self, stack: Stack
    ) -> None:
        config = await stack.upload("r", b"config")
        content, blobs = image(config, [])
        raw = await asyncpg.connect(stack.db.url.replace("postgresql+asyncpg", "postgresql"))
        try:
            tx = raw.transaction()
            await tx.start()
            # What the collector's mark does: lock, set deleting_since, unlink.
            await raw.execute("SELECT digest FROM blobs WHERE digest = $1 FOR UPDATE", config)
            await raw.execute("UPDATE blobs SET deleting_since = now() WHERE digest = $1", config)
            await raw.execute("DELETE FROM repository_blobs WHERE digest = $1", config)
            pushing = asyncio.ensure_future(put(stack, "r", content, blobs))
            await asyncio.sleep(0.3)
            assert not pushing.done()  # waiting for the collector's lock
            await tx.commit()
        finally:
            await raw.close()
        missing = await pushing
        assert isinstance(missing, MissingReferences) and missing.blobs == [config]


@contextmanager
def between_statements(
    stack: Stack, before: Callable[[str], bool], action: Callable[[], Awaitable[object]]
) -> Iterator[list[object]]:
    """Run `action` (on other connections) the first time a statement for which `before` is
    true is about to be sent: an exact interleaving inside another transaction. The
    statement's greenlet waits on the event loop meanwhile (SQLAlchemy's `await_only`)."""
    results: list[object] = []

    def hook(*args: Any) -> None:
        statement = args[2]
        if not results and before(statement):
            results.append(None)
            results[0] = await_only(action())

    engine = stack.db._engine.sync_engine
    event.listen(engine, "before_cursor_execute", hook)
    try:
        yield results
    finally:
        event.remove(engine, "before_cursor_execute", hook)


def _collector_locking_blobs(statement: str) -> bool:
    return "FROM blobs" in statement and "FOR UPDATE SKIP LOCKED" in statement


def _manifest_insert(statement: str) -> bool:
    return statement.startswith("INSERT INTO manifests")


class TestPostgresInterleavings:
    """A push and a collection interleaved statement by statement (PostgreSQL: on SQLite the
    two transactions cannot overlap at all)."""

    @pytest.fixture(autouse=True)
    def postgres_only(self, stack: Stack) -> None:
        if stack.db.dialect != "postgresql":
            pytest.skip("SQLite runs one write transaction at a time")

    async def test_a_push_committed_while_the_collector_takes_its_locks_is_seen(
        self, stack: Stack
    ) -> None:
        config = await stack.upload("r", b"config")
        content, blobs = image(config, [])
        # The collector has taken the due entries; before it locks the blob rows, the
        # manifest naming the blob commits. Its recheck comes after the lock: it must see it.
        with between_statements(
            stack, _collector_locking_blobs, lambda: put(stack, "r", content, blobs)
        ) as pushed:
            batch = await stack.gc.mark_blobs(now() + LATER, 10)
        assert pushed == [None]  # the push went through, in the middle
        assert batch.doomed == []
        assert stack.stored(config) and await stack.count("manifests") == 1

    async def test_a_collection_while_a_push_stores_its_manifest_cannot_take_its_blobs(
        self, stack: Stack
    ) -> None:
        config = await stack.upload("r", b"config")
        content, blobs = image(config, [])
        # The push has checked its blobs; before it inserts the manifest, a collector runs.
        with between_statements(
            stack, _manifest_insert, lambda: stack.gc.mark_blobs(now() + LATER, 10)
        ) as collected:
            assert await put(stack, "r", content, blobs) is None
        (batch,) = collected
        assert isinstance(batch, BlobBatch) and (batch.busy, batch.doomed) == (1, [])
        assert (await stack.gc.mark_blobs(now() + LATER, 10)).doomed == []
        assert stack.stored(config)


class TestManyRounds:
    """Pushes (uploads and mounts), deletes and two collectors without a grace period, all at
    once, for hundreds of rounds; after each, every stored manifest's blobs are live and
    stored with the right bytes, and so is every blob a repository serves."""

    ROUNDS = 150
    LAYERS = [f"layer {i}".encode() * 50 for i in range(8)]  # few: pushes share and re-push

    async def test_nothing_referenced_is_ever_lost(self, stack: Stack) -> None:
        rng = random.Random(14)
        collectors = [
            stack.collector(blob_grace_seconds=0, batch_size=3, untagged_manifests=True,
                            manifest_grace_seconds=0)
            for _ in range(2)
        ]  # fmt: skip
        pushed: list[tuple[str, str]] = []
        stats = {"pushes": 0, "refused": 0, "mounts": 0, "deleted_blobs": 0}
        for round_index in range(self.ROUNDS):
            work = [self._push(stack, rng, round_index, i, pushed, stats) for i in range(3)]
            work += [self._delete(stack, rng, pushed), self._mount(stack, rng, stats)]
            work += [collector.run("test") for collector in collectors]
            results = await asyncio.gather(*work)
            stats["deleted_blobs"] += sum(r.blobs_deleted for r in results[-2:])  # type: ignore[union-attr]
            await self._check(stack)
        # The rounds did race: blobs went, and pushes were refused and retried.
        assert stats["pushes"] == 3 * self.ROUNDS
        assert stats["deleted_blobs"] > self.ROUNDS
        assert stats["mounts"] > 0

    async def _push(
        self, stack: Stack, rng: random.Random, round_index: int, index: int,
        pushed: list[tuple[str, str]], stats: dict[str, int],
    ) -> None:  # fmt: skip
        repository = f"repo{rng.randrange(3)}"
        layers = rng.sample(self.LAYERS, 2)
        config = json.dumps({"round": round_index, "index": index}).encode()
        for _attempt in range(50):
            digests = [await self._upload(stack, repository, data) for data in [config, *layers]]
            content, blobs = image(digests[0], digests[1:])
            missing = await put(stack, repository, content, blobs)
            if missing is None:
                pushed.append((repository, str(Digest.of(content))))
                stats["pushes"] += 1
                return
            stats["refused"] += 1  # MANIFEST_BLOB_UNKNOWN: the client pushes again
            await asyncio.sleep(0)
        raise AssertionError("a push never succeeded")

    async def _upload(self, stack: Stack, repository: str, data: bytes) -> str:
        """The API's upload: reserve (waiting while a collector deletes the old copy), place,
        finish (503 and a fresh upload when the reservation was collected)."""
        digest = Digest.of(data)
        while True:
            session = await stack.metadata.create_upload(repository)
            while (
                incarnation := await stack.metadata.reserve_blob(str(digest), len(data))
            ) is None:
                await asyncio.sleep(0.001)
            try:
                await stack.blobs.place_data(data, digest)
            except StorageError:
                # Collected (folder and all) while it was being written: the API answers
                # 503 and the client tries again. Only without a grace period.
                continue
            if await stack.metadata.finish_upload(
                session.id, repository, str(digest), len(data), incarnation
            ):
                return str(digest)

    async def _delete(
        self, stack: Stack, rng: random.Random, pushed: list[tuple[str, str]]
    ) -> None:
        for _ in range(2):
            if pushed:
                repository, digest = pushed.pop(rng.randrange(len(pushed)))
                if rng.random() < 0.5:
                    await stack.metadata.delete_manifest(repository, digest)
                else:
                    await stack.metadata.delete_tag(repository, "v1")

    async def _mount(self, stack: Stack, rng: random.Random, stats: dict[str, int]) -> None:
        digest = str(Digest.of(rng.choice(self.LAYERS)))
        if await stack.metadata.mount_blob(f"repo{rng.randrange(3)}", digest):
            stats["mounts"] += 1

    async def _check(self, stack: Stack) -> None:
        referenced = await stack.rows(
            "SELECT r.digest, b.digest, b.deleting_since FROM manifest_references r"
            " LEFT JOIN blobs b ON b.digest = r.digest WHERE r.kind <> 'manifest'"
        )
        linked = await stack.rows(
            "SELECT l.digest FROM repository_blobs l JOIN blobs b ON b.digest = l.digest"
        )
        for digest, row, deleting_since in referenced:
            assert row is not None, f"{digest} is referenced but has no row"
            assert deleting_since is None, f"{digest} is referenced but being deleted"
        for digest in {row[0] for row in referenced} | {row[0] for row in linked}:
            path = stack.path(digest)
            assert path.exists(), f"{digest} is referenced or served but not stored"
            actual = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
            assert actual == digest
