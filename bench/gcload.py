"""Garbage collection: pulls during our online collection, and Distribution's offline one.

Both servers get the same registry through the HTTP API (unmeasured): `gc_repos`
repositories holding `gc_manifests` manifests in all. Every manifest names a shared config
and a shared base layer (mounted into each repository); every fifth also names a small layer
of its own, and those are deleted by digest (`DELETE /v2/<name>/manifests/<digest>`) before
the measurement, so that their layers become garbage.

Ours: populated with collection off, then restarted with it on (no grace period), so that
its first background run (half a minute to a minute after the start) collects them inside
the server, on the event loop that serves the pulls. Manifest GET and blob HEAD are flooded
together (32 connections each) from the restart until the run has ended, every answer
timed; measured: the p99 of the answers in the `flood_seconds` before the run (idle) and of
those during the run (its start and end from its record in `gc_runs`); the run's own time.

Distribution: the same floods idle; then it is stopped, as `registry garbage-collect`
requires (its docs: the registry must be stopped or read-only), and
`docker-registry garbage-collect config.yml` is timed; then it is started again.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime
from typing import Any

from bench import loadgen, oci
from bench.asyncraw import AsyncConnection
from bench.rawhttp import Connection, expect
from bench.report import Metric
from bench.servers import DISTRIBUTION_BINARY, OursServer, Server
from bench.workloads import Context, Outcome, Workload

CONCURRENCY = 8
DELETE_EVERY = 5  # every fifth manifest has a layer of its own, and is deleted
FLOOD_CONNECTIONS = 32  # per flood; two floods at once
RUN_WAIT_SECONDS = 600.0  # for our first background run to start (30-60 s) and end


def repo_name(index: int) -> str:
    return f"gc/r{index:06d}"


def manifest_for(config: tuple[str, int], layers: list[tuple[str, int]], index: int) -> bytes:
    doc = json.loads(oci.image_manifest(config, layers))
    doc["annotations"] = {"bench.index": str(index)}  # every manifest distinct
    return json.dumps(doc).encode()


class GarbageCollection(Workload):
    name = "gc"
    title = "pulls during garbage collection; the collection's time (one run per server)"
    repeatable = False
    metrics = (
        Metric("idle_get_p99_ms", "manifest GET p99, idle", "ms", better="lower"),
        Metric("idle_head_p99_ms", "blob HEAD p99, idle", "ms", better="lower"),
        Metric("gc_get_p99_ms", "manifest GET p99 during the collection", "ms", better="lower"),
        Metric("gc_head_p99_ms", "blob HEAD p99 during the collection", "ms", better="lower"),
        Metric("get_p99_during_over_idle", "manifest GET p99: during / idle", "x",
               better="lower", limit=1.5),
        Metric("head_p99_during_over_idle", "blob HEAD p99: during / idle", "x",
               better="lower", limit=1.5),
        Metric("gc_seconds", "collection run time", "s", better="lower"),
        Metric("served_during_gc", "serves requests during the collection (1 yes, 0 no)", "",
               target=False),
        Metric("blobs_deleted", "blobs deleted by the collection", "", target=False),
        Metric("manifests_populated", "manifests in the registry", "", target=False),
        Metric("repos_populated", "repositories in the registry", "", target=False),
        Metric("populate_seconds", "populating, all requests", "s", target=False),
    )  # fmt: skip

    def prepare(self, server: Server, ctx: Context) -> Any:
        if isinstance(server, OursServer):  # populate with collection off
            server._terminate()
            server.settings.update({"gc.enabled": "false", "gc.blob_grace_seconds": "0"})
            server.start()
        started = time.monotonic()
        state = _populate(server, ctx)
        state["populate_seconds"] = time.monotonic() - started
        if isinstance(server, OursServer):  # the next start collects, 30-60 s later
            server._terminate()
            server.settings.update({"gc.enabled": "true", "gc.interval_seconds": "3600"})
            server.start()
        if not isinstance(server, OursServer):  # (ours: its flood starts before the run)
            _floods(server, state, seconds=1.0)  # warm caches and pools, as other floods do
        return state

    def run(self, server: Server, ctx: Context, state: Any) -> Outcome:
        metrics: dict[str, float] = {
            key: state[key] for key in ("populate_seconds", "manifests_populated",
                                        "repos_populated")
        }  # fmt: skip
        notes = list(state["notes"])
        if isinstance(server, OursServer):
            cpu = _measure_ours(server, state, ctx.settings.flood_seconds, metrics, notes)
            return Outcome(metrics, 0, cpu, notes)
        idle = _floods(server, state, seconds=ctx.settings.flood_seconds)
        metrics["idle_get_p99_ms"], metrics["idle_head_p99_ms"] = idle[0].p99_ms, idle[1].p99_ms
        metrics["gc_seconds"], metrics["blobs_deleted"] = _distribution_offline_gc(server)
        metrics["served_during_gc"] = 0.0
        notes.append(
            "distribution: `registry garbage-collect` needs the registry stopped (or read-only):"
            " no pulls during it; its server CPU figure stops at the stop"
        )
        return Outcome(metrics, 0, idle[0].client_cpu_seconds + idle[1].client_cpu_seconds, notes)


def _measure_ours(
    server: OursServer,
    state: dict[str, Any],
    idle_seconds: float,
    metrics: dict[str, float],
    notes: list[str],
) -> float:
    """One flood of each kind from now until the server's first background run has ended;
    the samples of the `idle_seconds` before the run against those during it."""
    stop = threading.Event()
    floods: list[list[loadgen.FloodResult]] = []
    flooding = threading.Thread(
        target=lambda: floods.append(_floods(server, state, 3600.0, stop=stop, timed=True))
    )
    flooding.start()
    try:
        run = _wait_for_first_run(server)
    finally:
        stop.set()
        flooding.join()
    started, finished = run["window"]
    for index, kind in enumerate(("get", "head")):
        samples = floods[0][index].timed_samples
        idle = sorted(ms for at, ms in samples if started - idle_seconds <= at < started)
        during = sorted(ms for at, ms in samples if started <= at <= finished)
        if not idle or not during:
            raise RuntimeError(f"no {kind} samples idle ({len(idle)}) or during ({len(during)})")
        metrics[f"idle_{kind}_p99_ms"] = loadgen.percentile(idle, 0.99)
        metrics[f"gc_{kind}_p99_ms"] = loadgen.percentile(during, 0.99)
        ratio_key = "get_p99_during_over_idle" if kind == "get" else "head_p99_during_over_idle"
        metrics[ratio_key] = metrics[f"gc_{kind}_p99_ms"] / metrics[f"idle_{kind}_p99_ms"]
        notes.append(
            f"ours: {kind} samples, {len(idle):,} in the {idle_seconds:.0f} s before the run, "
            f"{len(during):,} during it"
        )
    metrics["gc_seconds"] = float(run["seconds"])
    metrics["blobs_deleted"] = float(run["blobs_deleted"])
    metrics["served_during_gc"] = 1.0
    errors = floods[0][0].errors + floods[0][1].errors
    notes.append(
        f"ours: collected inside the server ({run['runs']} concurrent runs, one per worker),"
        f" which answered every request ({errors} errors)"
    )
    return floods[0][0].client_cpu_seconds + floods[0][1].client_cpu_seconds


def _populate(server: Server, ctx: Context) -> dict[str, Any]:
    settings = ctx.settings
    repos, count = settings.gc_repos, settings.gc_manifests
    budget = settings.gc_budget_seconds
    rng = random.Random("gc")
    base = rng.randbytes(1024)
    config = oci.config_blob([oci.sha256_digest(base)])
    config_ref = (oci.sha256_digest(config), len(config))
    base_ref = (oci.sha256_digest(base), len(base))
    with Connection(server.host) as conn:
        oci.push_blob(conn, repo_name(0), base_ref[0], base)
        oci.push_blob(conn, repo_name(0), config_ref[0], config)
    notes: list[str] = []

    async def connect() -> AsyncConnection:
        return await AsyncConnection.open(server.host)

    async def mount(conn: AsyncConnection, index: int) -> int:
        for digest in (base_ref[0], config_ref[0]):
            await oci.amount_blob(conn, repo_name(index), digest, repo_name(0))
        return 1

    mounted = loadgen.run_pool(CONCURRENCY, list(range(1, repos)), mount, connect, budget / 4)
    repos = 1 + mounted.operations

    jobs = []
    for index in range(count):
        own = rng.randbytes(256) if index % DELETE_EVERY == 0 else None
        layers = [base_ref] + ([(oci.sha256_digest(own), len(own))] if own else [])
        body = manifest_for(config_ref, layers, index)
        jobs.append((repo_name(index % repos), f"t{index:07d}", own, body))

    async def push(conn: AsyncConnection, job: tuple[str, str, bytes | None, bytes]) -> int:
        repository, tag, own, body = job
        if own is not None:
            await oci.apush_blob(conn, repository, oci.sha256_digest(own), own)
        await oci.aput_manifest(conn, repository, tag, body)
        return 1

    pushed = loadgen.run_pool(CONCURRENCY, jobs, push, connect, budget)
    done = jobs[: pushed.operations]  # (a pool stopped by its budget: the first ones done)
    doomed = [(r, oci.sha256_digest(body)) for r, _t, own, body in done if own is not None]

    async def delete(conn: AsyncConnection, job: tuple[str, str]) -> int:
        repository, digest = job
        answer = await conn.request("DELETE", f"/v2/{repository}/manifests/{digest}")
        expect(answer, 202, what="manifest delete")
        return 1

    deleted = loadgen.run_pool(CONCURRENCY, doomed, delete, connect, budget)
    if pushed.operations < count or mounted.operations < repos - 1:
        notes.append(
            f"{server.name}: populated {pushed.operations:,} of {count:,} manifests in "
            f"{repos:,} repositories within the budget"
        )
    notes.append(
        f"{server.name}: {pushed.operations:,} manifests ({pushed.ops_per_second:,.0f}/s), "
        f"{deleted.operations:,} of them deleted before collecting"
    )
    kept = next(i for i in range(len(done)) if i % DELETE_EVERY)
    return {
        "get": (f"/v2/{done[kept][0]}/manifests/{done[kept][1]}", {"Accept": oci.OCI_MANIFEST}),
        "head": (f"/v2/{repo_name(repos // 2)}/blobs/{base_ref[0]}", {}),
        "manifests_populated": float(pushed.operations),
        "repos_populated": float(repos),
        "notes": notes,
    }


def _floods(
    server: Server,
    state: dict[str, Any],
    seconds: float,
    stop: threading.Event | None = None,
    timed: bool = False,
) -> list[loadgen.FloodResult]:
    """Manifest GET and blob HEAD floods at the same time (python client: both methods)."""
    results: list[loadgen.FloodResult | None] = [None, None]

    def one(slot: int, key: str, method: str) -> None:
        path, headers = state[key]
        results[slot] = loadgen.flood(
            server.url + path, method, headers, FLOOD_CONNECTIONS, seconds,
            client="python", stop=stop, timed=timed,
        )  # fmt: skip

    threads = [
        threading.Thread(target=one, args=(0, "get", "GET")),
        threading.Thread(target=one, args=(1, "head", "HEAD")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] is not None and results[1] is not None
    return [results[0], results[1]]


def _wait_for_first_run(server: OursServer) -> dict[str, Any]:
    """The server's first background collection, once finished: with several workers each
    collects at once (their batches take turns), so the runs that began before the first one
    ended, taken together: their figures summed, and the span from the first start to the
    last end as Unix times (the database keeps UTC without a zone)."""
    database = server.workdir / "data" / "registry.db"
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    while True:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as conn:
            rows = conn.execute(
                "SELECT started_at, finished_at, status, detail FROM gc_runs ORDER BY id"
            ).fetchall()
        first = rows[0] if rows else None
        if first is not None and first[2] != "running":
            together = [row for row in rows if row[0] <= first[1]]
            if all(row[2] != "running" for row in together):
                break
        if time.monotonic() > deadline:
            raise RuntimeError("the server's garbage collection did not run")
        time.sleep(0.1)

    def unix(stamp: str) -> float:
        return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()

    window = (min(unix(row[0]) for row in together), max(unix(row[1]) for row in together))
    figures = [json.loads(row[3]) for row in together]
    return {
        "window": window,
        "runs": len(together),
        "seconds": window[1] - window[0],
        "blobs_deleted": sum(f["blobs_deleted"] for f in figures),
    }


def _distribution_offline_gc(server: Server) -> tuple[float, float]:
    config = server.workdir / "config.yml"
    server._terminate()
    started = time.monotonic()
    done = subprocess.run(
        [DISTRIBUTION_BINARY, "garbage-collect", str(config)],
        capture_output=True, text=True, timeout=7200, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    server.start()
    if done.returncode != 0:
        raise RuntimeError(f"garbage-collect failed: {done.stderr[-2000:]}")
    # Its summary: "N blobs marked, M blobs and K manifests eligible for deletion" (2.8; a
    # deleted manifest is a blob of its own there).
    found = re.search(r"(\d+) blobs (?:and \d+ manifests )?eligible for deletion", done.stdout)
    return seconds, float(found[1]) if found else 0.0
