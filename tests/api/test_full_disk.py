"""A full disk under the registry, blobs or database (SQLite or PostgreSQL): each request
that cannot be kept answers 503 with the spec's JSON error saying the disk is full, the log
gets one line for it (no traceback), uploads stay where they were, and nothing is lost.

Each disk is a small real tmpfs (`support.tmpfs`), filled by a file of the test's own until
the kernel says ENOSPC; removing that file frees the disk again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.helpers import (
    assert_blob,
    assert_error,
    digest_of,
    encode,
    image_doc,
    patch_chunk,
    push_blob,
    start_upload,
    upload_range,
)
from registry.oci import mediatypes as mt

from support.postgres import PostgresServer, postgres_bin_dir
from support.server import RegistryServer
from support.tmpfs import small_disk

MiB = 1024 * 1024
FULL_MESSAGE = "disk is full"


def fill(disk: Path, leave: int = 0) -> Path:
    """Write a file on `disk` until no byte more fits, then give back `leave` bytes (whole
    pages: tmpfs counts its space in pages); the file, for `os.remove` to free the rest."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (MiB, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC
        if leave:
            os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)
    return filler


def assert_disk_full(response: httpx.Response) -> None:
    errors = assert_error(response, 503, "UNAVAILABLE")
    assert FULL_MESSAGE in errors[0]["message"], errors


def log_since(server: RegistryServer, offset: int) -> str:
    return server.log_path.read_bytes()[offset:].decode()


def assert_logged_once(text: str, failures: int) -> None:
    """`failures` lines about a full disk, one per failed request, and no traceback."""
    lines = [line for line in text.splitlines() if "disk full" in line]
    assert len(lines) == failures, text
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text


def wait_for_size(path: Path, size: int) -> None:
    """Until the server has written past `size` bytes to `path` (it holds the upload)."""
    deadline = time.monotonic() + 30
    while not (path.exists() and path.stat().st_size > size):
        assert time.monotonic() < deadline, f"{path} never grew past {size}"
        time.sleep(0.01)


def put_manifest(client: httpx.Client, repo: str, body: bytes) -> httpx.Response:
    return client.put(
        f"/v2/{repo}/manifests/v1", content=body, headers={"Content-Type": mt.OCI_MANIFEST}
    )


# SQLite ---------------------------------------------------------------------------------


@pytest.fixture
def sqlite_on_small_disk(tmp_path: Path) -> Iterator[tuple[RegistryServer, Path]]:
    """A registry whose data folder (so its SQLite database) is on a 4 MiB tmpfs and whose
    blobs are elsewhere: only the database's disk fills up."""
    with small_disk(tmp_path / "db-disk", "4m") as disk:
        server = RegistryServer(
            disk / "data", env={"REGISTRY_STORAGE_ROOT": str(tmp_path / "storage")}
        )
        server.log_path = tmp_path / "server.log"
        server.start()
        try:
            yield server, disk
        finally:
            server.stop()


def test_sqlite_disk_full_mid_patch(sqlite_on_small_disk: tuple[RegistryServer, Path]) -> None:
    """The disk fills while a PATCH's body arrives: its bytes reach storage, the database
    cannot record them. 503; the upload stays at its last acknowledged size and the next
    PATCH (on a freed disk) carries on at once; what was stored before is all there."""
    server, disk = sqlite_on_small_disk
    storage = server.data_dir.parent.parent / "storage"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        kept = os.urandom(1000)
        kept_digest = push_blob(c, "full/kept", kept)
        manifest = encode(image_doc(c, "full/image"))  # its blobs pushed while there is room
        location = start_upload(c, "full/db")
        first, second = os.urandom(MiB), os.urandom(5 * MiB)
        assert patch_chunk(c, location, first, 0).status_code == 202
        upload_file = storage / "uploads" / location.rsplit("/", 1)[1] / "data"
        filler: list[Path] = []

        def body() -> Iterator[bytes]:
            yield second[: 4 * MiB]  # a whole block: the server writes it out
            wait_for_size(upload_file, len(first))
            filler.append(fill(disk))
            yield second[4 * MiB :]

        offset = server.log_path.stat().st_size
        assert_disk_full(c.patch(location, content=body()))
        # With the disk still full: a new upload, a monolithic push and a manifest cannot
        # be recorded either, and say so; reads go on.
        assert_disk_full(c.post("/v2/full/other/blobs/uploads/"))
        assert_disk_full(put_manifest(c, "full/image", manifest))
        assert upload_range(c, location) == f"0-{len(first) - 1}"
        assert_blob(c, "full/kept", kept, digest=kept_digest)
        assert_logged_once(log_since(server, offset), failures=3)

        os.remove(filler[0])
        response = patch_chunk(c, location, second, len(first))
        assert response.status_code == 202, response.text
        # The disk fills again but for two pages before the closing PUT: enough for the
        # claim on the upload (one page of the database's log), not for recording the blob,
        # which comes after its bytes were verified and moved into place. The client's retry
        # of the PUT finishes the upload.
        filler[0] = fill(disk, leave=2 * 4096)
        digest = digest_of(first + second)
        assert_disk_full(c.put(location, params={"digest": digest}))
        os.remove(filler[0])
        assert c.put(location, params={"digest": digest}).status_code == 201
        assert_blob(c, "full/db", first + second)
        assert_blob(c, "full/kept", kept, digest=kept_digest)
        assert put_manifest(c, "full/image", manifest).status_code == 201


# Blob storage ---------------------------------------------------------------------------


@pytest.fixture
def storage_on_small_disk(tmp_path: Path) -> Iterator[tuple[RegistryServer, Path]]:
    """A registry whose blobs are on a 4 MiB tmpfs and whose database is elsewhere."""
    with small_disk(tmp_path / "blob-disk", "4m") as disk:
        server = RegistryServer(tmp_path / "data", env={"REGISTRY_STORAGE_ROOT": str(disk)})
        server.start()
        try:
            yield server, disk
        finally:
            server.stop()


def test_storage_disk_full(storage_on_small_disk: tuple[RegistryServer, Path]) -> None:
    """A monolithic push (held in memory, written in one piece) and a chunk (streamed to
    the upload's file) on a full blob disk: 503 saying so, one log line each, the upload
    where it was; once freed, both go through."""
    server, disk = storage_on_small_disk
    with httpx.Client(base_url=server.url, timeout=60) as c:
        kept = os.urandom(1000)
        kept_digest = push_blob(c, "full/kept", kept)
        location = start_upload(c, "full/chunked")
        first, second, small = os.urandom(MiB // 2), os.urandom(MiB), os.urandom(64 * 1024)
        assert patch_chunk(c, location, first, 0).status_code == 202
        filler = fill(disk)
        offset = server.log_path.stat().st_size
        monolithic = f"/v2/full/small/blobs/uploads/?digest={digest_of(small)}"
        assert_disk_full(c.post(monolithic, content=small))
        assert_disk_full(patch_chunk(c, location, second, len(first)))
        assert upload_range(c, location) == f"0-{len(first) - 1}"
        assert_blob(c, "full/kept", kept, digest=kept_digest)
        assert_logged_once(log_since(server, offset), failures=2)

        os.remove(filler)
        assert c.post(monolithic, content=small).status_code == 201
        assert patch_chunk(c, location, second, len(first)).status_code == 202
        assert c.put(location, params={"digest": digest_of(first + second)}).status_code == 201
        assert_blob(c, "full/small", small)
        assert_blob(c, "full/chunked", first + second)


# PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture
def postgres_on_small_disk(tmp_path: Path) -> Iterator[tuple[RegistryServer, Path]]:
    """A private PostgreSQL whose data folder is on a small tmpfs, and a registry using it."""
    bin_dir = postgres_bin_dir()
    # Not under tmp_path: the server runs as the `postgres` user, who cannot enter that.
    mount_point = Path(tempfile.mkdtemp(prefix="pg-disk-"))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(mount_point.rmdir)
        disk = cleanup.enter_context(small_disk(mount_point, "64m"))
        database = PostgresServer(bin_dir, root=disk)
        database.start()
        server = RegistryServer(
            tmp_path / "data", env={"REGISTRY_DATABASE_URL": database.url()}
        )
        try:
            server.start()
            yield server, disk
        finally:
            server.stop()
            database.stop()


def test_postgres_disk_full(postgres_on_small_disk: tuple[RegistryServer, Path]) -> None:
    """PostgreSQL fails a write only when a table or index must grow (rows that fit in
    their pages still go in): new uploads are started until one cannot be, which must be
    503 saying the disk is full, never a 500. Every upload started before it resumes once
    the disk is freed, and what was stored before is all there."""
    server, disk = postgres_on_small_disk
    with httpx.Client(base_url=server.url, timeout=60) as c:
        kept = os.urandom(1000)
        kept_digest = push_blob(c, "full/kept", kept)
        first = os.urandom(1000)
        location = start_upload(c, "full/pg")
        assert patch_chunk(c, location, first, 0).status_code == 202
        filler = fill(disk)
        offset = server.log_path.stat().st_size
        started = []
        for _ in range(5000):
            response = c.post("/v2/full/pg/blobs/uploads/")
            if response.status_code != 202:
                break
            started.append(response.headers["location"])
        assert_disk_full(response)
        assert upload_range(c, location) == f"0-{len(first) - 1}"
        assert_blob(c, "full/kept", kept, digest=kept_digest)
        assert_logged_once(log_since(server, offset), failures=1)

        os.remove(filler)
        second = os.urandom(1000)
        assert patch_chunk(c, location, second, len(first)).status_code == 202
        assert c.put(location, params={"digest": digest_of(first + second)}).status_code == 201
        assert_blob(c, "full/pg", first + second)
        for started_location in started[-3:]:
            assert upload_range(c, started_location) == "0-0"
        assert_blob(c, "full/kept", kept, digest=kept_digest)
