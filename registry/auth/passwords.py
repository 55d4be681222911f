"""Password hashes: argon2id for everything we set, bcrypt as imported from htpasswd files.

Verification is slow on purpose (tens of milliseconds), so callers run it in a thread.
Unknown accounts are checked against a dummy hash, so a miss costs the same time as a hit.
Secret tokens (robot and refresh tokens) are 256-bit random strings: a SHA-256 of them is
enough to store, and they are looked up by that hash. The lookup's timing can only tell
about the hash, which leads nowhere near a valid secret, so no comparison of secrets
themselves ever happens outside the hash libraries (argon2, bcrypt: constant time).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


class PasswordPolicyError(ValueError):
    """A new password that is too short or too long."""


def check_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordPolicyError("password too long")


def hash_password(password: str) -> str:
    check_policy(password)
    return _hasher.hash(password)


def rehash(password: str) -> str:
    """A fresh argon2id hash of a password that just verified (imports skip the policy)."""
    return _hasher.hash(password)


def is_supported_hash(stored: str) -> bool:
    return stored.startswith("$argon2") or stored.startswith(BCRYPT_PREFIXES)


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    needs_rehash: bool = False  # a bcrypt import, or argon2 with old parameters


def verify_password(stored: str | None, password: str) -> Verdict:
    """Check `password` against `stored` (None: an unknown account, still takes the time)."""
    if len(password) > MAX_PASSWORD_LENGTH:
        return Verdict(False)
    if stored is None:
        _argon2_matches(_dummy_hash(), password)
        return Verdict(False)
    if stored.startswith(BCRYPT_PREFIXES):
        return Verdict(_bcrypt_matches(stored, password), needs_rehash=True)
    if stored.startswith("$argon2"):
        ok = _argon2_matches(stored, password)
        return Verdict(ok, needs_rehash=ok and _hasher.check_needs_rehash(stored))
    _argon2_matches(_dummy_hash(), password)
    return Verdict(False)


def _argon2_matches(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _bcrypt_matches(stored: str, password: str) -> bool:
    # htpasswd writes $2y$, which is $2b$ under another name.
    normalised = "$2b$" + stored[4:]
    try:
        return bcrypt.checkpw(password.encode(), normalised.encode())
    except ValueError:  # a malformed hash, or a password bcrypt cannot take (> 72 bytes)
        return False


# Secret tokens ---------------------------------------------------------------------------

ROBOT_PREFIX = "pkr_"
REFRESH_PREFIX = "pkrt_"


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# htpasswd --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HtpasswdEntry:
    line: int
    username: str
    hash: str | None  # None: a format we do not accept (MD5, SHA-1, crypt)


def parse_htpasswd(text: str) -> list[HtpasswdEntry]:
    """`user:hash` lines as htpasswd writes them; blank lines and `#` comments skipped."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        username, sep, stored = line.partition(":")
        if not sep or not username:
            entries.append(HtpasswdEntry(number, username, None))
            continue
        entries.append(
            HtpasswdEntry(number, username, stored if stored.startswith(BCRYPT_PREFIXES) else None)
        )
    return entries
