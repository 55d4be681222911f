"""Load generators: request floods at a fixed concurrency, and pools of concurrent operations.

Floods (one URL, keep-alive connections, a new request as soon as the previous answer is in)
have two backends, chosen with `--client`:

- `wrk` (Debian's package): C, one thread, epoll; the cheapest per request. wrk 4.1 cannot
  do HEAD: its parser waits for the body a HEAD answer announces, so no request completes.
- `python`: an asyncio `Protocol` per connection on uvloop when present, parsing only the
  status line and Content-Length. No third-party client in the hot path.
- `auto` (the default): wrk where it works, python for HEAD.

Measured here (`python -m bench calibrate`): at the request rates these servers reach on two
cores (hundreds to a few thousand per second) every client costs well under 0.1 ms of CPU per
request, a few percent of one core; wrk about 20% less than the python client.

Both report the load generator's own CPU seconds, so a table can show it beside the server's.
`calibrate()` runs each against a server to show which costs least per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WRK = "/usr/bin/wrk"


@dataclass
class FloodResult:
    client: str
    connections: int
    seconds: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    client_cpu_seconds: float
    statuses: dict[str, int] = field(default_factory=dict)
    # With `timed` (python client): (when the answer came, time.time(); latency in ms) each.
    timed_samples: list[tuple[float, float]] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_available() -> bool:
    return os.access(WRK, os.X_OK) or shutil.which("wrk") is not None


def default_client() -> str:
    return "auto"


def resolve_client(client: str, method: str) -> str:
    if client == "auto":
        return "wrk" if wrk_available() and method != "HEAD" else "python"
    if client == "wrk" and method == "HEAD":
        return "python"  # wrk 4.1 hangs on HEAD answers
    return client


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


# -- wrk ---------------------------------------------------------------------------------------

_WRK_SCRIPT = """
wrk.method = "%(method)s"
%(headers)s
local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
done = function(summary, latency, requests)
  local parts = {}
  for k, v in pairs(statuses) do parts[#parts + 1] = string.format('"%%d": %%d', k, v) end
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, '
    .. '"connect": %%d, "read": %%d, "write": %%d, "timeout": %%d, "status": %%d, '
    .. '"statuses": {%%s}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status, table.concat(parts, ", ")))
end
"""


def _wrk_flood(
    url: str, method: str, headers: dict[str, str], connections: int, seconds: float
) -> FloodResult:
    """wrk with one thread; its `response` hook counts statuses (a small cost per request)."""
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT % {"method": method, "headers": header_lines})
    try:
        command = [
            shutil.which("wrk") or WRK, "-t1", f"-c{connections}",
            f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", script.name, url,
        ]  # fmt: skip
        before = os.times()
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        after = os.times()
    finally:
        Path(script.name).unlink(missing_ok=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    data: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    cpu = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    statuses = {str(k): int(v) for k, v in data["statuses"].items()}
    bad = sum(v for k, v in statuses.items() if not k.startswith("2"))
    socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    return FloodResult(
        client="wrk",
        connections=connections,
        seconds=data["duration_us"] / 1e6,
        requests=int(data["requests"]),
        errors=bad + socket_errors,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        client_cpu_seconds=cpu,
        statuses=statuses,
    )


# -- the asyncio client --------------------------------------------------------------------------


class _FloodProtocol(asyncio.Protocol):
    """One keep-alive connection sending `request` again as soon as each answer is complete."""

    def __init__(self, request: bytes, head_only: bool, stats: _FloodStats) -> None:
        self.request = request
        self.head_only = head_only
        self.stats = stats
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if self.stats.stopping:
            self.transport.close()
            return
        self.sent_at = time.perf_counter_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[9:12])
            length = 0
            if not self.head_only:
                head = bytes(buffer[:end]).lower()
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = head.find(b"\r\n", at + 2)
                    length = int(head[at + 17 : stop if stop >= 0 else end])
            total = end + 4 + length
            if len(buffer) < total:
                return
            del buffer[:total]
            self.stats.record(time.perf_counter_ns() - self.sent_at, status)
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stats.stopping:
            self.stats.errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class _FloodStats:
    latencies_ns: list[int] = field(default_factory=list)
    statuses: dict[bytes, int] = field(default_factory=dict)
    errors: int = 0
    stopping: bool = False
    recording: bool = False
    timed: bool = False
    timed_samples: list[tuple[float, int]] = field(default_factory=list)

    def record(self, latency_ns: int, status: bytes) -> None:
        if self.recording:
            self.latencies_ns.append(latency_ns)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if self.timed:
                self.timed_samples.append((time.time(), latency_ns))


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run_async(factory: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine on a fresh (uv)loop."""
    loop = _event_loop()
    try:
        return loop.run_until_complete(factory())
    finally:
        loop.close()


def _python_flood(
    url: str, method: str, headers: dict[str, str], connections: int, seconds: float,
    warmup: float = 0.5, stop: threading.Event | None = None, timed: bool = False,
) -> FloodResult:  # fmt: skip
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    stats = _FloodStats(timed=timed)

    async def flood() -> float:
        loop = asyncio.get_running_loop()
        protocols = []
        for _ in range(connections):
            _transport, protocol = await loop.create_connection(
                lambda: _FloodProtocol(request, method == "HEAD", stats), host, port
            )
            protocols.append(protocol)
        await asyncio.sleep(warmup)
        stats.recording = True
        started = time.perf_counter()
        if stop is None:
            await asyncio.sleep(seconds)
        else:  # until told, at most `seconds`
            while not stop.is_set() and time.perf_counter() - started < seconds:
                await asyncio.sleep(0.02)
        stats.recording = False
        elapsed = time.perf_counter() - started
        stats.stopping = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.closed for p in protocols)), timeout=15)
        return elapsed

    before = os.times()
    elapsed = run_async(flood)
    after = os.times()
    cpu = (after.user + after.system) - (before.user + before.system)
    ordered = sorted(stats.latencies_ns)
    statuses = {k.decode(): v for k, v in stats.statuses.items()}
    bad = sum(v for k, v in statuses.items() if not k.startswith("2"))
    # The warm-up's share of CPU is small next to the measured part; charge it all anyway.
    return FloodResult(
        client="python",
        connections=connections,
        seconds=elapsed,
        requests=len(ordered),
        errors=bad + stats.errors,
        p50_ms=percentile(ordered, 0.50) / 1e6,
        p99_ms=percentile(ordered, 0.99) / 1e6,
        client_cpu_seconds=cpu,
        statuses=statuses,
        timed_samples=[(at, ns / 1e6) for at, ns in stats.timed_samples],
    )


def flood(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    connections: int = 64,
    seconds: float = 10.0,
    client: str = "auto",
    stop: threading.Event | None = None,
    timed: bool = False,
) -> FloodResult:
    """With `stop`: the python client, recording until the event is set (at most `seconds`);
    with `timed`, every sample with the time it completed."""
    client = "python" if stop is not None or timed else resolve_client(client, method)
    if client == "wrk":
        return _wrk_flood(url, method, headers or {}, connections, seconds)
    if client == "python":
        warmup = 0.05 if stop is not None else 0.5  # (a run may be short: start at once)
        return _python_flood(
            url, method, headers or {}, connections, seconds, warmup, stop, timed
        )
    raise ValueError(f"unknown flood client {client!r}")


def calibrate(url: str, method: str, headers: dict[str, str], seconds: float) -> list[FloodResult]:
    """Each available client against the same URL: requests/s and client CPU per request."""
    clients = ["python"] + (["wrk"] if wrk_available() and method != "HEAD" else [])
    return [flood(url, method, headers, 64, seconds, client=c) for c in clients]


# -- pools of operations ---------------------------------------------------------------------------


@dataclass
class PoolResult:
    operations: int
    seconds: float
    client_cpu_seconds: float
    latencies_ms: list[float]

    @property
    def ops_per_second(self) -> float:
        return self.operations / self.seconds if self.seconds else 0.0


def run_pool(
    concurrency: int,
    jobs: Sequence[Any],
    worker: Callable[[Any, Any], Awaitable[int]],
    connect: Callable[[], Awaitable[Any]],
    deadline_seconds: float = 3600.0,
) -> PoolResult:
    """Run `worker(conn, job)` for each job with `concurrency` connections; each returns its
    operation count. Stops taking new jobs after `deadline_seconds` (a bounded run)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    latencies: list[float] = []
    counted = [0]

    async def one_worker(stop_at: float) -> None:
        conn = await connect()
        try:
            while time.monotonic() < stop_at:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                done = await worker(conn, job)  # not `+= await`: that reads before awaiting
                counted[0] += done
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            await conn.close()

    async def main() -> float:
        stop_at = time.monotonic() + deadline_seconds
        started = time.perf_counter()
        await asyncio.gather(*(one_worker(stop_at) for _ in range(concurrency)))
        return time.perf_counter() - started

    before = os.times()
    elapsed = run_async(main)
    after = os.times()
    cpu = (after.user + after.system) - (before.user + before.system)
    return PoolResult(counted[0], elapsed, cpu, latencies)
