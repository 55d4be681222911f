"""Scope parsing: Docker's grammar, names with hosts and ports, the `access` claim."""

from __future__ import annotations

import pytest

from registry.auth.scopes import (
    Scope,
    ScopeError,
    covers,
    parse_access_claim,
    parse_scope,
    parse_scopes,
    requested_scopes,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("repository:alice/app:pull", Scope("repository", "alice/app", ("pull",))),
        ("repository:a/b/c:pull,push", Scope("repository", "a/b/c", ("pull", "push"))),
        ("repository:app:*", Scope("repository", "app", ("*",))),
        ("registry:catalog:*", Scope("registry", "catalog", ("*",))),
        (
            "repository:localhost:5000/team/app:pull",
            Scope("repository", "localhost:5000/team/app", ("pull",)),
        ),
        (
            "repository:registry.example.com/x:push",
            Scope("repository", "registry.example.com/x", ("push",)),
        ),
        (
            "repository(plugin):vieux/sshfs:pull",
            Scope("repository(plugin)", "vieux/sshfs", ("pull",)),
        ),
        ("repository:a__b.c-d:pull,,push", Scope("repository", "a__b.c-d", ("pull", "push"))),
        ("repository:app:pull,pull", Scope("repository", "app", ("pull",))),
        ("repository:app:frobnicate", Scope("repository", "app", ("frobnicate",))),
    ],
)
def test_well_formed_scopes(text: str, expected: Scope) -> None:
    assert parse_scope(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "repository",
        "repository:app",
        "repository::pull",
        ":app:pull",
        "repository:app:",
        "repository:App:pull",
        "repository:app/:pull",
        "repository:/app:pull",
        "repository:a//b:pull",
        "repository:app:PULL",
        "repository:app:pu ll",
        "repository:app:pull;rm",
        "Repository:app:pull",
        "repository(:app:pull",
        "registry:other:*",
        "repository:" + "a" * 300 + ":pull",
        "repository:app\n:pull",
        "repository:-app:pull",
    ],
)
def test_malformed_scopes(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_several_scopes_per_value_and_merging() -> None:
    scopes = parse_scopes(
        ["repository:a:pull repository:b:push", "repository:a:push", "registry:catalog:*"]
    )
    assert scopes == [
        Scope("repository", "a", ("pull", "push")),
        Scope("repository", "b", ("push",)),
        Scope("registry", "catalog", ("*",)),
    ]


def test_too_many_scopes() -> None:
    with pytest.raises(ScopeError):
        parse_scopes([f"repository:r{i}:pull" for i in range(100)])


def test_requested_scopes_drop_what_cannot_be_read() -> None:
    """The token endpoint's reader: a bad action leaves the rest of its scope, a bad scope
    leaves the others; only the number of scopes is a hard limit."""
    wanted = requested_scopes(
        [
            "repository:a:pull,no-such-action repository:b:PUSH,push,pu;ll",
            "repository:UPPER:pull repository:c:;;; :: repository",
            "registry:other:* registry:catalog:* nosuchtype:d:pull",
            "repository:" + "a" * 2000 + ":pull repository:a:delete",
        ]
    )
    assert wanted == [
        Scope("repository", "a", ("pull", "delete")),
        Scope("repository", "b", ("push",)),
        Scope("registry", "catalog", ("*",)),
        Scope("nosuchtype", "d", ("pull",)),  # well formed: `permissions` grants it nothing
    ]
    assert requested_scopes(["", "  "]) == []
    with pytest.raises(ScopeError):
        requested_scopes([" ".join(f"repository:r{i}:x;" for i in range(100))])


def test_access_claim() -> None:
    claim = [
        {"type": "repository", "name": "a/b", "actions": ["pull", "push"]},
        {"type": "repository", "name": "a/b", "actions": ["delete"]},
        {"type": "repository", "name": "c", "actions": []},
    ]
    assert parse_access_claim(claim) == [Scope("repository", "a/b", ("pull", "push", "delete"))]
    assert parse_access_claim(None) == []


@pytest.mark.parametrize(
    "claim",
    [
        "repository:a:pull",
        {"type": "repository"},
        [["repository", "a", ["pull"]]],
        [{"type": "repository", "name": "a", "actions": "pull"}],
        [{"type": "repository", "name": 5, "actions": ["pull"]}],
        [{"type": "repository", "name": "A", "actions": ["pull"]}],
        [{"type": "repository", "name": "a", "actions": [1]}],
    ],
)
def test_malformed_access_claims(claim: object) -> None:
    with pytest.raises(ScopeError):
        parse_access_claim(claim)


def test_covers() -> None:
    granted = [Scope("repository", "a", ("pull",)), Scope("repository", "b", ("*",))]
    assert covers(granted, Scope("repository", "a", ("pull",)))
    assert not covers(granted, Scope("repository", "a", ("pull", "push")))
    assert covers(granted, Scope("repository", "b", ("pull", "push", "delete")))
    assert not covers(granted, Scope("repository", "c", ("pull",)))
    assert not covers(granted, Scope("registry", "a", ("pull",)))
