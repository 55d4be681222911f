"""The local-disk storage driver: keys are files under a root folder, written with aiofiles."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiofiles
import aiofiles.os
from aiofiles.threadpool.binary import AsyncFileIO

from registry.filemodes import FILE_MODE, make_private_folder
from registry.storage.driver import (
    PathNotFound,
    StorageError,
    StoredObject,
    check_key,
    storage_error,
)
from registry.storage.writeback import WriteBehind

READ_BLOCK = 4 * 1024 * 1024
WRITES_IN_FLIGHT = 2  # positional writes of one upload running at once (page-cache latency)
_IOV_MAX = 1024  # buffers per pwritev (Linux's limit)


class FilesystemDriver:
    """Files under `root`. With `fsync` (the default) bytes are on disk before they become
    visible under a key; without it they may still be in the page cache, as Distribution's."""

    write_block_bytes: int | None = None  # each block goes straight to the file
    keeps_uploads_in_place = False  # a rename moves an upload to its blob's key for free

    def __init__(self, root: str | Path, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        make_private_folder(self.root)
        self.fsync = fsync

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def stat(self, key: str) -> int | None:
        # A stat of a local file costs microseconds, far less than a hop to a worker thread,
        # and it sits on the path of every blob HEAD and GET.
        try:
            return os.stat(self._path(key)).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def read(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        try:
            opened = aiofiles.open(self._path(key), "rb", buffering=0)
            fh = await opened.__aenter__()
        except FileNotFoundError:
            raise PathNotFound(key) from None
        try:
            if offset:
                await fh.seek(offset)
            remaining = length
            while remaining is None or remaining > 0:
                size = READ_BLOCK if remaining is None else min(READ_BLOCK, remaining)
                chunk = await fh.read(size)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            await fh.close()

    async def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            await asyncio.to_thread(_atomic_write, path, data, self.fsync)
        except OSError as exc:
            raise storage_error(exc, f"put {key}") from exc

    async def append(
        self,
        key: str,
        offset: int,
        state: str | None = None,
        destination: str | None = None,
        length: int | None = None,
    ) -> FileAppendWriter:
        # The file is the whole state; a partly written file must never sit at `destination`.
        path = self._path(key)
        try:
            await asyncio.to_thread(_create_empty, path)
            fh = await aiofiles.open(path, "r+b", buffering=0)
        except OSError as exc:
            raise storage_error(exc, f"append to {key}") from exc
        try:
            stored = os.fstat(fh.fileno()).st_size
            if stored < offset:
                # Truncating up would fill the gap with zeros: refuse instead.
                raise StorageError(f"{key} holds {stored} bytes, not the {offset} expected")
            # Whatever lies past `offset` is from a write that never completed: drop it.
            await fh.truncate(offset)
            await fh.seek(offset)
        except OSError as exc:
            await fh.close()
            raise storage_error(exc, f"append to {key}") from exc
        except BaseException:
            await fh.close()
            raise
        return FileAppendWriter(fh, offset, write_behind=self.fsync)

    async def commit(self, source: str, state: str | None, destination: str) -> None:
        src, dst = self._path(source), self._path(destination)
        if src == dst:
            if not await asyncio.to_thread(src.is_file):
                raise PathNotFound(source)
            return
        try:
            await asyncio.to_thread(_durable_rename, src, dst, self.fsync)
        except FileNotFoundError:
            raise PathNotFound(source) from None
        except OSError as exc:
            raise storage_error(exc, f"move {source} -> {destination}") from exc

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await asyncio.to_thread(_remove, path)

    async def list(self, prefix: str) -> list[str]:
        path = self._path(prefix)
        try:
            names = await aiofiles.os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(f"{prefix}/{name}" for name in names if not name.startswith(".tmp-"))

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    async def redirect_url(self, key: str) -> str | None:
        return None

    async def delete_many(self, keys: Sequence[str]) -> None:
        paths = [self._path(key) for key in keys]  # refuse an unsafe key before removing any
        if paths:
            await asyncio.to_thread(_remove_files, paths)

    async def abort_abandoned(self, older_than: datetime) -> int:
        return 0  # every write goes to an upload's own key first (see `append`)

    async def walk(self, prefix: str) -> AsyncIterator[StoredObject]:
        top = self._path(prefix)
        found = _walk(top, prefix)
        while batch := await asyncio.to_thread(_next_batch, found):
            for item in batch:
                yield item


class FileAppendWriter:
    """Appends with positional writes, up to `WRITES_IN_FLIGHT` blocks at once, with
    write-behind; `close` waits for them, `abort` truncates back to the start."""

    def __init__(self, fh: AsyncFileIO, start: int, write_behind: bool = True) -> None:
        self._fh = fh
        self._fd = fh.fileno()
        self._start = start
        self._end = start
        self._behind = WriteBehind(self._fd, start) if write_behind else None
        self._in_flight: set[asyncio.Future[None]] = set()

    async def write(self, *pieces: bytes) -> None:
        """Start writing `pieces` (in one vectored write) after what came before; a failure is
        raised by this call or by a later one (`write` or `close`)."""
        _raise(self._take_finished())
        while len(self._in_flight) >= WRITES_IN_FLIGHT:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            _raise(self._take_finished())
        length = sum(map(len, pieces))
        offset, self._end = self._end, self._end + length
        write = asyncio.to_thread(self._write_at, pieces, offset, length)
        self._in_flight.add(asyncio.ensure_future(write))

    def _write_at(self, pieces: tuple[bytes, ...], offset: int, length: int) -> None:
        try:
            _write_all(self._fd, pieces, offset)
            if self._behind is not None:
                self._behind.wrote(offset, length)
        except OSError as exc:
            raise storage_error(exc, "write failed") from exc

    def _take_finished(self) -> BaseException | None:
        """Drop the finished writes; the first failure among them (each one is retrieved,
        so none is reported as never seen)."""
        done = {f for f in self._in_flight if f.done()}
        self._in_flight -= done
        failures = [f.exception() for f in done if not f.cancelled()]
        return next((failure for failure in failures if failure is not None), None)

    async def _drain(self) -> BaseException | None:
        """Wait for every write in flight; the first failure among them."""
        if self._in_flight:
            await asyncio.wait(self._in_flight)
        return self._take_finished()

    async def close(self) -> str | None:
        # No flush here: every block's writeback has started, and the blob's bytes are made
        # durable once, before they become visible (`commit`). A power cut can therefore take
        # the tail of an unfinished upload (its file is then shorter than its session says,
        # and `append` refuses to resume it), never bytes of a finished blob; waiting for
        # the disk after every chunk halved chunked pushes. On failure the file stays open
        # for the caller's `abort`.
        _raise(await self._drain())
        await self._fh.close()
        return None

    async def abort(self) -> None:
        try:
            # Nothing may land after the truncation: let every write in flight end first
            # (their failures are the caller's own, being handled already).
            await self._drain()
            await self._fh.truncate(self._start)
        finally:
            await self._fh.close()


def _raise(failure: BaseException | None) -> None:
    if failure is not None:
        raise failure


def _write_all(fd: int, pieces: Sequence[bytes], offset: int) -> None:
    """Write all of `pieces`, one after another, at `offset`, with vectored writes (the
    pieces as received: no joining them first). A write may take only part of them (a disk
    filling up says so with a short count, not an error, until the next write): write the
    rest."""
    views = [memoryview(piece) for piece in pieces if piece]
    first = 0  # the first view not written in full
    while first < len(views):
        written = os.pwritev(fd, views[first : first + _IOV_MAX], offset)
        if not written:
            raise StorageError("write made no progress")
        offset += written
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]


def _create_empty(path: Path) -> None:
    make_private_folder(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))


def _atomic_write(path: Path, data: bytes, fsync: bool = True) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileNotFoundError:
            make_private_folder(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            _write_all(fd, (data,), 0)
            if fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _durable_rename(src: Path, dst: Path, fsync: bool = True) -> None:
    """Rename once the bytes are on disk, so a crash can never leave a name over bytes that
    are not all there. The directory is not synced: after a power cut the rename itself may
    be lost, which leaves no blob (the registry then answers 404 and clients push it again),
    never a wrong one; syncing it cost more than half of a small push."""
    if fsync:
        with open(src, "rb") as fh:
            os.fdatasync(fh.fileno())  # the bytes and the size; not the times
    make_private_folder(dst.parent)
    os.replace(src, dst)


def _remove_files(paths: Sequence[Path]) -> None:
    failed: list[str] = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            failed.append(f"{path.name}: {exc.strerror or exc}")
            continue
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the key's own folder (a blob's), when nothing else is in it
    if failed:
        raise StorageError(f"{len(failed)} of {len(paths)} deletes failed: {failed[0]}")


_WALK_BATCH = 1000


def _walk(top: Path, prefix: str) -> Iterator[StoredObject]:
    """Files under `top` (not the atomic writes in progress), depth first."""
    pending = [(top, prefix)]
    while pending:
        folder, key = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in sorted(entries, key=lambda e: e.name, reverse=True):
            child = f"{key}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                pending.append((Path(entry.path), child))
            elif entry.is_file(follow_symlinks=False) and not entry.name.startswith(".tmp-"):
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted since the listing
                modified = datetime.fromtimestamp(info.st_mtime, UTC)
                yield StoredObject(child, info.st_size, modified)


def _next_batch(found: Iterator[StoredObject]) -> list[StoredObject]:
    batch: list[StoredObject] = []
    for item in found:
        batch.append(item)
        if len(batch) >= _WALK_BATCH:
            break
    return batch


def _remove(path: Path) -> None:
    try:
        path.unlink()
        return
    except FileNotFoundError:
        return
    except (IsADirectoryError, PermissionError):
        pass  # a directory (unlink of one fails with EISDIR, or EPERM on some systems)
    try:
        with os.scandir(path) as children:  # an upload's folder: its data file, usually
            for child in children:
                if child.is_file(follow_symlinks=False):
                    os.unlink(child.path)
        os.rmdir(path)
    except OSError:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
