"""`python -m bench [--quick] [--only W,...] [--repeat N] [--json FILE]`; `python -m bench limits`.

Workloads: push-monolithic, push-chunked, pull, head-blob, get-manifest, small-pushes,
push-parallel, memory, docker, scale, build. Progress goes to stderr, the table to stdout.
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


def choose(args: argparse.Namespace) -> list[Any]:
    workloads = all_workloads()
    names = [w.name for w in workloads]
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
                  "ours_settings": ours_settings},
        machine=machine_info(),
    )  # fmt: skip
    if not args.no_limits:
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
    finally:
        summary = summarize(results)
        if args.json:
            write_json(summary, args.json)
    print(f"load generator for floods: {settings.client}; rounds: {args.repeat}; "
          f"load average at start: {results.machine['load_average_at_start']}")  # fmt: skip
    print(table(summary))
    return 0


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
