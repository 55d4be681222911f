"""Docker token scopes (`repository:<name>:pull,push`) and the JWT `access` claim, parsed purely.

The grammar, from Docker's token-scope documentation:

    scope          := resourcescope [ ' ' resourcescope ]*
    resourcescope  := resourcetype ":" resourcename ":" action [ ',' action ]*
    resourcetype   := /[a-z0-9]+/ [ '(' /[a-z0-9]+/ ')' ]       e.g. repository(plugin)
    resourcename   := [ hostname '/' ] component [ '/' component ]*
    hostname       := hostcomponent [ '.' hostcomponent ]* [ ':' port ]
    action         := /[a-z]*/   (and `*`, as in `registry:catalog:*`)

A resource name may hold colons (`localhost:5000/app`), so the type ends at the first colon
and the actions begin after the last one. Parsing says only whether a scope is well formed;
what it grants is decided in `permissions`.

Two readers: `parse_scope(s)` is strict (the `access` claim of a token we are asked to
trust), `requested_scopes` is lenient (what a client asks the token endpoint for). Docker's
and Distribution's token servers grant the intersection of what was asked and what is
allowed, so a request is never refused for what it asks: an action outside the grammar is
dropped from its scope, a scope that cannot be read at all is dropped whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_SCOPE_LENGTH = 1024
MAX_SCOPES = 64

_TYPE = re.compile(r"^[a-z0-9]+(?:\([a-z0-9]+\))?\Z")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?"
_NAME = re.compile(rf"^(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*\Z")
_ACTION = re.compile(r"^(?:[a-z]*|\*)\Z")


class ScopeError(ValueError):
    """A scope or access claim that does not follow the grammar."""


@dataclass(frozen=True, slots=True)
class Scope:
    """One resource and actions on it: what a client asks for, or what a token grants."""

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    def claim(self) -> dict[str, Any]:
        """This scope as one entry of Docker's `access` claim."""
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def parse_scope(text: str) -> Scope:
    """One `type:name:actions` scope; raises ScopeError when it is malformed."""
    if not text or len(text) > MAX_SCOPE_LENGTH:
        raise ScopeError("empty or overlong scope")
    resource_type, sep1, rest = text.partition(":")
    name, sep2, actions_text = rest.rpartition(":")
    if not sep1 or not sep2:
        raise ScopeError(f"scope needs type:name:actions, got {text[:100]!r}")
    if not _TYPE.fullmatch(resource_type):
        raise ScopeError(f"malformed resource type {resource_type[:50]!r}")
    if resource_type == "registry":
        if name != "catalog":
            raise ScopeError(f"unknown registry resource {name[:50]!r}")
    elif not _NAME.fullmatch(name) or len(name) > 255:
        raise ScopeError(f"malformed resource name {name[:100]!r}")
    actions = tuple(a for a in actions_text.split(",") if a)
    if not actions:
        raise ScopeError("a scope needs at least one action")
    for action in actions:
        if not _ACTION.fullmatch(action):
            raise ScopeError(f"malformed action {action[:20]!r}")
    return Scope(resource_type, name, tuple(dict.fromkeys(actions)))


def requested_scopes(values: Iterable[str]) -> list[Scope]:
    """What a token request asks for, leniently: unreadable scopes and actions are dropped.

    Only the number of scopes is a hard limit (ScopeError), as it bounds the work.
    """
    scopes: list[Scope] = []
    count = 0
    for value in values:
        for part in value.split(" "):
            if not part:
                continue
            count += 1
            if count > MAX_SCOPES:
                raise ScopeError("too many scopes")
            scope = _requested_scope(part)
            if scope is not None:
                scopes.append(scope)
    return merge(scopes)


def _requested_scope(text: str) -> Scope | None:
    resource_type, _, rest = text.partition(":")
    name, _, actions_text = rest.rpartition(":")
    actions = [a for a in actions_text.split(",") if a and _ACTION.fullmatch(a)]
    try:
        return parse_scope(f"{resource_type}:{name}:{','.join(actions)}")
    except ScopeError:
        return None


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Every scope in `values`, each of which may hold several separated by spaces."""
    scopes: list[Scope] = []
    for value in values:
        for part in value.split(" "):
            if part:
                scopes.append(parse_scope(part))
                if len(scopes) > MAX_SCOPES:
                    raise ScopeError("too many scopes")
    return merge(scopes)


def merge(scopes: Iterable[Scope]) -> list[Scope]:
    """One scope per resource, with the union of its actions, in first-seen order."""
    merged: dict[tuple[str, str], list[str]] = {}
    for scope in scopes:
        actions = merged.setdefault((scope.type, scope.name), [])
        actions.extend(a for a in scope.actions if a not in actions)
    return [Scope(t, n, tuple(a)) for (t, n), a in merged.items() if a]


def parse_access_claim(claim: Any) -> list[Scope]:
    """Docker's `access` claim: a list of {type, name, actions}. Missing means no access."""
    if claim is None:
        return []
    if not isinstance(claim, list) or len(claim) > MAX_SCOPES:
        raise ScopeError("access claim must be a list")
    scopes = []
    for entry in claim:
        if not isinstance(entry, dict):
            raise ScopeError("access entries must be objects")
        resource_type, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
        if not isinstance(resource_type, str) or not isinstance(name, str):
            raise ScopeError("access entries need a string type and name")
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise ScopeError("access entries need a list of actions")
        # An entry without actions grants nothing, but must still be well formed.
        scope = parse_scope(f"{resource_type}:{name}:{','.join(actions) or 'pull'}")
        if actions:
            scopes.append(scope)
    return merge(scopes)


def covers(granted: Iterable[Scope], wanted: Scope) -> bool:
    """Whether `granted` allows every action of `wanted` (`*` allows them all)."""
    have: set[str] = set()
    for scope in granted:
        if scope.type == wanted.type and scope.name == wanted.name:
            have.update(scope.actions)
    return "*" in have or all(action in have for action in wanted.actions)
