"""The workloads of issue 4: each prepares a fresh server (unmeasured), then measures one thing.

A workload's `run` returns its own figures; the runner adds what every workload gets (server
CPU, peak RSS, the load generator's CPU, CPU seconds per GB moved).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bench import loadgen, oci
from bench.asyncraw import AsyncConnection
from bench.rawhttp import Connection, FileBody
from bench.report import Metric
from bench.seaweed import SeaweedFS
from bench.servers import Server

MIB = 1024 * 1024
MB = 1_000_000


@dataclass
class Settings:
    blob_mib: int = 512
    chunk_mib: int = 16
    pulls: int = 3
    flood_seconds: float = 10.0
    flood_connections: int = 64
    small_count: int = 200
    small_concurrency: int = 16
    small_bytes: int = 4096
    parallel_pushes: int = 8
    parallel_mib: int = 64
    memory_mib: int = 1024
    scale_tags: int = 100_000
    scale_repos: int = 10_000
    scale_budget_seconds: float = 900.0
    scale_samples: int = 300
    gc_repos: int = 10_000
    gc_manifests: int = 100_000
    gc_budget_seconds: float = 1800.0
    docker_layers: int = 5
    docker_layer_mib: int = 40
    build_files: int = 400
    build_mib: int = 12
    limits_mib: int = 1024
    client: str = "auto"

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            blob_mib=128, pulls=2, flood_seconds=4.0, small_count=100, parallel_mib=16,
            memory_mib=256, scale_tags=5_000, scale_repos=500, scale_samples=15,
            docker_layer_mib=8, limits_mib=256, gc_repos=500, gc_manifests=5_000,
            build_files=120, build_mib=3,
        )  # fmt: skip


@dataclass
class Payload:
    path: Path
    size: int
    digest: str

    def open(self) -> BinaryIO:
        return self.path.open("rb")


@dataclass
class Context:
    settings: Settings
    folder: Path
    seaweed: SeaweedFS | None = None  # S3 mode: every server gets a bucket of this S3 server
    _payloads: dict[tuple[str, int], Payload] = field(default_factory=dict)

    def payload(self, name: str, size: int) -> Payload:
        """A file of `size` pseudo-random bytes (seeded by name), made once and kept."""
        key = (name, size)
        if key not in self._payloads:
            path = self.folder / f"{name}-{size}.bin"
            rng = random.Random(f"{name}-{size}")
            import hashlib

            hasher = hashlib.sha256()
            with path.open("wb") as out:
                remaining = size
                while remaining:
                    block = rng.randbytes(min(16 * MIB, remaining))
                    hasher.update(block)
                    out.write(block)
                    remaining -= len(block)
            self._payloads[key] = Payload(path, size, f"sha256:{hasher.hexdigest()}")
        return self._payloads[key]


@dataclass
class Outcome:
    metrics: dict[str, float]
    bytes_moved: int = 0
    client_cpu_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Workload:
    """`prepare` (not measured) returns a state that `run` measures with."""

    name = ""
    title = ""
    metrics: tuple[Metric, ...] = ()
    repeatable = True  # False: run once per server whatever --repeat says
    redirect = False  # S3 mode: both servers answer blob GETs with a redirect to S3
    min_rounds = 1  # rounds run even when --repeat asks for fewer (noisy workloads)
    tracks_rss_growth = False
    auth = False  # both servers with token auth (servers.py), each request with a token
    baseline: str | None = None  # the same workload without auth, to show what auth costs

    def available(self, ctx: Context) -> str | None:
        """None when this workload can run here, else why not."""
        return None

    def prepare(self, server: Server, ctx: Context) -> Any:
        return None

    def run(self, server: Server, ctx: Context, state: Any) -> Outcome:
        raise NotImplementedError


def _timed(fn: Any, *args: Any) -> tuple[float, float]:
    """(wall seconds, client CPU seconds) of one call."""
    import os

    before = os.times()
    started = time.perf_counter()
    fn(*args)
    elapsed = time.perf_counter() - started
    after = os.times()
    return elapsed, (after.user + after.system) - (before.user + before.system)


# A push is hashed (one core per stream) and, for us, made durable on disk before it counts;
# the push pipeline is the same work without HTTP, sharing the machine's cores the same way.
# In S3 mode the machine's ceilings are not measured: S3's own (boto3 with no registry) are.
PUSH_CEILINGS = (
    "sha256_one_core_mbps",
    "disk_write_fsync_mbps",
    "push_pipeline_mbps",
    "s3_put_mbps",
    "s3_multipart_put_mbps",
)
PULL_CEILINGS = (
    "loopback_sendfile_mbps",
    "loopback_tcp_mbps",
    "s3_get_mbps",
    "s3_ranged_get_mbps",
)


class PushMonolithic(Workload):
    name = "push-monolithic"
    title = "push of one large blob: POST, then one PUT with the whole body"
    metrics = (Metric("mbps", "throughput", "MB/s", ceiling=PUSH_CEILINGS),)

    def size(self, ctx: Context) -> int:
        return ctx.settings.blob_mib * MIB

    def prepare(self, server: Server, ctx: Context) -> Any:
        return ctx.payload("big", self.size(ctx))

    def run(self, server: Server, ctx: Context, state: Any) -> Outcome:
        payload: Payload = state
        with payload.open() as file, Connection(server.host) as conn:
            elapsed, cpu = _timed(
                oci.push_blob, conn, "bench/push", payload.digest,
                FileBody(file, 0, payload.size),
            )  # fmt: skip
        return Outcome({"mbps": payload.size / elapsed / MB}, payload.size, cpu)


class PushChunked(PushMonolithic):
    name = "push-chunked"
    title = "push of one large blob in PATCH chunks with Content-Range, then an empty PUT"

    def run(self, server: Server, ctx: Context, state: Any) -> Outcome:
        payload: Payload = state
        chunk = ctx.settings.chunk_mib * MIB
        with payload.open() as file, Connection(server.host) as conn:
            elapsed, cpu = _timed(
                oci.push_blob_chunked, conn, "bench/chunked", payload.digest, file,
                payload.size, chunk,
            )  # fmt: skip
        return Outcome({"mbps": payload.size / elapsed / MB}, payload.size, cpu)


class Pull(PushMonolithic):
    name = "pull"
    title = "GET of the large blob, sequentially, bytes discarded by the client"
    metrics = (Metric("mbps", "throughput", "MB/s", ceiling=PULL_CEILINGS),)

    def prepare(self, server: Server, ctx: Context) -> Any:
        payload = ctx.payload("big", self.size(ctx))
        with payload.open() as file, Connection(server.host) as conn:
            oci.push_blob(conn, "bench/pull", payload.digest, FileBody(file, 0, payload.size))
            pull = oci.pull_blob_redirected if self.redirect else oci.pull_blob
            pull(conn, "bench/pull", payload.digest)  # warm both page caches alike
        return payload

    def run(self, server: Server, ctx: Context, state: Any) -> Outcome:
        payload: Payload = state
        moved = [0]

        def pulls() -> None:
            with Connection(server.host) as conn:
                for _ in range(ctx.settings.pulls):
                    moved[0] += oci.pull_blob(conn, "bench/pull", payload.digest)

        elapsed, cpu = _timed(pulls)
        expected = payload.size * ctx.settings.pulls
        if moved[0] != expected:
            raise RuntimeError(f"pulled {moved[0]} bytes, expected {expected}")
        return Outcome({"mbps": moved[0] / elapsed / MB}, moved[0], cpu)


class PullRedirected(Pull):
    name = "pull-redirect"
    title = "GET of the large blob answered with a redirect to S3, followed (S3 mode only)"
    redirect = True

    def available(self, ctx: Context) -> str | None:
        return None if ctx.seaweed is not None else "only with --storage s3"

    def run(self, server: Server, ctx: Context, state: Any) -> Outcome:
        payload: Payload = state
        moved = [0]

        def pulls() -> None:
            with Connection(server.host) as conn:
                for _ in range(ctx.settings.pulls):
                    moved[0] += oci.pull_blob_redirected(conn, "bench/pull", payload.digest)

        elapsed, cpu = _timed(pulls)
        expected = payload.size * ctx.settings.pulls
        if moved[0] != expected:
            raise RuntimeError(f"pulled {moved[0]} bytes, expected {expected}")
        return Outcome({"mbps": moved[0] / elapsed / MB}, moved[0], cpu)


class ParallelPushes(Workload):
    name = "push-parallel"
    title = "concurrent monolithic pushes of distinct blobs, one connection each"
    metrics = (
        Metric(
            "mbps",
            "aggregate throughput",
            "MB/s",
            ceiling=("sha256_all_cores_mbps", "disk_write_fsync_mbps"),
        ),
    )

    def prepare(self, server: Server, ctx: Context) -> Any:
        size = ctx.settings.parallel_mib * MIB
        return [ctx.payload(f"parallel{i}", size) for i in range(ctx.settings.parallel_pushes)]

    def run(self, server: Server, ctx: Context, state: Any) -> Outcome:
        payloads: list[Payload] = state
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(payloads) + 1)

        def push(index: int, payload: Payload) -> None:
            try:
                with payload.open() as file, Connection(server.host) as conn:
                    barrier.wait(timeout=60)
                    oci.push_blob(
                        conn, f"bench/parallel{index}", payload.digest,
                        FileBody(file, 0, payload.size),
                    )  # fmt: skip
            except BaseException as exc:  # reported after the join
                errors.append(exc)

        threads = [threading.Thread(target=push, args=(i, p)) for i, p in enumerate(payloads)]

        def all_pushes() -> None:
            for thread in threads:
                thread.start()
            barrier.wait(timeout=60)
            for thread in threads:
                thread.join(timeout=900)

        elapsed, cpu = _timed(all_pushes)
        if errors:
            raise errors[0]
        total = sum(p.size for p in payloads)
        return Outcome({"mbps": total / elapsed / MB}, total, cpu)


class Memory(PushMonolithic):
    name = "memory"
    title = "peak RSS during a large monolithic push (target: < 150 MB per worker)"
    metrics = (
        Metric(
            "peak_worker_rss_mib",
            "peak RSS of one process (target < 150 MB)",
            "MiB",
            better="lower",
            limit=150e6 / MIB,
        ),
        Metric("mbps", "throughput", "MB/s", ceiling=PUSH_CEILINGS),
    )

    def size(self, ctx: Context) -> int:
        return ctx.settings.memory_mib * MIB


FLOOD_REPOSITORY = "bench/flood"
PUSH_SCOPE = f"repository:{FLOOD_REPOSITORY}:pull,push"
PULL_SCOPE = f"repository:{FLOOD_REPOSITORY}:pull"


class HeadBlob(Workload):
    name = "head-blob"
    title = "HEAD of one blob, keep-alive connections, closed loop"
    method = "HEAD"
    tracks_rss_growth = True
    metrics = (
        Metric("rps", "requests/s", "req/s"),
        Metric("p50_ms", "p50 latency", "ms", better="lower"),
        Metric("p99_ms", "p99 latency", "ms", better="lower"),
        Metric("cpu_us_per_request", "server CPU per request", "µs", better="lower", target=False),
        Metric("rss_growth_mib", "RSS growth over the run", "MiB", better="lower", target=False),
        Metric("requests", "requests in the run", "", target=False),
    )
    blob_bytes = 1024 * 1024

    def target(self, server: Server) -> tuple[str, dict[str, str]]:
        """Push what the flood asks for (unmeasured); its path and headers."""
        layer = random.Random(self.name.removesuffix("-token")).randbytes(self.blob_bytes)
        with Connection(server.host) as conn:
            oci.push_image(conn, FLOOD_REPOSITORY, "latest", layer, server.bearer([PUSH_SCOPE]))
        return f"/v2/{FLOOD_REPOSITORY}/blobs/{oci.sha256_digest(layer)}", {}

    def prepare(self, server: Server, ctx: Context) -> Any:
        path, headers = self.target(server)
        # As `docker pull` does: one pull token, sent with every request.
        headers = {**headers, **server.bearer([PULL_SCOPE])}
        # A short flood first, so the measured one starts with warm caches and pools.
        loadgen.flood(server.url + path, self.method, headers, ctx.settings.flood_connections,
                      1.0, client=ctx.settings.client)  # fmt: skip
        return path, headers

    def run(self, server: Server, ctx: Context, state: Any) -> Outcome:
        path, headers = state
        result = loadgen.flood(
            server.url + path, self.method, headers, ctx.settings.flood_connections,
            ctx.settings.flood_seconds, client=ctx.settings.client,
        )  # fmt: skip
        notes = [f"flood client: {result.client}, {result.connections} connections"]
        if result.errors:
            notes.append(f"{result.errors} errors, statuses {result.statuses}")
        metrics = {
            "rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
            "requests": float(result.requests),
        }  # fmt: skip
        return Outcome(metrics, 0, result.client_cpu_seconds, notes)


class GetManifest(HeadBlob):
    name = "get-manifest"
    title = "GET of a manifest by tag, keep-alive connections, closed loop"
    method = "GET"
    blob_bytes = 64 * 1024

    def target(self, server: Server) -> tuple[str, dict[str, str]]:
        super().target(server)
        return f"/v2/{FLOOD_REPOSITORY}/manifests/latest", {"Accept": oci.OCI_MANIFEST}


class GetSmallBlob(HeadBlob):
    name = "get-small-blob"
    title = "GET of a 4 KiB blob, keep-alive connections, closed loop"
    method = "GET"
    blob_bytes = 4096


class HeadBlobToken(HeadBlob):
    name = "head-blob-token"
    title = "head-blob with token auth: a pull token (ES256) on every request"
    auth, baseline = True, "head-blob"


class GetManifestToken(GetManifest):
    name = "get-manifest-token"
    title = "get-manifest with token auth: a pull token (ES256) on every request"
    auth, baseline = True, "get-manifest"


class GetSmallBlobToken(GetSmallBlob):
    name = "get-small-blob-token"
    title = "get-small-blob with token auth: a pull token (ES256) on every request"
    auth, baseline = True, "get-small-blob"


class SmallPushes(Workload):
    name = "small-pushes"
    title = "small blobs, each followed by a manifest naming it, pushed concurrently"
    metrics = (
        Metric("ops", "operations/s (blob pushes + manifest pushes)", "op/s"),
        Metric("p99_ms", "p99 of one blob + manifest", "ms", better="lower", target=False),
    )

    def prepare(self, server: Server, ctx: Context) -> Any:
        rng = random.Random("small")
        config = oci.config_blob([])
        config_digest = oci.sha256_digest(config)
        with Connection(server.host) as conn:
            oci.push_blob(conn, "bench/small", config_digest, config)
        jobs = []
        for index in range(ctx.settings.small_count):
            data = rng.randbytes(ctx.settings.small_bytes)
            digest = oci.sha256_digest(data)
            manifest = oci.image_manifest((config_digest, len(config)), [(digest, len(data))])
            jobs.append((data, digest, manifest, f"t{index:05d}"))
        return jobs

    def run(self, server: Server, ctx: Context, state: Any) -> Outcome:
        async def connect() -> AsyncConnection:
            return await AsyncConnection.open(server.host)

        async def push(conn: AsyncConnection, job: tuple[bytes, str, bytes, str]) -> int:
            data, digest, manifest, tag = job
            await oci.apush_blob(conn, "bench/small", digest, data)
            await oci.aput_manifest(conn, "bench/small", tag, manifest)
            return 2

        result = loadgen.run_pool(ctx.settings.small_concurrency, state, push, connect, 600)
        latencies = sorted(result.latencies_ms)
        metrics = {"ops": result.ops_per_second, "p99_ms": loadgen.percentile(latencies, 0.99)}
        moved = sum(len(j[0]) + len(j[2]) for j in state)
        return Outcome(metrics, moved, result.client_cpu_seconds)


def all_workloads() -> list[Workload]:
    from bench.buildflow import Build
    from bench.dockerflow import DockerPushPull
    from bench.gcload import GarbageCollection
    from bench.scale import Scale

    # Each token workload right after its baseline, so drift on the machine hits both alike.
    return [
        PushMonolithic(), PushChunked(), Pull(), PullRedirected(), HeadBlob(), HeadBlobToken(),
        GetManifest(), GetManifestToken(), GetSmallBlob(), GetSmallBlobToken(), SmallPushes(),
        ParallelPushes(), Memory(), DockerPushPull(), Scale(), Build(), GarbageCollection(),
    ]  # fmt: skip
