"""Who may do what: grants on repository-name patterns, ownership, public repositories. Pure.

A grant gives actions (`pull`, `push`, `delete`) on a pattern:

    team-a/app     exactly that repository
    team-a/*       everything below `team-a/`, at any depth
    team-*/app     `*` inside a path component matches within that component only
    *              every repository

`push` implies `pull`: every push client reads before it writes, so a push-only grant
would be useless. Each user owns `<username>/*`. Public patterns give `pull` to everyone,
anonymous callers included. Admins may do everything, including `registry:catalog:*`.
A robot token's grants are intersected with its owner's, so a token never outgrows its
creator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from registry.auth.scopes import Scope

ACTIONS = ("pull", "push", "delete")
CATALOG = Scope("registry", "catalog", ("*",))

_PATTERN_COMPONENT = re.compile(r"^[a-z0-9*]+(?:(?:[._]|__|-+)[a-z0-9*]+)*\Z|^\*\Z")
_ACCOUNT_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*\Z")


class PatternError(ValueError):
    """A pattern or action list that cannot be stored."""


def is_account_name(name: str) -> bool:
    """User and team names, and a robot's short name: one repository-name component, so
    `<user>/*` works."""
    return 0 < len(name) <= 64 and _ACCOUNT_NAME.fullmatch(name) is not None


# Robots live in a namespace of their own, as in Harbor: `robot$<owner>+<name>` for a user's
# robot, `robot$<name>` for one an admin made without owner. `$` and `+` never appear in a
# user name, so no user can be named like a robot, nor one user's robot like another's.
ROBOT_NAME_PREFIX = "robot$"


def robot_name(short: str, owner: str | None) -> str:
    return f"{ROBOT_NAME_PREFIX}{owner}+{short}" if owner else f"{ROBOT_NAME_PREFIX}{short}"


def is_robot_name(name: str) -> bool:
    return name.startswith(ROBOT_NAME_PREFIX)


def validate_pattern(pattern: str) -> str:
    if not pattern or len(pattern) > 255:
        raise PatternError("a pattern needs 1 to 255 characters")
    for component in pattern.split("/"):
        if not _PATTERN_COMPONENT.fullmatch(component):
            raise PatternError(f"malformed pattern {pattern!r}")
    return pattern


def parse_actions(text: str | Iterable[str]) -> frozenset[str]:
    """`pull,push` (or a list) as a set; `*` means all; push brings pull along."""
    words = text.split(",") if isinstance(text, str) else list(text)
    actions = {w.strip() for w in words if w.strip()}
    if "*" in actions:
        actions = set(ACTIONS)
    unknown = actions - set(ACTIONS)
    if unknown or not actions:
        raise PatternError(f"actions must be among {', '.join(ACTIONS)}; got {text!r}")
    if "push" in actions:
        actions.add("pull")
    return frozenset(actions)


def format_actions(actions: Iterable[str]) -> str:
    return ",".join(a for a in ACTIONS if a in set(actions))


@lru_cache(maxsize=4096)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    if pattern == "*":
        return re.compile(r"^.+\Z")
    prefix, deep = (pattern[:-2], True) if pattern.endswith("/*") else (pattern, False)
    body = "[^/]*".join(re.escape(piece) for piece in prefix.split("*"))
    return re.compile(rf"^{body}{'/.+' if deep else ''}\Z")


def pattern_matches(pattern: str, name: str) -> bool:
    return _pattern_regex(pattern).fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Grant:
    pattern: str
    actions: frozenset[str]


@dataclass(frozen=True)
class Permissions:
    """What one caller may do. `limit`, when set, caps everything (a robot token's scope)."""

    grants: tuple[Grant, ...] = ()
    admin: bool = False
    authenticated: bool = False
    limit: Permissions | None = None
    public: tuple[str, ...] = field(default=())

    def actions_on(self, name: str) -> frozenset[str]:
        """The repository actions allowed on `name`."""
        if self.admin:
            own = frozenset(ACTIONS)
        else:
            own = frozenset(
                a for g in self.grants if pattern_matches(g.pattern, name) for a in g.actions
            )
        if self.limit is not None:
            own = own & self.limit.actions_on(name)
        if any(pattern_matches(p, name) for p in self.public):
            own = own | {"pull"}
        return own

    def may_list_catalog(self) -> bool:
        return self.authenticated and (self.limit is None or self.limit.may_list_catalog())

    def grant(self, wanted: Sequence[Scope]) -> list[Scope]:
        """What of `wanted` is allowed: the intersection, never an error for asking too much."""
        granted = []
        for scope in wanted:
            actions = self._granted_actions(scope)
            if actions:
                granted.append(Scope(scope.type, scope.name, actions))
        return granted

    def _granted_actions(self, scope: Scope) -> tuple[str, ...]:
        if scope.type == "registry":
            if scope.name == "catalog" and "*" in scope.actions and self.may_list_catalog():
                return ("*",)
            return ()
        if scope.type != "repository":
            return ()
        allowed = self.actions_on(scope.name)
        if "*" in scope.actions:
            return tuple(a for a in ACTIONS if a in allowed)
        return tuple(a for a in scope.actions if a in allowed)


def owner_grant(username: str) -> Grant:
    return Grant(f"{username}/*", frozenset(ACTIONS))


def for_user(
    username: str, admin: bool, grants: Iterable[Grant], public: Iterable[str]
) -> Permissions:
    return Permissions(
        grants=(owner_grant(username), *grants),
        admin=admin,
        authenticated=True,
        public=tuple(public),
    )


def for_robot(
    scopes: Iterable[Grant], owner: Permissions | None, public: Iterable[str]
) -> Permissions:
    """A robot token: its own scopes, capped by its owner's permissions when it has one."""
    own = Permissions(grants=tuple(scopes), authenticated=True)
    if owner is None:
        return Permissions(grants=own.grants, authenticated=True, public=tuple(public))
    capped_owner = Permissions(owner.grants, owner.admin, True)
    return Permissions(
        grants=own.grants, authenticated=True, limit=capped_owner, public=tuple(public)
    )


def anonymous(public: Iterable[str]) -> Permissions:
    return Permissions(public=tuple(public))
