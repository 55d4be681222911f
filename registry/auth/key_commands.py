"""`registry keys list|rotate`: the token-signing keys of `auth.keys_store`, for operators.

    registry keys list      each key: kid, algorithm, when made, until when it verifies
                            ("-" for the newest, which signs)
    registry keys rotate    a new key, now, in the store every replica reads

After `rotate` every process signs with the new key within 10 s (each reads the store that
often); tokens the old key signed keep verifying until the new key is a token lifetime (plus
the leeway) old, and the old key is deleted a minute after that. Rotating does not revoke
tokens already issued: a leaked key stops being trusted only when its overlap ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from datetime import UTC, datetime
from typing import Any

from registry.auth.keys import KeyRing


def _when(seconds: float) -> str | None:
    if math.isinf(seconds):
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rows(ring: KeyRing) -> list[dict[str, Any]]:
    return [
        {
            "kid": key.kid,
            "algorithm": key.algorithm,
            "created": _when(key.created),
            "verifies_until": _when(ring.verifies_until(key.kid)),
        }
        for key in ring.current()
    ]


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    columns = ["kid", "algorithm", "created", "verifies_until"]
    cells = [[str(row[c] or "-") for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _command(rotate: bool) -> Any:
    def command(args: argparse.Namespace) -> int:
        from registry.auth.services import key_ring, validate
        from registry.config import ConfigError, load_config
        from registry.metadata.db import Database, upgrade_schema

        config = load_config(args.config, overrides={"data_dir": args.data})
        validate(config)
        if config.database.auto_migrate:
            upgrade_schema(config.database_url)

        async def main() -> list[dict[str, Any]]:
            shared = config.auth.keys_store == "database"
            db = Database(config.database_url, pool_size=1) if shared else None
            try:
                ring = key_ring(config, db)
                await (ring.ensure(rotate_now=True) if rotate else ring.read())
                return _rows(ring)
            finally:
                if db is not None:
                    await db.dispose()

        from registry.auth.keys import KeyStoreError

        try:
            rows = asyncio.run(main())
        except KeyStoreError as exc:
            raise ConfigError(f"signing keys: {exc}") from None
        if rotate:
            print(f"new signing key {rows[-1]['kid']}", file=sys.stderr)
        _print(rows, args.json)
        return 0

    return command


def add_commands(commands: Any) -> None:
    """Add `registry keys ...` to the `registry` CLI's subparsers."""
    keys = commands.add_parser("keys", help="the token-signing keys").add_subparsers(
        dest="keys_command", required=True
    )
    for name, rotate, help in (
        ("list", False, "list the signing keys"),
        ("rotate", True, "make a new signing key now, for every replica"),
    ):
        parser = keys.add_parser(name, help=help, description=help)
        parser.add_argument("--config", metavar="FILE", help="YAML settings file")
        parser.add_argument("--data", metavar="DIR", help="data folder")
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(func=_command(rotate))
