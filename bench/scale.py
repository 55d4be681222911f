"""Scale: the time for a page of 100 tags or catalog entries, small registry versus large.

"Same time" is read as: the first page of the large registry within 1.5x of the small one.
Pages are timed in interleaved rounds (this VM's speed drifts by half over minutes): the
large repository's first page against that of a repository of 10 tags at the same moment;
the catalog's first page against its small self before populating, each over the 10-tag
page timed alongside it, so that drift between the two moments cancels.
Populated through the HTTP API only, the same way on both servers: one manifest pushed once,
then tagged again and again with `PUT /v2/<name>/manifests/<tag>` (the same bytes each time),
and repositories made by cross-repository mounts of one blob (`POST ?mount=&from=`), which
send no bytes. Population is bounded by `scale_budget_seconds` per server for the tags and a
third of that for the repositories; when a server
cannot reach the target counts in that time, the figures are for what it reached, and a note
says so.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from bench import loadgen, oci
from bench.asyncraw import AsyncConnection
from bench.rawhttp import Connection, expect
from bench.report import Metric
from bench.servers import Server
from bench.workloads import Context, Outcome, Workload

REPO = "scale/r000000"
CONTROL = "scale/r000001"  # keeps 10 tags: timed alongside the large repository
SMALL = 10
PAGE = 100
POPULATE_CONCURRENCY = 8
PAGE_BUDGET_S = 10.0  # time spent sampling one page, at most (Distribution's take ~150 ms)


def tag_name(index: int) -> str:
    return f"t{index:07d}"


def repo_name(index: int) -> str:
    return f"scale/r{index:06d}"


class Scale(Workload):
    name = "scale"
    title = "page of 100 tags / catalog entries: 10 versus many (one run per server)"
    repeatable = False
    metrics = (
        Metric("tags_small_ms", f"tags page, repository of {SMALL} tags", "ms", better="lower"),
        Metric("tags_big_ms", "tags first page, large repository", "ms", better="lower"),
        Metric("tags_deep_ms", "tags page from the middle, large repo", "ms", better="lower"),
        Metric("tags_page_entries", "entries in the large first page", "", target=False),
        Metric("catalog_small_ms", f"catalog page, {SMALL} repositories", "ms", better="lower"),
        Metric("catalog_big_ms", "catalog first page, many repositories", "ms", better="lower"),
        Metric("catalog_deep_ms", "catalog page from the middle", "ms", better="lower"),
        Metric(
            "tags_big_over_small",
            f"tags: large first page / {SMALL}-tag page",
            "x",
            better="lower",
            limit=1.5,
        ),
        Metric(
            "catalog_big_over_small",
            "catalog: large first page / small (drift-corrected)",
            "x",
            better="lower",
            limit=1.5,
        ),
        Metric("tags_populated", "tags in the large repository", "", target=False),
        Metric("repos_populated", "repositories in the large catalog", "", target=False),
        Metric("tag_puts_per_s", "populate: tag PUTs/s", "op/s"),
        Metric("mounts_per_s", "populate: mounts/s", "op/s"),
    )

    def prepare(self, server: Server, ctx: Context) -> Any:
        layer = random.Random("scale").randbytes(1024)
        with Connection(server.host) as conn:
            for name in (REPO, CONTROL):
                _digest, manifest = oci.push_image(conn, name, tag_name(0), layer)
                for index in range(1, SMALL):
                    oci.put_manifest(conn, name, tag_name(index), manifest)
        layer_digest = oci.sha256_digest(layer)
        result = _populate_repos(server, layer_digest, range(2, SMALL), 120)
        if result.operations != SMALL - 2:
            raise RuntimeError("could not create the small catalog")
        return manifest, layer_digest

    def run(self, server: Server, ctx: Context, state: Any) -> Outcome:
        manifest, layer_digest = state
        settings = ctx.settings
        samples = settings.scale_samples
        metrics: dict[str, float] = {}
        notes: list[str] = []
        first_tags = f"/v2/{REPO}/tags/list?n={PAGE}"
        control = f"/v2/{CONTROL}/tags/list?n={PAGE}"
        first_catalog = f"/v2/_catalog?n={PAGE}"
        with Connection(server.host) as conn:
            small = _pages_ms(conn, [first_tags, first_catalog, control], samples)
        metrics["tags_small_ms"], metrics["catalog_small_ms"], control_before = small

        budget = settings.scale_budget_seconds
        started = time.monotonic()
        tags = _populate_tags(server, manifest, range(SMALL, settings.scale_tags), budget)
        tag_seconds = time.monotonic() - started
        tags_total = SMALL + tags.operations
        metrics["tags_populated"] = tags_total
        metrics["tag_puts_per_s"] = tags.ops_per_second
        if tags_total < settings.scale_tags:
            notes.append(
                f"{server.name}: {tags_total:,} of {settings.scale_tags:,} tags within the "
                f"{budget:.0f} s budget ({tags.ops_per_second:,.0f} tag PUTs/s)"
            )
        budget = settings.scale_budget_seconds / 3
        repos = _populate_repos(server, layer_digest, range(SMALL, settings.scale_repos), budget)
        repos_total = SMALL + repos.operations
        metrics["repos_populated"] = repos_total
        metrics["mounts_per_s"] = repos.ops_per_second
        if repos_total < settings.scale_repos:
            notes.append(
                f"{server.name}: {repos_total:,} of {settings.scale_repos:,} repositories within "
                f"the {budget:.0f} s budget"
            )
        with Connection(server.host, timeout=300) as conn:
            big = _pages_ms(conn, [first_tags, first_catalog, control], samples)
            metrics["tags_big_ms"], metrics["catalog_big_ms"], control_after = big
            response = expect(conn.request("GET", first_tags), 200, what="tags page")
            import json

            metrics["tags_page_entries"] = len(json.loads(response.body)["tags"] or [])
            if metrics["tags_page_entries"] > PAGE:
                notes.append(
                    f"{server.name}: ignores n= on tags/list and returned all "
                    f"{metrics['tags_page_entries']:,.0f} tags in one answer"
                )
            middle = tag_name(tags_total // 2)
            middle_repo = repo_name(repos_total // 2)
            metrics["tags_deep_ms"], metrics["catalog_deep_ms"] = _pages_ms(
                conn,
                [
                    f"/v2/{REPO}/tags/list?n={PAGE}&last={middle}",
                    f"/v2/_catalog?n={PAGE}&last={middle_repo}",
                ],
                samples,
            )
        # Against the 10-tag page of the same moment: what the size alone costs.
        metrics["tags_big_over_small"] = metrics["tags_big_ms"] / control_after
        metrics["catalog_big_over_small"] = (metrics["catalog_big_ms"] / control_after) / (
            metrics["catalog_small_ms"] / control_before
        )
        notes.append(
            f"{server.name}: populated {tags_total:,} tags in {tag_seconds:.0f} s and "
            f"{repos_total:,} repositories in {repos.seconds:.0f} s"
        )
        return Outcome(metrics, 0, tags.client_cpu_seconds + repos.client_cpu_seconds, notes)


def _pages_ms(
    conn: Connection, paths: list[str], samples: int, budget_s: float = PAGE_BUDGET_S
) -> list[float]:
    """Median wall time of a GET of each of `paths`, over `samples` rounds that take each in
    turn (after one warm-up), or the rounds that fit in `budget_s` per path (at least five).
    Many samples spread over a while: the median of 30 back-to-back ones (~50 ms in all)
    moved by half from one window to the next as the machine did other things."""
    for path in paths:
        expect(conn.request("GET", path), 200, what=path)
    times: list[list[float]] = [[] for _ in paths]
    deadline = time.perf_counter() + budget_s * len(paths)
    rounds = 0
    while rounds < samples and (rounds < 5 or time.perf_counter() < deadline):
        for path, path_times in zip(paths, times, strict=True):
            started = time.perf_counter()
            expect(conn.request("GET", path), 200, what=path)
            path_times.append((time.perf_counter() - started) * 1000)
        rounds += 1
    return [statistics.median(path_times) for path_times in times]


def _populate_tags(
    server: Server, manifest: bytes, indexes: range, budget: float
) -> loadgen.PoolResult:
    async def connect() -> AsyncConnection:
        return await AsyncConnection.open(server.host)

    async def tag(conn: AsyncConnection, index: int) -> int:
        await oci.aput_manifest(conn, REPO, tag_name(index), manifest)
        return 1

    return loadgen.run_pool(POPULATE_CONCURRENCY, list(indexes), tag, connect, budget)


def _populate_repos(
    server: Server, digest: str, indexes: range, budget: float
) -> loadgen.PoolResult:
    async def connect() -> AsyncConnection:
        return await AsyncConnection.open(server.host)

    async def mount(conn: AsyncConnection, index: int) -> int:
        await oci.amount_blob(conn, repo_name(index), digest, REPO)
        return 1

    return loadgen.run_pool(POPULATE_CONCURRENCY, list(indexes), mount, connect, budget)
