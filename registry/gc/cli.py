"""`registry gc [--dry-run]` and `registry fsck [--repair]`, against the configured database
and storage (the same `--config`/`--data` as `serve`), while the registry runs or not.

Exit codes, for scripts:
    gc     0 the run finished, 2 it failed (see the message; nothing unsafe was left)
    fsck   0 clean (or, with --repair, everything found was repaired),
           1 problems remain (listed), 2 fsck itself failed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.config import Config
    from registry.gc.fsck import FsckReport
    from registry.metadata.db import Database
    from registry.storage.blobstore import BlobStore

Main = Callable[["Config", "BlobStore", "Database", argparse.Namespace], Awaitable[int]]


def _command(main: Main) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from registry.app import build_services
        from registry.auth import AllowAll
        from registry.config import ConfigError, load_config
        from registry.metadata.db import upgrade_schema

        try:
            config = load_config(args.config, overrides={"data_dir": args.data})
            if config.database.auto_migrate:
                upgrade_schema(config.database_url)
        except ConfigError as exc:
            print(f"registry: configuration error: {exc}", file=sys.stderr)
            return 2

        async def run() -> int:
            services, db = build_services(config, AllowAll())
            try:
                return await main(config, services.blobs, db, args)
            finally:
                await db.dispose()

        try:
            return asyncio.run(run())
        except Exception as exc:  # the exit code says "error", whatever it was
            print(f"registry {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2

    return command


async def _gc(config: Config, blobs: BlobStore, db: Database, args: argparse.Namespace) -> int:
    from registry.gc.collector import SAMPLE, build_collector

    report = await build_collector(config, blobs, db).run("cli", dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.figures(), indent=2))
    else:
        for entry in report.retention.get("removed", []):
            print(f"tag      {entry['repository']}:{entry['tag']}  {entry['reason']}")
        for entry in report.retention.get("deleted", []):
            print(f"manifest {entry['repository']}@{entry['digest']}  {entry['reason']}")
        if report.tags_removed:
            verb = "would remove" if report.dry_run else "removed"
            more = f" (the first {SAMPLE} listed)" if report.tags_removed > SAMPLE else ""
            print(f"retention {verb} {report.tags_removed} tags{more}")
        would = "would delete" if report.dry_run else "deleted"
        print(
            f"garbage collection {report.run_id}{' (dry run)' if report.dry_run else ''}: "
            f"{would} {report.blobs_deleted} blobs ({_size(report.bytes_reclaimed)}), "
            f"{report.manifests_deleted} manifests, {report.uploads_expired} expired uploads "
            f"in {report.seconds:.1f} s"
        )
        if report.blobs_busy:
            print(f"{report.blobs_busy} blobs were in use by pushes: looked at next run")
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
    return 0 if report.status == "ok" else 2


async def _fsck(config: Config, blobs: BlobStore, db: Database, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from registry.gc.fsck import Fsck
    from registry.metadata.fsckstore import FsckStore
    from registry.metadata.gcstore import GCStore

    with _Bar(enabled=sys.stderr.isatty() and not args.json) as bar:
        checker = Fsck(
            FsckStore(db),
            GCStore(db),
            blobs,
            timedelta(seconds=config.gc.blob_grace_seconds),
            rehash=not args.quick,
            progress=bar,
        )
        report = await checker.run(repair=args.repair)
    if args.json:
        print(json.dumps(_fsck_json(report), indent=2))
    else:
        _print_fsck(report)
    return 1 if report.remaining else 0


def _fsck_json(report: FsckReport) -> dict[str, Any]:
    return {
        "blobs_checked": report.blobs_checked,
        "bytes_checked": report.bytes_checked,
        "objects_seen": report.objects_seen,
        "problems": [asdict(p) for p in report.problems],
        "remaining": len(report.remaining),
    }


def _print_fsck(report: FsckReport) -> None:
    for problem in report.problems:
        state = "repaired" if problem.repaired else "found"
        print(f"{problem.kind:<13} {problem.target}  {problem.detail} [{state}]")
        for user in problem.used_by:
            print(f"{'':<13}   needed by {user}")
    repaired = len(report.problems) - len(report.remaining)
    print(
        f"fsck: {report.blobs_checked} blobs ({_size(report.bytes_checked)}) and "
        f"{report.objects_seen} stored objects checked; {len(report.problems)} problems, "
        f"{repaired} repaired, {len(report.remaining)} remaining"
    )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class _Bar:
    """fsck's progress on a terminal (stderr), with rich; nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.completed:,.0f}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def phase(self, name: str, total: int | None) -> None:
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.update(self._task, visible=False)
        self._task = self._progress.add_task(name, total=total)

    def advance(self, amount: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)


def add_commands(commands: Any) -> None:
    gc = commands.add_parser(
        "gc", help="collect unreferenced blobs (and untagged manifests, by policy) now"
    )
    fsck = commands.add_parser(
        "fsck", help="check stored blobs against the database (exit 0 clean, 1 problems, 2 error)"
    )
    for parser in (gc, fsck):
        parser.add_argument("--config", metavar="FILE", help="YAML settings file")
        parser.add_argument("--data", metavar="DIR", help="data folder")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.add_argument("--dry-run", action="store_true", help="report what would go; change nothing")
    gc.set_defaults(func=_command(_gc))
    fsck.add_argument(
        "--repair",
        action="store_true",
        help="remove orphans, and corrupt or missing blobs no manifest needs",
    )
    fsck.add_argument("--quick", action="store_true", help="check sizes only; do not re-hash")
    fsck.set_defaults(func=_command(_fsck))
