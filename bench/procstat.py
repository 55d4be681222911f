"""CPU time and memory of a process tree, read from /proc (Linux only).

A server is measured as its whole tree (uvicorn's supervisor and its workers), so a
multi-worker run is charged for every process. CPU is utime + stime of each live process;
children that exited are not counted, which is fine for servers that live through a workload.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants that are alive now."""
    pids, queue = [], [pid]
    while queue and len(pids) < 4096:
        current = queue.pop()
        pids.append(current)
        queue += _children(current)
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def peak_rss_bytes(pid: int) -> int:
    """The kernel's high-water mark (VmHWM) of one process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Usage:
    """What a tree used over one measured stretch."""

    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0  # highest sampled sum over the tree
    peak_worker_rss_bytes: int = 0  # highest sampled single process
    start_rss_bytes: int = 0
    end_rss_bytes: int = 0


@dataclass
class TreeSampler:
    """Samples a process tree's RSS every `interval` seconds in a thread while in use.

    `with TreeSampler(pid) as s: ...` then `s.usage` has the CPU delta and the RSS peaks.
    """

    pid: int
    interval: float = 0.02
    usage: Usage = field(default_factory=Usage)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _cpu_start: float = 0.0
    _cpu_last: float = 0.0

    def _sample(self) -> int:
        sizes = [rss_bytes(p) for p in tree(self.pid)]
        total = sum(sizes)
        self.usage.peak_rss_bytes = max(self.usage.peak_rss_bytes, total)
        self.usage.peak_worker_rss_bytes = max(self.usage.peak_worker_rss_bytes, *sizes, 0)
        return total

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(self.interval):
            self._sample()
            count += 1
            if count % 25 == 0:  # for a tree that ends before the stretch does
                self._cpu_last = tree_cpu_seconds(self.pid)

    def __enter__(self) -> TreeSampler:
        self._cpu_start = self._cpu_last = tree_cpu_seconds(self.pid)
        self.usage.start_rss_bytes = self._sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.usage.end_rss_bytes = self._sample()
        # A process stopped meanwhile (Distribution, for its offline garbage collection): its
        # CPU up to the last reading while it ran.
        alive = Path(f"/proc/{self.pid}").exists()
        end = tree_cpu_seconds(self.pid) if alive else self._cpu_last
        self.usage.cpu_seconds = max(end, self._cpu_start) - self._cpu_start


class ClientClock:
    """CPU used by this process and its waited-for children: the load generator's cost."""

    def __init__(self) -> None:
        self._start = os.times()
        self._start_wall = time.perf_counter()

    def cpu_seconds(self) -> float:
        now = os.times()
        return (
            now.user
            + now.system
            + now.children_user
            + now.children_system
            - self._start.user
            - self._start.system
            - self._start.children_user
            - self._start.children_system
        )

    def wall_seconds(self) -> float:
        return time.perf_counter() - self._start_wall
