"""Accounts: checking credentials, and what an authenticated caller may do.

A caller is a `Principal`: a user (password), a robot (a CI token, given as the password
with the robot's name, `robot$<owner>+<name>`, as user name), anonymous, or the subject of
an external issuer's token. Our tokens carry the account's name as `sub` and its id as
`account` (`user:<id>`, `robot:<id>`; none when anonymous). Ids are never reused, so a token
means the account it was issued to and no other: not one made later under the same name.

Failed logins count against the account's identity (`user:<id>`; `name:<typed name>` for a
name no user has, so the answers do not tell which names exist), never against a robot:
its secret is 256 random bits, so a per-name lockout would only let strangers block it.
Every failure also counts against the client's address.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from registry.auth import permissions as perms
from registry.auth.audit import AuditLog
from registry.auth.cache import VerifiedCache
from registry.auth.passwords import (
    REFRESH_PREFIX,
    ROBOT_PREFIX,
    new_secret,
    rehash,
    secret_digest,
    verify_password,
)
from registry.auth.permissions import is_robot_name
from registry.auth.ratelimit import LoginLimiter
from registry.errors import Unauthorized
from registry.metadata.identity import IdentityStore, RefreshRecord, RobotRecord, UserRecord, now

EXTERNAL_PREFIX = "external:"
MAX_USERNAME = 256
# Passwords verified here are trusted again for this long without the slow hash, and only
# while the database still holds the very hash they matched (a change misses at once).
PASSWORD_CACHE_SIZE = 1024
PASSWORD_CACHE_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "user", "robot", "anonymous" or "external"
    name: str  # a user's name, a robot's (robot$...), "" or an external token's `sub`
    user_id: int | None = None
    robot_id: int | None = None
    admin: bool = False  # may use the admin API
    issuer: str | None = None  # an external token's issuer
    expires_at: datetime | None = None  # a robot's expiry

    @property
    def subject(self) -> str:
        """How our tokens' `sub` and the audit log name this caller. An external token's
        subject goes with its issuer, so it can never pass for one of our accounts."""
        if self.kind == "external":
            return f"{EXTERNAL_PREFIX}{self.issuer}:{self.name}"
        return self.name

    @property
    def account(self) -> str | None:
        """The account's identity, `user:<id>` or `robot:<id>`; None for anyone else."""
        if self.kind == "user" and self.user_id is not None:
            return f"user:{self.user_id}"
        if self.kind == "robot" and self.robot_id is not None:
            return f"robot:{self.robot_id}"
        return None

    @property
    def authenticated(self) -> bool:
        return self.kind != "anonymous"


ANONYMOUS = Principal("anonymous", "")


def user_principal(user: UserRecord) -> Principal:
    return Principal("user", user.name, user_id=user.id, admin=user.admin)


def robot_principal(robot: RobotRecord) -> Principal:
    return Principal(
        "robot", robot.name, robot_id=robot.id, admin=robot.admin, expires_at=robot.expires_at
    )


class BadCredentials(Unauthorized):
    default_message = "invalid username or password"


def failure_key(username: str, user: UserRecord | None) -> str | None:
    """What a failed login with this name counts against (None: only the address)."""
    if user is not None:
        return f"user:{user.id}"
    if is_robot_name(username):
        return None
    return f"name:{username}"


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
        # Stored hash each recently verified (user name, password) matched.
        self._verified: VerifiedCache[str] = VerifiedCache(PASSWORD_CACHE_SIZE)

    # -- credentials -----------------------------------------------------------------------

    async def login(
        self, username: str, password: str, address: str, *, record: bool = True
    ) -> Principal:
        """The account these credentials belong to; BadCredentials or TooManyRequests if not.

        `record` writes successful logins to the audit log (failures always are).
        """
        username = username[:MAX_USERNAME]
        robot_secret = password.startswith(ROBOT_PREFIX)
        if robot_secret:  # the address limit only: see the module docstring
            await self.limiter.check(None, address)
            robot = await self._robot_login(username, password)
            if robot is not None:
                if record:
                    await self.audit.record(robot.subject, address, "login")
                return robot
        user = None if is_robot_name(username) else await self.identity.get_user(username)
        account = failure_key(username, user)
        if account is not None or not robot_secret:
            await self.limiter.check(account, address)
        principal = await self._check_password(user, username, password)
        if principal is None:
            await self.limiter.failed(account, address)
            await self.audit.record(username, address, "login_failed")
            raise BadCredentials()
        await self.limiter.succeeded(account)
        if record:
            await self.audit.record(principal.subject, address, "login")
        return principal

    async def _robot_login(self, username: str, secret: str) -> Principal | None:
        robot = await self._robot_by_secret(secret)
        if robot is None or username not in (robot.name, robot.legacy_name):
            return None
        return robot_principal(robot)

    async def _check_password(
        self, user: UserRecord | None, username: str, password: str
    ) -> Principal | None:
        if user is not None:
            matched = self._verified.get(username, password)
            if matched is not None and hmac.compare_digest(
                matched.encode(), user.password_hash.encode()
            ):
                return user_principal(user)
        verdict = await asyncio.to_thread(
            verify_password, user.password_hash if user else None, password
        )
        if user is None or not verdict.ok:
            return None
        stored = user.password_hash
        if verdict.needs_rehash:  # bcrypt from htpasswd, or old argon2 parameters
            stored = await asyncio.to_thread(rehash, password)
            await self.identity.set_password(user.name, stored, sign_out=False)
        self._verified.put(
            stored, time.monotonic() + PASSWORD_CACHE_SECONDS, username, password
        )
        return user_principal(user)

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
        """The account of a refresh token; BadCredentials when it is unknown or expired.

        Failures count against the address only. Refresh secrets are 256 random bits, so a
        count per token owner could not slow any guessing; it would only let whoever holds
        one of the owner's stale tokens lock the owner out. The owner, once known (an
        expired token), is named in the audit log.
        """
        await self.limiter.check(None, address)
        record = await self.identity.refresh_by_secret(secret_digest(secret))
        owner = await self._refresh_owner(record) if record is not None else None
        if record is not None and owner is not None and record.expires_at > now():
            return owner
        await self.limiter.failed(None, address)
        actor = owner.subject if owner is not None else ""
        await self.audit.record(actor, address, "login_failed", detail={"grant": "refresh"})
        raise BadCredentials("invalid or expired refresh token")

    async def _refresh_owner(self, record: RefreshRecord) -> Principal | None:
        if record.user_id is not None:
            return await self.user_principal(record.user_id)
        if record.robot_id is not None:
            return await self.robot_principal(record.robot_id)
        return None

    # -- lookups ---------------------------------------------------------------------------

    async def user_principal(self, user_id: int) -> Principal | None:
        user = await self.identity.get_user_by_id(user_id)
        return user_principal(user) if user else None

    async def robot_principal(self, robot_id: int) -> Principal | None:
        robot = await self.identity.robot_by_id(robot_id)
        if robot is None or robot.expired(now()):
            return None
        return robot_principal(robot)

    async def principal_for_token(self, subject: str, account: str | None) -> Principal | None:
        """The live account one of our tokens was issued to: found by the id in its
        `account` claim, and still of the name in its `sub`. None when removed or expired,
        or for a token naming no account (other than an anonymous one)."""
        if account is None:
            return ANONYMOUS if subject == "" else None
        kind, _, number = account.partition(":")
        if not number.isdigit() or len(number) > 18:
            return None
        if kind == "user":
            principal = await self.user_principal(int(number))
        elif kind == "robot":
            principal = await self.robot_principal(int(number))
        else:
            return None
        if principal is None or principal.subject != subject:
            return None
        return principal

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
