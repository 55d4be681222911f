"""Runs workloads against both servers in turn, A B A B, each time on a fresh server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench import procstat
from bench.profiling import Recording
from bench.report import SIDES, Metric, Results
from bench.servers import S3Target, make_server
from bench.workloads import MIB, Context, Workload

RESOURCE_METRICS = (
    Metric("server_cpu_s", "server CPU", "s", better="lower", target=False),
    Metric("client_cpu_s", "load generator CPU", "s", better="lower", target=False),
    Metric("cpu_s_per_gb", "server CPU per GB moved", "s/GB", better="lower", target=False),
    Metric("peak_rss_mib", "server peak RSS (all processes)", "MiB", better="lower", target=False),
    # With several workers: the largest of them (the target is per worker).
    Metric(
        "peak_process_rss_mib",
        "server peak RSS (largest process)",
        "MiB",
        better="lower",
        target=False,
    ),
)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_workload(
    workload: Workload,
    ctx: Context,
    results: Results,
    repeat: int,
    workers: int | None = None,
    profile_dir: Path | None = None,
    profile_mode: str = "cpu",
    settings: dict[str, str] | None = None,
) -> None:
    results.metrics[workload.name] = [*workload.metrics, *RESOURCE_METRICS]
    results.titles[workload.name] = workload.title
    if workload.baseline is not None:
        results.baselines[workload.name] = workload.baseline
    rounds = max(repeat, workload.min_rounds) if workload.repeatable else 1
    for round_index in range(rounds):
        for side in SIDES:
            values, notes = _one(
                workload, ctx, side, round_index, workers, profile_dir, profile_mode, settings
            )
            results.add(workload.name, side, values)
            for text in notes:
                if text not in results.notes.get(workload.name, []):
                    results.note(workload.name, text)
            shown = ", ".join(
                f"{k}={v:,.2f}" for k, v in values.items() if k in {m.key for m in workload.metrics}
            )
            log(
                f"  [{workload.name}] round {round_index + 1}/{rounds} {side:<12} {shown}"
                f" | server cpu {values['server_cpu_s']:.2f}s, client cpu "
                f"{values['client_cpu_s']:.2f}s, peak rss {values['peak_rss_mib']:.0f} MiB"
            )


def _one(
    workload: Workload,
    ctx: Context,
    side: str,
    round_index: int,
    workers: int | None,
    profile_dir: Path | None,
    profile_mode: str = "cpu",
    settings: dict[str, str] | None = None,
) -> tuple[dict[str, float], list[str]]:
    s3 = S3Target(ctx.seaweed, workload.redirect) if ctx.seaweed is not None else None
    server = make_server(
        side, ctx.folder, workers if side == "ours" else None, settings, s3, auth=workload.auth
    )
    with server:
        state = workload.prepare(server, ctx)
        # What the run before (either side's) and the preparation wrote to the page cache is
        # written back now, not while this run is measured: the kernel throttles every writer
        # while much is dirty, and a 512 MiB push leaves that much (in SeaweedFS's volumes
        # too), which had cost the next run's SQLite writes up to a second.
        os.sync()
        recording = None
        if profile_dir is not None and side == "ours":
            profile_dir.mkdir(parents=True, exist_ok=True)
            out = profile_dir / f"{workload.name}-{round_index + 1}.txt"
            recording = Recording(server.pid, out, mode=profile_mode)
        try:
            with procstat.TreeSampler(server.pid) as sampler:
                outcome = workload.run(server, ctx, state)
        finally:
            if recording is not None:
                recording.stop()
        server.check_alive()
    usage = sampler.usage
    values = dict(outcome.metrics)
    values["server_cpu_s"] = usage.cpu_seconds
    values["client_cpu_s"] = outcome.client_cpu_seconds
    values["peak_rss_mib"] = usage.peak_rss_bytes / MIB
    values["peak_process_rss_mib"] = usage.peak_worker_rss_bytes / MIB
    if outcome.bytes_moved >= 1_000_000:
        values["cpu_s_per_gb"] = usage.cpu_seconds / (outcome.bytes_moved / 1e9)
    keys = {m.key for m in workload.metrics}
    if "peak_worker_rss_mib" in keys:
        values["peak_worker_rss_mib"] = usage.peak_worker_rss_bytes / MIB
    if "cpu_us_per_request" in keys and values.get("requests"):
        values["cpu_us_per_request"] = usage.cpu_seconds / values["requests"] * 1e6
    if workload.tracks_rss_growth:
        values["rss_growth_mib"] = (usage.end_rss_bytes - usage.start_rss_bytes) / MIB
    return values, outcome.notes
