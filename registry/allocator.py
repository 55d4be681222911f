"""glibc's allocator, set for a server that moves large buffers.

An upload passes through 1 MiB receive buffers and blocks of a few MiB. By default glibc
serves sizes like these with fresh `mmap`s, and hands the free top of its heap back to the
kernel once more than a few MiB of it is free (both thresholds adapt, but the pause between
two chunks of an upload frees enough to trim again). Every buffer's pages are then faulted
in and zeroed anew: on this project's VM, where new pages come slowly, that was a fifth of a
chunked push's CPU. Fixed thresholds keep freed buffers in the heap for the next request;
their size is bounded by the upload buffer budget, and they are not counted twice.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit: blocks come from the heap
TRIM_THRESHOLD = 256 * 1024 * 1024  # free heap kept before any is given back


def keep_freed_buffers() -> bool:
    """Set this process's allocator thresholds; False where there is no glibc `mallopt`
    (musl, other systems), which leaves the allocator as it was."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
