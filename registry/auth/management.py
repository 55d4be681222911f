"""Account management with its checks, shared by `registry user|team|grant|token ...` and the
admin API: names and patterns are validated here, passwords hashed, token secrets made.

Invalid input raises `ManagementError`; a taken name `IdentityConflict`; a missing one
`IdentityNotFound` (both from registry.metadata.identity).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from registry.auth.passwords import (
    ROBOT_PREFIX,
    PasswordPolicyError,
    hash_password,
    new_secret,
    parse_htpasswd,
    secret_digest,
)
from registry.auth.permissions import (
    ACTIONS,
    PatternError,
    format_actions,
    is_account_name,
    parse_actions,
    robot_name,
    validate_pattern,
)
from registry.metadata.identity import IdentityConflict, IdentityStore, now
from registry.numbers import parse_decimal

_DURATION = re.compile(r"^([0-9]+)([smhdw])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_TOKEN_LIFETIME = "90d"
MAX_LIFETIME = timedelta(days=100 * 366)  # longer is `never`; past ~2.7 million years, a 500


class ManagementError(ValueError):
    """Input that cannot be stored: a bad name, pattern, action list, password or duration."""


def check_name(kind: str, name: str) -> str:
    if not is_account_name(name):
        raise ManagementError(
            f"{kind} names are lowercase letters, digits and . _ - between them "
            f"(one repository-name component, at most 64 characters): {name[:80]!r}"
        )
    return name


def parse_duration(text: str) -> timedelta | None:
    """`90d`, `12h`, `30m`, `3600s`, `2w`; `never` for no expiry."""
    if text.strip().lower() == "never":
        return None
    match = _DURATION.fullmatch(text.strip().lower())
    count = parse_decimal(match[1]) if match else None
    if match is None or not count:
        raise ManagementError(f"durations look like 90d, 12h, 30m or never; got {text[:80]!r}")
    seconds = count * _UNITS[match[2]]
    if seconds > MAX_LIFETIME.total_seconds():
        raise ManagementError(f"a lifetime is at most 100 years (or never); got {text[:80]!r}")
    return timedelta(seconds=seconds)


def parse_token_scope(text: str) -> tuple[str, str]:
    """`pattern:actions`, e.g. `ci/*:pull` or `team-a/*:pull,push`."""
    pattern, sep, actions = text.rpartition(":")
    if not sep:
        raise ManagementError(f"token scopes are pattern:actions, e.g. 'ci/*:pull'; got {text!r}")
    return checked_pattern(pattern), checked_actions(actions)


def checked_pattern(pattern: str) -> str:
    try:
        return validate_pattern(pattern)
    except PatternError as exc:
        raise ManagementError(str(exc)) from None


def checked_actions(actions: str) -> str:
    try:
        return format_actions(parse_actions(actions))
    except PatternError as exc:
        raise ManagementError(str(exc)) from None


async def hashed(password: str) -> str:
    try:
        return await asyncio.to_thread(hash_password, password)
    except PasswordPolicyError as exc:
        raise ManagementError(str(exc)) from None


async def add_user(identity: IdentityStore, name: str, password: str, admin: bool) -> None:
    await identity.create_user(check_name("user", name), await hashed(password), admin)


async def change_password(identity: IdentityStore, name: str, password: str) -> None:
    await identity.set_password(name, await hashed(password))


async def grant(identity: IdentityStore, kind: str, name: str, pattern: str, actions: str) -> str:
    """Add `actions` to what the user or team has on `pattern`; return the result."""
    pattern, wanted = checked_pattern(pattern), parse_actions_or_fail(actions)
    existing = await identity.get_grant(kind, name, pattern)
    merged = wanted | (parse_actions(existing) if existing else frozenset())
    text = format_actions(merged)
    await identity.set_grant(kind, name, pattern, text)
    return text


async def revoke(
    identity: IdentityStore, kind: str, name: str, pattern: str, actions: str | None
) -> str | None:
    """Take `actions` (all when None) off a grant; return what is left, None when nothing."""
    existing = await identity.get_grant(kind, name, pattern)
    if existing is None:
        await identity.delete_grant(kind, name, pattern)  # raises IdentityNotFound
        return None
    if actions is None:
        await identity.delete_grant(kind, name, pattern)
        return None
    removed = {w.strip() for w in actions.split(",") if w.strip()}
    if not removed or not removed <= {*ACTIONS, "*"}:
        raise ManagementError(f"actions must be among {', '.join(ACTIONS)}; got {actions!r}")
    if "*" in removed:
        removed = set(ACTIONS)
    if "pull" in removed:  # push implies pull, so it cannot stay without it
        removed.add("push")
    left = set(parse_actions(existing)) - removed
    if not left:
        await identity.delete_grant(kind, name, pattern)
        return None
    text = format_actions(left)
    await identity.set_grant(kind, name, pattern, text)
    return text


def parse_actions_or_fail(actions: str) -> frozenset[str]:
    try:
        return parse_actions(actions)
    except PatternError as exc:
        raise ManagementError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class NewToken:
    name: str  # the full name, robot$<owner>+<name> or robot$<name>: the login user name
    secret: str  # shown once, never stored
    expires_at: datetime | None


async def create_token(
    identity: IdentityStore,
    name: str,
    scopes: list[str],
    expires: str = DEFAULT_TOKEN_LIFETIME,
    owner: str | None = None,
    admin: bool = False,
) -> NewToken:
    """A robot named `robot$<owner>+<name>` (`robot$<name>` without owner), from the short
    `name`, so no robot can take a user's name or another owner's robot's."""
    check_name("token", name)
    if owner is not None:
        check_name("user", owner)
    full = robot_name(name, owner)
    parsed = [parse_token_scope(s) for s in scopes]
    if not parsed and not admin:
        raise ManagementError("a token needs at least one scope, e.g. 'ci/*:pull'")
    lifetime = parse_duration(expires)
    expires_at = now() + lifetime if lifetime is not None else None
    secret = new_secret(ROBOT_PREFIX)
    await identity.create_robot(full, owner, secret_digest(secret), parsed, admin, expires_at)
    return NewToken(full, secret, expires_at)


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "line N: why"


async def import_htpasswd(identity: IdentityStore, text: str, update: bool) -> ImportReport:
    """Users from an htpasswd file (bcrypt only); their hashes are kept as they are and
    upgraded to argon2id at their first login."""
    report = ImportReport()
    for entry in parse_htpasswd(text):
        if entry.hash is None:
            report.skipped.append(f"line {entry.line}: not a bcrypt entry (htpasswd -B)")
            continue
        if not is_account_name(entry.username):
            report.skipped.append(f"line {entry.line}: unusable user name {entry.username!r}")
            continue
        try:
            await identity.create_user(entry.username, entry.hash, admin=False)
            report.added.append(entry.username)
        except IdentityConflict:
            if update:
                await identity.set_password(entry.username, entry.hash)
                report.updated.append(entry.username)
            else:
                report.skipped.append(f"line {entry.line}: {entry.username} exists")
    return report
