"""Accounts: checking credentials, and what an authenticated caller may do.

A caller is a `Principal`: a user (password), a robot (a CI token, given as the password
with the token's name as user name), anonymous, or the subject of an external issuer's
token. Token subjects name them: `alice`, `robot:ci-build`, `""` for anonymous.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta

from registry.auth import permissions as perms
from registry.auth.audit import AuditLog
from registry.auth.passwords import (
    REFRESH_PREFIX,
    ROBOT_PREFIX,
    new_secret,
    rehash,
    secret_digest,
    verify_password,
)
from registry.auth.ratelimit import LoginLimiter
from registry.errors import Unauthorized
from registry.metadata.identity import IdentityStore, RobotRecord, now

ROBOT_SUBJECT_PREFIX = "robot:"
MAX_USERNAME = 256


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "user", "robot", "anonymous" or "external"
    name: str
    user_id: int | None = None
    robot_id: int | None = None
    admin: bool = False  # may use the admin API

    @property
    def subject(self) -> str:
        if self.kind == "robot":
            return ROBOT_SUBJECT_PREFIX + self.name
        return self.name

    @property
    def authenticated(self) -> bool:
        return self.kind != "anonymous"


ANONYMOUS = Principal("anonymous", "")


class VerifiedPasswords:
    """Passwords this process has just verified, so Basic auth on every request of a script
    does not cost a slow hash each time.

    An entry holds the stored hash the password matched, and counts only while the database
    still holds that same hash: a changed password or a removed user misses at once, on
    every replica. Keys are HMACs under a per-process random key, never the password.
    """

    def __init__(self, size: int = 1024, ttl_seconds: float = 300) -> None:
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self.size, self.ttl = size, ttl_seconds

    def _id(self, username: str, password: str) -> bytes:
        message = username.encode() + b"\0" + password.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def known(self, username: str, password: str, stored_hash: str) -> bool:
        entry = self._entries.get(self._id(username, password))
        if entry is None or entry[1] < time.monotonic():
            return False
        return hmac.compare_digest(entry[0].encode(), stored_hash.encode())

    def remember(self, username: str, password: str, stored_hash: str) -> None:
        key = self._id(username, password)
        self._entries[key] = (stored_hash, time.monotonic() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class BadCredentials(Unauthorized):
    default_message = "invalid username or password"


class Accounts:
    def __init__(
        self,
        identity: IdentityStore,
        limiter: LoginLimiter,
        audit: AuditLog,
        refresh_ttl_seconds: int,
    ) -> None:
        self.identity = identity
        self.limiter = limiter
        self.audit = audit
        self.refresh_ttl = timedelta(seconds=refresh_ttl_seconds)
        self._verified = VerifiedPasswords()

    # -- credentials -----------------------------------------------------------------------

    async def login(
        self, username: str, password: str, address: str, *, record: bool = True
    ) -> Principal:
        """The account these credentials belong to; BadCredentials or TooManyRequests if not.

        `record` writes successful logins to the audit log (failures always are).
        """
        username = username[:MAX_USERNAME]
        await self.limiter.check(username, address)
        principal = await self._check(username, password)
        if principal is None:
            await self.limiter.failed(username, address)
            await self.audit.record(username, address, "login_failed")
            raise BadCredentials()
        await self.limiter.succeeded(username)
        if record:
            await self.audit.record(principal.subject, address, "login")
        return principal

    async def _check(self, username: str, password: str) -> Principal | None:
        if password.startswith(ROBOT_PREFIX):
            robot = await self._robot_by_secret(password)
            if robot is not None:
                if username != robot.name:
                    return None
                return Principal("robot", robot.name, robot_id=robot.id, admin=robot.admin)
        user = await self.identity.get_user(username)
        if user is not None and self._verified.known(username, password, user.password_hash):
            return Principal("user", user.name, user_id=user.id, admin=user.admin)
        verdict = await asyncio.to_thread(
            verify_password, user.password_hash if user else None, password
        )
        if user is None or not verdict.ok:
            return None
        stored = user.password_hash
        if verdict.needs_rehash:  # bcrypt from htpasswd, or old argon2 parameters
            stored = await asyncio.to_thread(rehash, password)
            await self.identity.set_password(user.name, stored, sign_out=False)
        self._verified.remember(username, password, stored)
        return Principal("user", user.name, user_id=user.id, admin=user.admin)

    async def _robot_by_secret(self, secret: str) -> RobotRecord | None:
        digest = secret_digest(secret)
        robot = await self.identity.robot_by_secret(digest)
        if robot is None or robot.expired(now()):
            return None
        await self.identity.touch_robot(robot.id)
        return robot

    # -- refresh (identity) tokens ---------------------------------------------------------

    async def new_refresh_token(self, principal: Principal, client_id: str | None) -> str:
        secret = new_secret(REFRESH_PREFIX)
        if random.random() < 0.01:  # now and then, drop refresh tokens long expired
            await self.identity.purge_expired_refresh()
        await self.identity.create_refresh(
            secret_digest(secret),
            principal.user_id,
            principal.robot_id,
            (client_id or "")[:64] or None,
            now() + self.refresh_ttl,
        )
        return secret

    async def refresh_login(self, secret: str, address: str) -> Principal:
        """The account of a refresh token; BadCredentials when it is unknown or expired."""
        await self.limiter.check("", address)
        record = await self.identity.refresh_by_secret(secret_digest(secret))
        principal = None
        if record is not None and record.expires_at > now():
            if record.user_id is not None:
                principal = await self.user_principal(record.user_id)
            elif record.robot_id is not None:
                principal = await self.robot_principal(record.robot_id)
        if principal is None:
            await self.limiter.failed("", address)
            await self.audit.record("", address, "login_failed", detail={"grant": "refresh"})
            raise BadCredentials("invalid or expired refresh token")
        return principal

    # -- lookups ---------------------------------------------------------------------------

    async def user_principal(self, user_id: int) -> Principal | None:
        user = await self.identity.get_user_by_id(user_id)
        return Principal("user", user.name, user_id=user.id, admin=user.admin) if user else None

    async def robot_principal(self, robot_id: int) -> Principal | None:
        robot = await self.identity.robot_by_id(robot_id)
        if robot is None or robot.expired(now()):
            return None
        return Principal("robot", robot.name, robot_id=robot.id, admin=robot.admin)

    async def principal_for_subject(self, subject: str) -> Principal | None:
        """The live account behind one of our tokens' `sub` (None: removed or expired)."""
        if subject == "":
            return ANONYMOUS
        if subject.startswith(ROBOT_SUBJECT_PREFIX):
            robot = await self.identity.robot_by_name(subject[len(ROBOT_SUBJECT_PREFIX) :])
            if robot is None or robot.expired(now()):
                return None
            return Principal("robot", robot.name, robot_id=robot.id, admin=robot.admin)
        user = await self.identity.get_user(subject)
        return Principal("user", user.name, user_id=user.id, admin=user.admin) if user else None

    async def permissions(self, principal: Principal) -> perms.Permissions:
        public = await self.identity.public_patterns()
        if principal.kind == "user" and principal.user_id is not None:
            return await self._user_permissions(principal.user_id, public)
        if principal.kind == "robot" and principal.robot_id is not None:
            robot = await self.identity.robot_by_id(principal.robot_id)
            if robot is None or robot.expired(now()):
                return perms.anonymous(public)
            scopes = [perms.Grant(p, perms.parse_actions(a)) for p, a in robot.scopes]
            owner = None
            if robot.owner is not None:
                user = await self.identity.get_user(robot.owner)
                owner = await self._user_permissions(user.id, []) if user else perms.Permissions()
            return perms.for_robot(scopes, owner, public)
        return perms.anonymous(public)

    async def _user_permissions(self, user_id: int, public: list[str]) -> perms.Permissions:
        user = await self.identity.get_user_by_id(user_id)
        if user is None:
            return perms.anonymous(public)
        rows = await self.identity.grants_for_user(user_id)
        grants = [perms.Grant(p, perms.parse_actions(a)) for p, a in rows]
        return perms.for_user(user.name, user.admin, grants, public)
