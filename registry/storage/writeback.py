"""Write-behind for large appends: start each block's writeback at once, and let the disk
lag at most a bounded amount behind the writer.

One `fdatasync` per block flushes the device's cache and commits the journal every few
megabytes, which here halves a push's speed; one at the end instead leaves the whole blob to
be written back then. `sync_file_range` (Linux) starts the writeback of each block without
waiting and without a cache flush, so the disk works while the next blocks arrive, and the
final `fdatasync` (before a blob becomes visible) has little left to do. Where the call does
not exist this is a no-op, and the final `fdatasync` does all the work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable

LAG_BYTES = 32 * 1024 * 1024

_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4
_WAIT = _WAIT_BEFORE | _WRITE | _WAIT_AFTER


def _load() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call  # type: ignore[no-any-return]


_sync_file_range = _load()


def _range(fd: int, offset: int, length: int, flags: int) -> None:
    if _sync_file_range is None or length <= 0:
        return
    if _sync_file_range(fd, offset, length, flags) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


class WriteBehind:
    """Tracks one file's appended range; call `wrote` after each block (blocks may be
    written out of order, a few at a time)."""

    def __init__(self, fd: int, start: int, lag: int = LAG_BYTES) -> None:
        self._fd = fd
        self._end = start  # the furthest written byte so far
        self._settled = start  # bytes before this are written back
        self._lag = lag
        self._lock = threading.Lock()

    def wrote(self, offset: int, length: int) -> None:
        """Start writing back the block just written; wait for what lies too far behind."""
        _range(self._fd, offset, length, _WRITE)
        with self._lock:
            self._end = max(self._end, offset + length)
            behind = self._end - self._lag
            start, self._settled = self._settled, max(self._settled, behind)
        if behind > start:
            _range(self._fd, start, behind - start, _WAIT)
