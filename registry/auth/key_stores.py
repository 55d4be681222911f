"""The two places signing keys are kept (`auth.keys_store`): a folder, or the database.

A folder (default `<data_dir>/auth/keys`, mode 0700) holds one PEM file per key, owner-only:

    <created, unix milliseconds>-<kid>.pem      the kid is the key's RFC 7638 JWK thumbprint

and `.lock`, which `flock` holds while a key is added or deleted. Processes that share the
folder share the keys; replicas on other machines would each make their own.

The database keeps them in `signing_keys` (kid, algorithm, created in unix milliseconds, and
the private key sealed), so replicas share them with nothing but the database. Sealing is
AES-256-GCM, under a key derived from `auth.keys_secret` by HKDF-SHA256:

    sealed = 0x01 || nonce (12 random bytes) || AES-GCM(PKCS#8 DER of the key)
    associated data: "pocket-registry signing key" 0x00 kid 0x00 created-ms

so the table never holds a private key in the clear, and a sealed key moved to another row
(another kid or age) does not open. A key that opens must also hash to its kid. One that
does not open (another secret) stops the start with an error rather than being replaced:
the replicas would otherwise disagree about the keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from registry.auth.keys import (
    KeyChange,
    KeyStoreError,
    PrivateKey,
    SigningKey,
    algorithm_of,
    thumbprint,
)
from registry.metadata.db import Database
from registry.metadata.signing_keys import SealedKey, SigningKeyTable

log = logging.getLogger("registry.auth")

KEYS_STORES = ("folder", "database")
MIN_SECRET_LENGTH = 32
_FILE = re.compile(r"^(\d+)-([A-Za-z0-9_-]{16,64})\.pem\Z")
_SEAL_VERSION = b"\x01"
_NONCE_BYTES = 12
_HKDF_INFO = b"pocket-registry token signing keys v1"


def _private_key(data: bytes, der: bool) -> PrivateKey:
    """A signing key we can use (ES256 or RS256), from PEM or DER; KeyStoreError if not."""
    try:
        if der:
            private = serialization.load_der_private_key(data, password=None)
        else:
            private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(f"unreadable key: {exc}") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeyStoreError("a key of an unsupported type")
    algorithm_of(private)  # a curve other than P-256 is refused
    return private


# The folder ------------------------------------------------------------------------------


class FolderKeys:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = f"the folder {folder}"

    async def load(self) -> list[SigningKey]:
        return self._scan()

    async def change(self, plan: Callable[[list[SigningKey]], KeyChange]) -> list[SigningKey]:
        with self._locked():
            keys = self._scan()
            change = plan(keys)
            if change.add is not None:
                self._write(change.add)
            for key in change.remove:
                with contextlib.suppress(FileNotFoundError):
                    self._path(key).unlink()
                    log.info("retired token signing key %s", key.kid)
            gone = {key.kid for key in change.remove}
            kept = [key for key in keys if key.kid not in gone]
            return [*kept, change.add] if change.add is not None else kept

    def _path(self, key: SigningKey) -> Path:
        return self.folder / f"{key.created_ms}-{key.kid}.pem"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _scan(self) -> list[SigningKey]:
        keys = []
        if self.folder.is_dir():
            for path in sorted(self.folder.iterdir()):
                match = _FILE.fullmatch(path.name)
                if match:
                    key = self._read(path, int(match[1]) / 1000)
                    if key is not None:
                        keys.append(key)
        return keys

    def _read(self, path: Path, created: float) -> SigningKey | None:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("signing key %s was readable by others; making it 0600", path.name)
            os.chmod(path, 0o600)
        try:
            private = _private_key(path.read_bytes(), der=False)
        except KeyStoreError as exc:
            log.error("ignoring signing key %s: %s", path.name, exc)
            return None
        return SigningKey(thumbprint(private.public_key()), algorithm_of(private), private, created)

    def _write(self, key: SigningKey) -> None:
        pem = key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        final = self._path(key)
        temporary = self.folder / f".{final.stem}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, final)
        log.info("new token signing key %s (%s)", key.kid, key.algorithm)


# The database ----------------------------------------------------------------------------


def sealing_key(secret: str) -> AESGCM:
    """The AES-256-GCM key for `auth.keys_secret` (HKDF-SHA256: the same on every replica)."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise KeyStoreError(f"auth.keys_secret must be at least {MIN_SECRET_LENGTH} characters")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        secret.encode("utf-8", "surrogateescape")
    )
    return AESGCM(derived)


def _associated(kid: str, created_ms: int) -> bytes:
    return b"pocket-registry signing key\x00" + kid.encode() + b"\x00" + str(created_ms).encode()


def seal(aead: AESGCM, key: SigningKey) -> SealedKey:
    der = key.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = aead.encrypt(nonce, der, _associated(key.kid, key.created_ms))
    return SealedKey(key.kid, key.algorithm, key.created_ms, _SEAL_VERSION + nonce + sealed)


def unseal(aead: AESGCM, row: SealedKey) -> SigningKey:
    """The key of a row; KeyStoreError when it does not open with this secret, or is not
    the key its row says."""
    data = row.sealed
    if data[:1] != _SEAL_VERSION or len(data) < 1 + _NONCE_BYTES + 16:
        raise KeyStoreError(f"signing key {row.kid} in the database is not sealed as expected")
    nonce, body = data[1 : 1 + _NONCE_BYTES], data[1 + _NONCE_BYTES :]
    try:
        der = aead.decrypt(nonce, body, _associated(row.kid, row.created_ms))
    except InvalidTag:
        raise KeyStoreError(
            "the signing keys in the database do not decrypt with auth.keys_secret: every "
            "replica needs the secret they were made with"
        ) from None
    private = _private_key(der, der=True)
    if thumbprint(private.public_key()) != row.kid or algorithm_of(private) != row.algorithm:
        raise KeyStoreError(f"signing key {row.kid} in the database is not the key it names")
    return SigningKey(row.kid, row.algorithm, private, row.created_ms / 1000)


class DatabaseKeys:
    def __init__(self, db: Database, secret: str) -> None:
        self.table = SigningKeyTable(db)
        self.where = "the database"
        self._aead = sealing_key(secret)

    async def load(self) -> list[SigningKey]:
        return [unseal(self._aead, row) for row in await self.table.all()]

    async def change(self, plan: Callable[[list[SigningKey]], KeyChange]) -> list[SigningKey]:
        after: list[SigningKey] = []
        done: list[KeyChange] = []

        def decide(rows: list[SealedKey]) -> tuple[SealedKey | None, list[str]]:
            keys = [unseal(self._aead, row) for row in rows]
            change = plan(keys)
            gone = {key.kid for key in change.remove}
            after[:] = [key for key in keys if key.kid not in gone]
            if change.add is not None:
                after.append(change.add)
            done[:] = [change]
            return (seal(self._aead, change.add) if change.add else None), sorted(gone)

        await self.table.change(decide)
        for change in done:  # committed
            if change.add is not None:
                log.info("new token signing key %s (%s)", change.add.kid, change.add.algorithm)
            for key in change.remove:
                log.info("retired token signing key %s", key.kid)
        return after
