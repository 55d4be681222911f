"""The `registry` command: `serve`, `migrate`, `gc`, `fsck`, accounts, and the pocket runtime's
commands."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from registry.config import Config


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML settings file")
    parser.add_argument("--data", metavar="DIR", help="data folder (blobs and the SQLite database)")


def _load(args: argparse.Namespace) -> Config:
    from registry.config import load_config

    overrides: dict[str, Any] = {"data_dir": args.data}
    if getattr(args, "addr", None):
        overrides["server.addr"] = args.addr
    return load_config(args.config, overrides=overrides)


def _serve(args: argparse.Namespace) -> int:
    from registry.server import serve

    return serve(_load(args), workers=args.workers)


def _migrate(args: argparse.Namespace) -> int:
    from registry.filemodes import secure_data
    from registry.metadata.db import upgrade_schema

    config = _load(args)
    secure_data(config)
    upgrade_schema(config.database_url)
    print(f"schema up to date: {config.database_url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="registry", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the registry server")
    _add_config_flags(serve)
    serve.add_argument(
        "--addr", metavar="HOST:PORT", help="listen address (default 127.0.0.1:5000)"
    )
    serve.add_argument("--workers", type=int, default=None, help="worker processes")
    serve.set_defaults(func=_serve)

    migrate = commands.add_parser("migrate", help="bring the metadata schema up to date")
    _add_config_flags(migrate)
    migrate.set_defaults(func=_migrate)

    try:
        from registry.runtime.cli import add_commands
    except ImportError:
        pass
    else:
        add_commands(commands)

    from registry.auth.cli import add_commands as add_account_commands

    add_account_commands(commands)

    from registry.gc.cli import add_commands as add_gc_commands

    add_gc_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Ctrl-C at any point, even while modules load, ends it with 130
    and no traceback (the modules a command needs load here, not before)."""
    try:
        from registry.config import ConfigError

        args = build_parser().parse_args(argv)
        # The server logs what it does; client-side commands print only what was asked for.
        level = logging.INFO if args.command in ("serve", "migrate") else logging.WARNING
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("alembic", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            return int(args.func(args))
        except ConfigError as exc:
            print(f"registry: configuration error: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        interrupted()


def interrupted() -> NoReturn:
    """Leave at once with 130, as a shell reports Ctrl-C: threads still finishing a
    download are not waited for (they had their chance to clean up), and a second Ctrl-C
    during interpreter shutdown cannot print a traceback."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(130)
