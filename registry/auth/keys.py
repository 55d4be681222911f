"""The token-signing keys: made on first start, rotated, served as JWKS.

Keys live as PEM files, readable by the owner only, in one folder (default
`<data_dir>/auth/keys`, mode 0700):

    <created, unix milliseconds>-<kid>.pem      the kid is the key's RFC 7638 JWK thumbprint

The newest key signs. When it is older than the rotation period (or of another algorithm
than configured) a new one is made; an older key keeps verifying until its successor has
signed for longer than a token lives (plus the clock-skew leeway), and is deleted a
minute after that. Several workers or replicas sharing the folder agree on the keys: a
lock file serialises changes, and an unknown `kid` makes a process read the folder again.
Replicas that do not share the folder must be given the same keys (a mounted secret).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

log = logging.getLogger("registry.auth")

SIGNING_ALGORITHMS = ("ES256", "RS256")
RSA_BITS = 3072
_FILE = re.compile(r"^(\d+)-([A-Za-z0-9_-]{16,64})\.pem\Z")
RESCAN_INTERVAL = 1.0
JWKS_RESCAN_INTERVAL = 10.0
RETIRE_MARGIN = 60.0

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyFolderError(RuntimeError):
    """The key folder or a key in it cannot be used."""


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
            raise KeyFolderError(f"unsupported curve {key.curve.name}")
        return "ES256"
    return "RS256"


def generate(algorithm: str) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise KeyFolderError(f"signing algorithm must be one of {', '.join(SIGNING_ALGORITHMS)}")


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: PrivateKey
    created: float
    path: Path | None = None

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    def jwk(self) -> dict[str, Any]:
        return {**public_jwk(self.public_key), "kid": self.kid, "use": "sig", "alg": self.algorithm}


class KeyRing:
    """The signing keys in one folder; cheap to ask, reads the disk only when it must."""

    def __init__(
        self,
        folder: Path,
        algorithm: str = "ES256",
        rotation_seconds: float = 30 * 86400,
        overlap_seconds: float = 360,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if algorithm not in SIGNING_ALGORITHMS:
            raise KeyFolderError(
                f"signing algorithm must be one of {', '.join(SIGNING_ALGORITHMS)}"
            )
        self.folder = folder
        self.algorithm = algorithm
        self.rotation_seconds = rotation_seconds
        self.overlap_seconds = overlap_seconds
        self.clock = clock
        self._keys: list[SigningKey] = []
        self._by_kid: dict[str, tuple[SigningKey, float]] = {}  # kid -> (key, verifies until)
        self._scanned_at = 0.0

    # -- what callers ask ------------------------------------------------------------------

    def signing_key(self) -> SigningKey:
        """The key to sign with now, making or rotating one when due."""
        if not self._keys or self._rotation_due(self._keys[-1]):
            self.ensure()
        return self._keys[-1]

    def verification_key(self, kid: str) -> SigningKey | None:
        """The key named `kid` if it may still verify tokens, else None."""
        key = self._find(kid)
        if key is None and self.clock() - self._scanned_at >= RESCAN_INTERVAL:
            self._scan()
            key = self._find(kid)
        return key

    def jwks(self) -> dict[str, Any]:
        """The public keys that verify now; read afresh now and then, as another worker or
        replica may have rotated."""
        if not self._keys:
            self.ensure()
        elif self.clock() - self._scanned_at >= JWKS_RESCAN_INTERVAL:
            self._scan()
        return {"keys": [key.jwk() for key in self._verifying()]}

    # -- the folder ------------------------------------------------------------------------

    def ensure(self) -> None:
        """Make the folder and a current key if missing; retire keys past their overlap."""
        with self._locked():
            self._scan()
            if not self._keys or self._rotation_due(self._keys[-1]):
                self._create()
                self._scan()
            self._retire()

    def _rotation_due(self, newest: SigningKey) -> bool:
        if newest.algorithm != self.algorithm:
            return True
        return self.rotation_seconds > 0 and self.clock() - newest.created >= self.rotation_seconds

    def _find(self, kid: str) -> SigningKey | None:
        # Asked on every request with a token (cached ones too), so a lookup, not a scan.
        entry = self._by_kid.get(kid)
        return entry[0] if entry is not None and entry[1] > self.clock() else None

    def _set_keys(self, keys: list[SigningKey]) -> None:
        """The keys, oldest first; each verifies until its successor is `overlap` old."""
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
        keys = self._keys
        return [
            key
            for index, key in enumerate(keys)
            if index == len(keys) - 1 or keys[index + 1].created + self.overlap_seconds > now
        ]

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

    def _scan(self) -> None:
        keys = []
        if self.folder.is_dir():
            for path in sorted(self.folder.iterdir()):
                match = _FILE.fullmatch(path.name)
                if match:
                    key = self._load(path, int(match[1]) / 1000)
                    if key is not None:
                        keys.append(key)
        keys.sort(key=lambda k: (k.created, k.kid))
        self._set_keys(keys)
        self._scanned_at = self.clock()

    def _load(self, path: Path, created: float) -> SigningKey | None:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("signing key %s was readable by others; making it 0600", path.name)
            os.chmod(path, 0o600)
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            log.error("ignoring unreadable signing key %s: %s", path.name, exc)
            return None
        if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            log.error("ignoring signing key %s of an unsupported type", path.name)
            return None
        try:
            algorithm = algorithm_of(private)
        except KeyFolderError as exc:
            log.error("ignoring signing key %s: %s", path.name, exc)
            return None
        return SigningKey(thumbprint(private.public_key()), algorithm, private, created, path)

    def _create(self) -> None:
        private = generate(self.algorithm)
        kid = thumbprint(private.public_key())
        # Milliseconds, and always after the newest key, so the new key sorts last even
        # when made within the same instant (a change of algorithm right after a start).
        created = int(self.clock() * 1000)
        if self._keys:
            created = max(created, round(self._keys[-1].created * 1000) + 1)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        final = self.folder / f"{created}-{kid}.pem"
        temporary = self.folder / f".{created}-{kid}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, final)
        log.info("new token signing key %s (%s)", kid, self.algorithm)

    def _retire(self) -> None:
        now = self.clock()
        for index, key in enumerate(self._keys[:-1]):
            successor = self._keys[index + 1]
            if successor.created + self.overlap_seconds + RETIRE_MARGIN < now and key.path:
                with contextlib.suppress(FileNotFoundError):
                    key.path.unlink()
                    log.info("retired token signing key %s", key.kid)
        self._set_keys([k for k in self._keys if k.path is None or k.path.exists()])
