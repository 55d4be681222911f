"""`python -m bench limits`: the machine's ceilings for the work the registries do.

- SHA-256 with hashlib on one core (bounds one push stream), and on every core at once
  (bounds concurrent pushes; hashlib releases the GIL, so threads suffice).
- Sequential disk write in the benchmark's temporary folder, with fsync at the end, and
  without it (page cache only).
- Loopback TCP: one sender (`sendall` of a large buffer) to one receiver (`recv_into`), and
  the same with the sender's bytes going out by `sendfile` from a file in the page cache
  (no copy through user space: the fastest way to serve a blob over loopback).
- A push's whole work at its simplest, with no HTTP and no event loop: bytes sent over
  loopback by a thread of this process, received in 4 MiB blocks, each hashed in one
  thread and written in another (with write-behind), then one `fdatasync`. On a machine
  with few cores this, not one core's SHA-256, is the most a push can reach: the sender,
  the receiver, the hash and the page-cache copy all need a core.

All in MB/s (10^6 bytes per second).
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

MB = 1_000_000
MIB = 1024 * 1024
BLOCK = 4 * MIB


def sha256_mbps(total: int, threads: int = 1) -> float:
    data = os.urandom(BLOCK)
    per_thread = max(1, total // BLOCK // threads)

    def hash_all() -> None:
        hasher = hashlib.sha256()
        for _ in range(per_thread):
            hasher.update(data)
        hasher.hexdigest()

    workers = [threading.Thread(target=hash_all) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    return per_thread * threads * BLOCK / elapsed / MB


def disk_write_mbps(folder: Path, total: int, fsync: bool, block: int = 16 * MIB) -> float:
    path = folder / f".bench-disk-{os.getpid()}"
    data = os.urandom(block)
    count = max(1, total // block)
    try:
        started = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(count):
                os.write(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        elapsed = time.perf_counter() - started
    finally:
        path.unlink(missing_ok=True)
    return count * block / elapsed / MB


def loopback_mbps(total: int, block: int = BLOCK, from_file: Path | None = None) -> float:
    """Loopback TCP throughput; with `from_file`, sent by `sendfile` from a file of `block`
    bytes (written first, so it is in the page cache)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received = [0]

    def receive() -> None:
        conn, _ = listener.accept()
        buffer = memoryview(bytearray(BLOCK))  # as the benchmark client reads
        with conn:
            while True:
                got = conn.recv_into(buffer)
                if not got:
                    return
                received[0] += got

    receiver = threading.Thread(target=receive)
    receiver.start()
    data = os.urandom(block)
    count = max(1, total // block)
    source = None
    if from_file is not None:
        from_file.write_bytes(data)
        source = from_file.open("rb")
    try:
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sender:
            for _ in range(count):
                if source is None:
                    sender.sendall(data)
                else:
                    sender.sendfile(source, 0, block)
            sender.shutdown(socket.SHUT_WR)
            receiver.join(timeout=120)
        elapsed = time.perf_counter() - started
    finally:
        listener.close()
        if source is not None:
            source.close()
            assert from_file is not None
            from_file.unlink(missing_ok=True)
    return received[0] / elapsed / MB


def push_pipeline_mbps(folder: Path, total: int, block: int = BLOCK) -> float:
    """Loopback receive + SHA-256 + durable write of `total` bytes, each stage in its own
    thread (see the module's docstring)."""
    from registry.storage.writeback import WriteBehind

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    data = os.urandom(block)
    count = max(1, total // block)
    path = folder / f".bench-push-{os.getpid()}"

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sender:
            for _ in range(count):
                sender.sendall(data)

    def stage(work: Callable[[bytearray], object], blocks: queue.Queue[bytearray | None]) -> None:
        while (item := blocks.get()) is not None:
            work(item)

    hasher = hashlib.sha256()
    to_hash: queue.Queue[bytearray | None] = queue.Queue(2)
    to_write: queue.Queue[bytearray | None] = queue.Queue(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    behind, written = WriteBehind(fd, 0), [0]

    def write(item: bytearray) -> None:
        os.pwrite(fd, item, written[0])
        behind.wrote(written[0], len(item))
        written[0] += len(item)

    threads = [
        threading.Thread(target=send),
        threading.Thread(target=stage, args=(hasher.update, to_hash)),
        threading.Thread(target=stage, args=(write, to_write)),
    ]
    try:
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        conn, _ = listener.accept()
        with conn:
            while True:
                buffer = bytearray(block)
                view, got = memoryview(buffer), 0
                while got < block and (n := conn.recv_into(view[got:])):
                    got += n
                if got:
                    received = buffer if got == block else buffer[:got]
                    to_hash.put(received)
                    to_write.put(received)
                if got < block:
                    break
        to_hash.put(None)
        to_write.put(None)
        for thread in threads:
            thread.join(timeout=300)
        os.fdatasync(fd)
        elapsed = time.perf_counter() - started
        hasher.hexdigest()
    finally:
        os.close(fd)
        listener.close()
        path.unlink(missing_ok=True)
    return written[0] / elapsed / MB


def measure(folder: Path, size_mib: int = 1024) -> dict[str, float]:
    """Each ceiling once (the best of two runs, as the machine is shared)."""
    size = size_mib * MIB
    cores = os.cpu_count() or 1

    def best(fn: object, *args: object) -> float:
        assert callable(fn)
        return round(max(fn(*args), fn(*args)), 1)

    return {
        "sha256_one_core_mbps": best(sha256_mbps, size, 1),
        "sha256_all_cores_mbps": best(sha256_mbps, size * cores, cores),
        "disk_write_fsync_mbps": best(disk_write_mbps, folder, size, True),
        "disk_write_cache_mbps": best(disk_write_mbps, folder, size, False),
        "loopback_tcp_mbps": best(loopback_mbps, size * 2),
        "loopback_sendfile_mbps": best(
            loopback_mbps, size * 2, 64 * MIB, folder / f".bench-send-{os.getpid()}"
        ),
        "push_pipeline_mbps": best(push_pipeline_mbps, folder, size // 2),
        "cores": float(cores),
    }


def describe(limits: dict[str, float]) -> str:
    rows = [
        ("SHA-256, hashlib, one core", "sha256_one_core_mbps"),
        ("SHA-256, hashlib, all cores", "sha256_all_cores_mbps"),
        ("disk write + fsync", "disk_write_fsync_mbps"),
        ("disk write, page cache", "disk_write_cache_mbps"),
        ("loopback TCP, Python", "loopback_tcp_mbps"),
        ("loopback TCP, sendfile", "loopback_sendfile_mbps"),
        ("push: loopback+SHA-256+fsync", "push_pipeline_mbps"),
    ]
    return "\n".join(f"  {label:<30} {limits.get(key, 0):>9.0f} MB/s" for label, key in rows)
