"""Prometheus metrics: what the server counts, and `/metrics` in the text format.

    registry_http_requests_total{route,method,status}        answers, by route template
    registry_http_request_duration_seconds{route,method}     latency histogram
    registry_http_received_bytes_total{route}                request body bytes
    registry_http_sent_bytes_total{route}                    response body bytes
    registry_uploads_in_progress                             requests streaming upload bytes
    registry_upload_sessions                                 upload sessions open (database)
    registry_blobs_stored, registry_blob_bytes_stored        blobs and their bytes (database)
    registry_db_connections_in_use, registry_db_pool_size    metadata database connections
    registry_auth_tokens_issued_total                        tokens /auth/token handed out
    registry_auth_denials_total{reason}                      requests refused by auth:
                                                             bad_credentials, forbidden,
                                                             rate_limited

The `registry_upload_sessions` and `*_stored` gauges are read from the database, which all
replicas share: they are the registry's, not the replica's (take `max` across replicas, not
`sum`). They are read at most every `STORED_MAX_AGE` seconds, when `/metrics` is scraped.

With several worker processes, prometheus-client's multiprocess mode: each process writes
its values to files in a folder of the run folder (`PROMETHEUS_MULTIPROC_DIR`, which must be
set before the workers import prometheus-client: `prepare_multiprocess`), and a scrape, in
whichever worker answers, adds them up. The live gauges of a worker that died are dropped at
the next scrape.

The hot path pays a few dictionary lookups and counter increments per request: the labelled
children are cached here, not looked up through prometheus-client's locks each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.api.context import Services
    from registry.metadata.db import Database

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STORED_MAX_AGE = 10.0  # seconds between two reads of the database's totals
POOL_SAMPLE_SECONDS = 1.0
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip


def prepare_multiprocess(run_dir: Path) -> Path:
    """Before worker processes start: an empty metrics folder, named in the environment that
    the workers inherit (prometheus-client reads it when first imported)."""
    folder = run_dir / "metrics"
    folder.mkdir(mode=0o700, exist_ok=True)
    for leftover in folder.glob("*.db"):
        leftover.unlink()
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def multiprocess_dir() -> str | None:
    folder = os.environ.get(MULTIPROC_ENV)
    return folder if folder and os.path.isdir(folder) else None


class Metrics:
    """The metrics of one server process."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created`: noise

        # A registry of our own: several apps in one process (tests) do not collide, and
        # prometheus-client's default process metrics (not multiprocess-safe) stay out.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "registry_http_requests", "HTTP requests answered, by route template, method and "
            "status.", ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "registry_http_request_duration_seconds", "Time from a request's head to the end "
            "of its answer.", ["route", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.received = Counter(
            "registry_http_received_bytes", "Request body bytes received.", ["route"], registry=r
        )
        self.sent = Counter(
            "registry_http_sent_bytes", "Response body bytes sent.", ["route"], registry=r
        )
        self.uploads_in_progress = Gauge(
            "registry_uploads_in_progress", "Requests carrying upload bytes right now.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.upload_sessions = Gauge(
            "registry_upload_sessions", "Upload sessions open in the database (all replicas).",
            registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.blobs_stored = Gauge(
            "registry_blobs_stored", "Blobs stored (all replicas).",
            registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.blob_bytes_stored = Gauge(
            "registry_blob_bytes_stored", "Bytes of the blobs stored (all replicas).",
            registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.db_in_use = Gauge(
            "registry_db_connections_in_use", "Metadata database connections in use, sampled "
            "every second.", registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.db_pool_size = Gauge(
            "registry_db_pool_size", "Metadata database connections that may be open at once.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.tokens_issued = Counter(
            "registry_auth_tokens_issued", "Tokens issued by /auth/token.", registry=r
        )
        self.denials = Counter(
            "registry_auth_denials", "Requests refused by authentication or authorization.",
            ["reason"], registry=r,
        )  # fmt: skip
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}
        self._stored_at = -STORED_MAX_AGE

    def observe(
        self, route: str, method: str, status: int, seconds: float, received: int, sent: int
    ) -> None:
        """One answered request."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            if len(self._children) > 10_000:  # bounded: routes are templates, but be safe
                self._children.clear()
            children = (
                self.requests.labels(route, method, str(status)),
                self.duration.labels(route, method),
                self.received.labels(route),
                self.sent.labels(route),
            )
            self._children[key] = children
        requests, duration, received_bytes, sent_bytes = children
        requests.inc()
        duration.observe(seconds)
        if received:
            received_bytes.inc(received)
        if sent:
            sent_bytes.inc(sent)

    async def refresh_stored(self, services: Services) -> None:
        """Read the database's totals, unless read less than `STORED_MAX_AGE` seconds ago."""
        now = time.monotonic()
        if now - self._stored_at < STORED_MAX_AGE:
            return
        self._stored_at = now
        blobs, size, sessions = await services.metadata.totals()
        self.blobs_stored.set(blobs)
        self.blob_bytes_stored.set(size)
        self.upload_sessions.set(sessions)

    async def sample_pool(self, db: Database) -> None:
        """Every second, this process's database connections in use (a background task)."""
        self.db_pool_size.set(db.pool_capacity())
        while True:
            self.db_in_use.set(db.connections_in_use())
            await asyncio.sleep(POOL_SAMPLE_SECONDS)

    def exposition(self) -> bytes:
        """The text format: this process's metrics, or every worker's in multiprocess mode."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        folder = multiprocess_dir()
        if folder is None:
            return generate_latest(self.registry)
        _forget_dead_processes(folder)
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=folder)  # type: ignore[no-untyped-call]
        return generate_latest(combined)


def content_type() -> str:
    from prometheus_client import CONTENT_TYPE_LATEST

    return str(CONTENT_TYPE_LATEST)


def _forget_dead_processes(folder: str) -> None:
    """Drop the live gauges of worker processes that are gone (killed, or replaced on
    SIGHUP): their in-progress counts would stay in the sums forever."""
    from prometheus_client.multiprocess import mark_process_dead

    pids: set[int] = set()
    for path in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        number = Path(path).stem.rsplit("_", 1)[-1]
        if number.isdigit():
            pids.add(int(number))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, someone else's: not ours to judge
            pass
