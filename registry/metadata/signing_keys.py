"""Every SQL statement about the token-signing keys kept in the database (`signing_keys`).

Keys arrive here sealed (registry/auth/key_stores.py); this module never sees one in the
clear. Changes are serialised across processes and replicas: each runs in one write
transaction that first takes a transaction-scoped advisory lock on PostgreSQL (SQLite's
`BEGIN IMMEDIATE` already admits one writer at a time), then reads the keys afresh, so two
replicas deciding at once that a key is due make one between them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, text

from registry.metadata.db import Database, SQLConnection
from registry.metadata.tables import signing_keys

# pg_advisory_xact_lock's key for changes of the signing keys (migrations use another).
KEYS_LOCK = 0x6B657973


@dataclass(frozen=True, slots=True)
class SealedKey:
    kid: str
    algorithm: str
    created_ms: int  # unix milliseconds
    sealed: bytes  # the private key, encrypted


Decision = Callable[[list[SealedKey]], tuple[SealedKey | None, Sequence[str]]]


class SigningKeyTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def all(self) -> list[SealedKey]:
        async with self.db.read() as conn:
            return await _rows(conn)

    async def change(self, decide: Decision) -> None:
        """Under the lock: `decide(rows)` says which key to add and which kids to delete;
        both are done in the same transaction. An exception from `decide` changes nothing."""
        async with self.db.write() as conn:
            if self.db.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": KEYS_LOCK})
            add, remove = decide(await _rows(conn))
            if remove:
                await conn.execute(delete(signing_keys).where(signing_keys.c.kid.in_(remove)))
            if add is not None:
                await conn.execute(
                    insert(signing_keys).values(
                        kid=add.kid,
                        algorithm=add.algorithm,
                        created_ms=add.created_ms,
                        sealed_key=add.sealed,
                    )
                )


async def _rows(conn: SQLConnection) -> list[SealedKey]:
    c = signing_keys.c
    result = await conn.execute(
        select(c.kid, c.algorithm, c.created_ms, c.sealed_key).order_by(c.created_ms, c.kid)
    )
    return [SealedKey(kid, alg, int(ms), bytes(sealed)) for kid, alg, ms, sealed in result.all()]
