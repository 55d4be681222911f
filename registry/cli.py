"""The `registry` command: `serve`, `migrate`, `gc`, `fsck`, accounts, and the pocket runtime's
commands."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
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

    config = _load(args)
    if args.workers is not None:
        config.server.workers = args.workers
    return serve(config)


def _healthcheck(args: argparse.Namespace) -> int:
    from registry.health import probe_self

    return probe_self(_load(args), path=args.path)


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
    serve.add_argument(
        "--workers", default=None, help="worker processes: auto (one per core, the default) or N"
    )
    serve.set_defaults(func=_serve)

    health = commands.add_parser(
        "healthcheck", help="exit 0 when the server of these settings answers /healthz"
    )
    _add_config_flags(health)
    health.add_argument("--path", default="/healthz", help="probe path (default /healthz)")
    health.set_defaults(func=_healthcheck)

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
    from registry.auth.key_commands import add_commands as add_key_commands

    add_key_commands(commands)
    from registry.policies.cli import add_commands as add_policy_commands

    add_policy_commands(commands)
    return parser


def _light_parser(command: str) -> argparse.ArgumentParser | None:
    """The parser of a command that loads alone (`registry build`: a fully cached build
    is over before the HTTP client or the server's modules would have loaded)."""
    try:
        from registry.runtime.commands import LIGHT_COMMANDS, add_commands
    except ImportError:
        return None
    if command not in LIGHT_COMMANDS:
        return None
    parser = argparse.ArgumentParser(prog="registry", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True),
                 (LIGHT_COMMANDS[command],))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Ctrl-C at any point, even while modules load, ends it with 130
    and no traceback (the modules a command needs load here, not before)."""
    try:
        _name_process()
        words = list(sys.argv[1:] if argv is None else argv)
        light = _light_parser(words[0]) if words else None
        if light is not None:
            light_args = light.parse_args(words)
            return _done(int(light_args.func(light_args)), argv)
        import logging

        from registry.config import ConfigError

        args = build_parser().parse_args(argv)
        # The server logs what it does; client-side commands print only what was asked for.
        level = logging.INFO if args.command in ("serve", "migrate") else logging.WARNING
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("alembic", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            return _done(int(args.func(args)), argv)
        except ConfigError as exc:
            print(f"registry: configuration error: {exc}", file=sys.stderr)
            return _done(2, argv)
    except KeyboardInterrupt:
        interrupted()


def _done(code: int, argv: Sequence[str] | None) -> int:
    """The command's exit code. Run as the program (arguments from sys.argv), Ctrl-C is
    blocked from here on: the interpreter restores SIGINT's default action as it finalizes,
    and a Ctrl-C then would kill the process by the signal instead of exiting with `code`.
    (Called with arguments, by a test in its own process, it changes nothing.)"""
    if argv is None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    return code


def _name_process() -> None:
    """`registry` in ps and /proc/PID/comm rather than `python3`; also the sign that this
    process has left the interpreter's own start-up for our code."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, b"registry", 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def interrupted() -> NoReturn:
    """Leave at once with 130, as a shell reports Ctrl-C: threads still finishing a
    download are not waited for (they had their chance to clean up), and a second Ctrl-C
    during interpreter shutdown cannot print a traceback."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(130)
