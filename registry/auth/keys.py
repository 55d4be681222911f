"""The token-signing keys: made on first start, rotated, served as JWKS, shared by every
worker and replica through one store.

The newest key signs. When it is older than the rotation period (or of another algorithm
than configured) a new one is made; an older key keeps verifying until its successor has
signed for longer than a token lives (plus the clock-skew leeway), and is deleted from the
store a minute after that, never to be used again.

Two stores keep the keys (`auth.keys_store`, registry/auth/key_stores.py):

    folder     PEM files, owner-only, in one folder (default `<data_dir>/auth/keys`), for
               one machine, or replicas sharing a volume; a lock file serialises changes.
    database   the `signing_keys` table, each private key encrypted (AES-256-GCM) with a
               key derived from `auth.keys_secret`, for replicas that share nothing but
               the database; a transaction (with an advisory lock on PostgreSQL)
               serialises changes.

Either way, a change (the first key, a rotation, a retirement) is decided under the store's
lock from the keys as they are then, so processes starting or rotating at once make one key,
not one each. Each process keeps the keys in memory and asks the store only when it must:

- a token whose `kid` it does not know: it reads the store again (at most once a second;
  a request that comes sooner waits for that next read rather than being refused, so a key
  made by another replica a moment ago is always found);
- every 10 s, in the background (`keep_fresh`), so a rotation made elsewhere (another
  replica, `registry keys rotate`) shows in the JWKS and ends the old key on time;
- when its newest key is due for rotation, on the next token it signs.

A token with a known `kid` never waits for the store: its key is a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

log = logging.getLogger("registry.auth")

SIGNING_ALGORITHMS = ("ES256", "RS256")
RSA_BITS = 3072
UNKNOWN_KID_INTERVAL = 1.0  # reads of the store for unknown kids, at most one per this
REFRESH_INTERVAL = 10.0  # background reads of the store (and of the JWKS's keys)
RETIRE_MARGIN = 60.0

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyStoreError(RuntimeError):
    """The key store, or a key in it, cannot be used (the message says why)."""


class _KeyNeeded(Exception):
    """A change needs a new key and none was made beforehand (the change is not made)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: PublicKey) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return dict(ECAlgorithm.to_jwk(key, as_dict=True))
    return dict(RSAAlgorithm.to_jwk(key, as_dict=True))


def thumbprint(key: PublicKey) -> str:
    """RFC 7638: SHA-256 of the required members of the JWK, in order, without spaces."""
    jwk = public_jwk(key)
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def algorithm_of(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyStoreError(f"unsupported curve {key.curve.name}")
        return "ES256"
    return "RS256"


def generate(algorithm: str) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise KeyStoreError(f"signing algorithm must be one of {', '.join(SIGNING_ALGORITHMS)}")


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: PrivateKey
    created: float  # unix seconds, whole milliseconds

    @property
    def created_ms(self) -> int:
        return round(self.created * 1000)

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    def jwk(self) -> dict[str, Any]:
        return {**public_jwk(self.public_key), "kid": self.kid, "use": "sig", "alg": self.algorithm}


@dataclass(frozen=True, slots=True)
class KeyChange:
    """What one locked change does to the store: a key to add, keys to delete."""

    add: SigningKey | None = None
    remove: tuple[SigningKey, ...] = ()


class KeyStore(Protocol):
    """Where the keys are kept (registry/auth/key_stores.py: a folder, or a database table)."""

    where: str  # for messages: "the folder /x", "the database"

    async def load(self) -> list[SigningKey]:
        """Every stored key, in any order; KeyStoreError when they cannot be read."""
        ...

    async def change(self, plan: Callable[[list[SigningKey]], KeyChange]) -> list[SigningKey]:
        """Under a lock that every process and replica respects: read the keys, apply
        `plan(keys)` (store the key it adds, delete those it removes), and return the keys
        as they are then. `plan` may raise, and then nothing changes."""
        ...


class KeyRing:
    """The signing keys of one store, kept in memory; cheap to ask, reads the store only when
    it must (see the module's docstring)."""

    def __init__(
        self,
        store: KeyStore,
        algorithm: str = "ES256",
        rotation_seconds: float = 30 * 86400,
        overlap_seconds: float = 360,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if algorithm not in SIGNING_ALGORITHMS:
            raise KeyStoreError(
                f"signing algorithm must be one of {', '.join(SIGNING_ALGORITHMS)}"
            )
        self.store = store
        self.algorithm = algorithm
        self.rotation_seconds = rotation_seconds
        self.overlap_seconds = overlap_seconds
        self.clock = clock
        self._keys: list[SigningKey] = []
        self._by_kid: dict[str, tuple[SigningKey, float]] = {}  # kid -> (key, verifies until)
        self._loaded_at = -math.inf  # when the last read of the store began
        self._loads = 0  # reads of the store begun so far
        self._lock = asyncio.Lock()  # one read or change of the store at a time, per process

    # -- what callers ask ------------------------------------------------------------------

    async def signing_key(self) -> SigningKey:
        """The key to sign with now, making or rotating one when due."""
        if self._due(self._keys):
            await self.ensure()
        return self._keys[-1]

    def known(self, kid: str) -> SigningKey | None:
        """The key named `kid` if it may still verify tokens, among the keys in memory.
        Asked on every request with a token (cached ones too), so a lookup, never a read."""
        entry = self._by_kid.get(kid)
        return entry[0] if entry is not None and entry[1] > self.clock() else None

    async def verification_key(self, kid: str) -> SigningKey | None:
        """The key named `kid` if it may still verify tokens, else None. A kid never seen
        makes the store be read again: another process may have just made that key."""
        if kid in self._by_kid:  # verifying or past its overlap: reading again changes neither
            return self.known(kid)
        asked = self._loads
        async with self._lock:
            if self._loads == asked:  # no read has begun since we were asked: begin one
                wait = self._loaded_at + UNKNOWN_KID_INTERVAL - self.clock()
                if wait > 0:  # the rate limit: wait for the next read, do not refuse
                    await asyncio.sleep(min(wait, UNKNOWN_KID_INTERVAL))
                await self._load(quiet=True)
        return self.known(kid)

    async def jwks(self) -> dict[str, Any]:
        """The public keys that verify now."""
        if not self._keys:
            await self.ensure()
        elif self.clock() - self._loaded_at >= REFRESH_INTERVAL:
            await self.refresh()
        return {"keys": [key.jwk() for key in self._verifying()]}

    def current(self) -> list[SigningKey]:
        """The keys in memory, oldest first (the last one signs)."""
        return list(self._keys)

    def verifies_until(self, kid: str) -> float:
        """Until when the key named `kid` verifies (inf for the newest; 0 if unknown)."""
        entry = self._by_kid.get(kid)
        return entry[1] if entry is not None else 0.0

    # -- reading and changing the store ----------------------------------------------------

    async def ensure(self, rotate_now: bool = False) -> None:
        """Make a key if there is none or the newest is due for rotation (or `rotate_now`),
        and delete keys past their overlap: one locked change of the store, decided from the
        keys it holds then. The new key is made beforehand, outside the lock (an RSA key
        takes a while), and thrown away if another process made one first."""
        async with self._lock:
            if not self._keys:
                await self._load()
            candidate = None
            if rotate_now or self._due(self._keys):
                candidate = await asyncio.to_thread(generate, self.algorithm)
            for _ in range(3):
                self._note_load()
                try:
                    plan = functools.partial(self._plan, candidate, rotate_now)
                    self._set_keys(await self.store.change(plan))
                    return
                except _KeyNeeded:  # due since the read above: make one, and try again
                    candidate = await asyncio.to_thread(generate, self.algorithm)
        raise KeyStoreError(f"could not make a signing key in {self.store.where}")

    async def read(self) -> None:
        """Read the store, changing nothing; KeyStoreError when its keys cannot be used."""
        async with self._lock:
            await self._load()

    async def refresh(self) -> None:
        """Read the store again (another process may have rotated); rotate or retire if due."""
        async with self._lock:
            await self._load(quiet=True)
        if self._due(self._keys) or self._retirable(self._keys):
            await self.ensure()

    async def keep_fresh(self, interval: float = REFRESH_INTERVAL) -> None:
        """Refresh every `interval` seconds, for as long as the process serves."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # the keys in memory keep serving; never take the server down
                log.exception("could not read the signing keys in %s", self.store.where)

    def _note_load(self) -> None:
        self._loads += 1
        self._loaded_at = self.clock()

    async def _load(self, quiet: bool = False) -> None:
        """Read every key. `quiet`: a store whose keys cannot be used (a row that does not
        decrypt) is logged and the keys in memory kept, as a request must not fail on it."""
        self._note_load()
        try:
            keys = await self.store.load()
        except KeyStoreError as exc:
            if not quiet:
                raise
            log.error("keeping the signing keys in memory: %s", exc)
            return
        self._set_keys(keys)

    # -- the rules -------------------------------------------------------------------------

    def _plan(
        self, candidate: PrivateKey | None, rotate_now: bool, keys: list[SigningKey]
    ) -> KeyChange:
        """What to change, from the keys in the store as they are under its lock."""
        keys = sorted(keys, key=_order)
        add = None
        if rotate_now or self._due(keys):
            if candidate is None:
                raise _KeyNeeded()
            add = self._new_key(candidate, keys)
        after = [*keys, add] if add is not None else keys
        return KeyChange(add, tuple(self._retirable(after)))

    def _due(self, ordered: list[SigningKey]) -> bool:
        """Whether a key must be made: none yet, or the newest is due for rotation."""
        return not ordered or self._rotation_due(ordered[-1])

    def _rotation_due(self, newest: SigningKey) -> bool:
        if newest.algorithm != self.algorithm:
            return True
        return self.rotation_seconds > 0 and self.clock() - newest.created >= self.rotation_seconds

    def _new_key(self, private: PrivateKey, keys: list[SigningKey]) -> SigningKey:
        # Milliseconds, and always after the newest key, so the new key sorts last even
        # when made within the same instant (a change of algorithm right after a start).
        created = int(self.clock() * 1000)
        if keys:
            created = max(created, keys[-1].created_ms + 1)
        return SigningKey(thumbprint(private.public_key()), self.algorithm, private, created / 1000)

    def _retirable(self, ordered: list[SigningKey]) -> list[SigningKey]:
        now = self.clock()
        return [
            key
            for key, successor in itertools.pairwise(ordered)
            if successor.created + self.overlap_seconds + RETIRE_MARGIN < now
        ]

    def _set_keys(self, keys: list[SigningKey]) -> None:
        """The keys, oldest first; each verifies until its successor is `overlap` old."""
        keys = sorted(keys, key=_order)
        self._keys = keys
        self._by_kid = {
            key.kid: (
                key,
                keys[i + 1].created + self.overlap_seconds if i + 1 < len(keys) else math.inf,
            )
            for i, key in enumerate(keys)
        }

    def _verifying(self) -> list[SigningKey]:
        now = self.clock()
        return [key for key in self._keys if self._by_kid[key.kid][1] > now]


def _order(key: SigningKey) -> tuple[float, str]:
    return (key.created, key.kid)
