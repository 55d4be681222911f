"""glibc's allocator, set for a server that moves large buffers.

An upload passes through 1 MiB receive buffers and blocks of a few MiB. By default glibc
serves sizes like these with fresh `mmap`s, and hands the free top of its heap back to the
kernel once more than a few MiB of it is free (both thresholds adapt, but the pause between
two chunks of an upload frees enough to trim again). Every buffer's pages are then faulted
in and zeroed anew: on this project's VM, where new pages come slowly, that was a fifth of a
chunked push's CPU. Fixed thresholds keep freed buffers in the heap for the next request;
their size is bounded by the upload buffer budget, and they are not counted twice.

Kept, they are also kept once the uploads are over: a worker that took a 512 MiB push held
50 MiB more through the pulls after it. `give_back_freed` returns them (`malloc_trim`, every
arena); the BlobStore calls it when no upload has run for a moment (`BlobStore.on_idle`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit: blocks come from the heap
TRIM_THRESHOLD = 256 * 1024 * 1024  # free heap kept before any is given back


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def give_back_freed() -> bool:
    """Return the free memory of every heap arena to the kernel; False without glibc."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def keep_freed_buffers() -> bool:
    """Set this process's allocator thresholds; False where there is no glibc `mallopt`
    (musl, other systems), which leaves the allocator as it was."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
