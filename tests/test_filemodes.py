"""Owner-only files: whatever the umask, nothing the registry keeps is readable by other local
users (password and secret hashes, the audit log, blobs); a looser data folder is tightened."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from api.helpers import digest_of, patch_chunk, push_image, start_upload

from support.server import RegistryServer


@contextmanager
def umask(value: int) -> Iterator[None]:
    """Child processes started within get this umask."""
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def loose(root: Path) -> list[str]:
    """Every path under `root` (and itself) that group or others may use at all."""
    paths = [root, *root.rglob("*")]
    modes = {path: stat.S_IMODE(path.lstat().st_mode) for path in paths}
    return [f"{path} {mode:04o}" for path, mode in modes.items() if mode & 0o077]


def test_server_files_are_owner_only_under_umask_000(tmp_path: Path) -> None:
    """Data folder, SQLite database and its side files, storage folders, uploads in
    progress and blobs: all owner-only though the server was started with umask 000."""
    server = RegistryServer(tmp_path / "data")
    with umask(0):
        server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            push_image(c, "modes/app", "v1")
            location = start_upload(c, "modes/app")  # an upload left in progress
            assert patch_chunk(c, location, b"x" * 1000, 0).status_code == 202
            done = start_upload(c, "modes/app")
            assert patch_chunk(c, done, b"y" * 1000, 0).status_code == 202
            assert c.put(done, params={"digest": digest_of(b"y" * 1000)}).status_code == 201
        data = server.data_dir
        names = {p.name for p in data.iterdir()}
        assert {"registry.db", "registry.db-wal", "registry.db-shm", "storage"} <= names
        assert any((data / "storage" / "uploads").rglob("data"))
        assert any((data / "storage" / "blobs").rglob("data"))
        assert loose(data) == []
    finally:
        server.stop()


def test_migrate_creates_owner_only_files_under_umask_000(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    with umask(0):
        subprocess.run(
            [sys.executable, "-m", "registry", "migrate", "--data", str(data)],
            check=True,
            capture_output=True,
            timeout=120,
        )
    assert (data / "registry.db").is_file()
    assert loose(data) == []


def test_a_looser_data_folder_is_tightened_at_start(tmp_path: Path) -> None:
    """A data folder made by an older version (0755, database 0644): the next start makes
    the folder, the storage root and the database's files owner-only, and says so once."""
    server = RegistryServer(tmp_path / "data")
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        push_image(c, "modes/old", "v1")
    server.stop()
    data = server.data_dir
    loosened = [data, data / "storage", data / "registry.db"]
    for path in loosened:
        path.chmod(0o755 if path.is_dir() else 0o644)
    log_start = server.log_path.stat().st_size
    server.start()
    try:
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "storage").stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "registry.db").stat().st_mode) == 0o600
        log = server.log_path.read_bytes()[log_start:].decode()
        lines = [line for line in log.splitlines() if "owner-only" in line]
        assert len(lines) == 1, log
        assert all(str(path) in lines[0] for path in loosened), lines
        # The next start finds nothing to tighten, and says nothing.
        log_start = server.log_path.stat().st_size
        server.restart()
        assert "owner-only" not in server.log_path.read_bytes()[log_start:].decode()
    finally:
        server.stop()


async def test_driver_and_database_choose_their_modes_themselves(tmp_path: Path) -> None:
    """Used in-process with umask 000 (no server start to set it): the storage driver's
    folders and files, and the SQLite database's, are owner-only all the same."""
    from registry.metadata.db import Database, upgrade_schema_async
    from registry.metadata.store import MetadataStore
    from registry.storage.filesystem import FilesystemDriver

    with umask(0):
        driver = FilesystemDriver(tmp_path / "storage" / "root")
        await driver.put("blobs/sha256/ab/abc/data", b"blob")
        writer = await driver.append("uploads/u1/data", 0)
        await writer.write(b"upload")
        await writer.close()
        await driver.commit("uploads/u1/data", None, "blobs/sha256/cd/cde/data")
        url = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'sub' / 'registry.db'}"
        await upgrade_schema_async(url)
        db = Database(url)
        try:
            await MetadataStore(db).create_upload("modes/lib")
        finally:
            await db.dispose()
    assert loose(tmp_path / "storage" / "root") == []
    assert stat.S_IMODE((tmp_path / "storage").stat().st_mode) == 0o700  # a parent made too
    assert loose(tmp_path / "db") == []
