"""Grants on patterns, ownership, public repositories, robots capped by their owners."""

from __future__ import annotations

import pytest

from registry.auth.permissions import (
    CATALOG,
    Grant,
    PatternError,
    Permissions,
    anonymous,
    for_robot,
    for_user,
    is_account_name,
    is_robot_name,
    parse_actions,
    pattern_matches,
    robot_name,
    validate_pattern,
)
from registry.auth.scopes import Scope


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("team-a/app", "team-a/app", True),
        ("team-a/app", "team-a/app2", False),
        ("team-a/*", "team-a/app", True),
        ("team-a/*", "team-a/deep/er/app", True),
        ("team-a/*", "team-a", False),
        ("team-a/*", "team-ab/app", False),
        ("team-*/app", "team-x/app", True),
        ("team-*/app", "team-x/y/app", False),
        ("*", "anything/at/all", True),
        ("*/app", "x/app", True),
        ("a.b/*", "axb/c", False),
    ],
)
def test_pattern_matching(pattern: str, name: str, matches: bool) -> None:
    assert pattern_matches(validate_pattern(pattern), name) is matches


@pytest.mark.parametrize("pattern", ["", "Team/*", "a//b", "/a", "a/", "a b", "a:b", "a\nb"])
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(PatternError):
        validate_pattern(pattern)


def test_actions() -> None:
    assert parse_actions("push") == {"pull", "push"}
    assert parse_actions("*") == {"pull", "push", "delete"}
    assert parse_actions(["delete"]) == {"delete"}
    for bad in ("", "fly", "pull,fly"):
        with pytest.raises(PatternError):
            parse_actions(bad)


def test_account_names() -> None:
    assert is_account_name("alice") and is_account_name("ci.bot-1")
    for bad in ("", "Alice", "a/b", "a:b", "-a", "a" * 65, "robot:x", "alice\n", "robot$x"):
        assert not is_account_name(bad)


def test_robot_names_are_never_user_names() -> None:
    assert robot_name("ci", "alice") == "robot$alice+ci" and robot_name("ci", None) == "robot$ci"
    for name in (robot_name("ci", "alice"), robot_name("alice", None)):
        assert is_robot_name(name) and not is_account_name(name)
    assert not is_robot_name("alice") and not is_robot_name("robot")


def test_users_own_their_namespace_and_get_team_grants() -> None:
    alice = for_user("alice", False, [Grant("team-a/*", parse_actions("push"))], ["library/*"])
    assert alice.actions_on("alice/app") == {"pull", "push", "delete"}
    assert alice.actions_on("team-a/svc") == {"pull", "push"}
    assert alice.actions_on("library/busybox") == {"pull"}
    assert alice.actions_on("bob/app") == set()
    assert alice.actions_on("alice") == set()


def test_grant_is_the_intersection() -> None:
    alice = for_user("alice", False, [], [])
    wanted = [
        Scope("repository", "alice/app", ("pull", "push")),
        Scope("repository", "bob/app", ("pull", "push")),
        Scope("repository", "alice/x", ("*",)),
        Scope("repository", "alice/y", ("pull", "frobnicate")),
        Scope("repository(plugin)", "alice/z", ("pull",)),
        CATALOG,
    ]
    assert alice.grant(wanted) == [
        Scope("repository", "alice/app", ("pull", "push")),
        Scope("repository", "alice/x", ("pull", "push", "delete")),
        Scope("repository", "alice/y", ("pull",)),
        CATALOG,
    ]


def test_a_star_scope_grants_only_what_the_caller_has() -> None:
    """`*` asks for every action; it must not become every action where the caller has fewer."""
    alice = for_user("alice", False, [Grant("shared/*", parse_actions("pull"))], ["library/*"])
    wanted = [
        Scope("repository", "bob/app", ("*",)),
        Scope("repository", "shared/lib", ("*",)),
        Scope("repository", "library/busybox", ("*",)),
    ]
    assert alice.grant(wanted) == [
        Scope("repository", "shared/lib", ("pull",)),
        Scope("repository", "library/busybox", ("pull",)),
    ]
    robot = for_robot([Grant("*", parse_actions("*"))], alice, [])
    assert robot.grant([Scope("repository", "bob/app", ("*",))]) == []


def test_admins_may_do_everything() -> None:
    root = for_user("root", True, [], [])
    assert root.actions_on("anyone/anything") == {"pull", "push", "delete"}


def test_anonymous_callers_pull_public_repositories_only() -> None:
    nobody = anonymous(["library/*"])
    assert nobody.actions_on("library/x") == {"pull"}
    assert nobody.actions_on("alice/x") == set()
    assert nobody.grant([CATALOG]) == []


def test_robots_are_capped_by_their_owner() -> None:
    owner = for_user("alice", False, [], [])
    robot = for_robot([Grant("*", parse_actions("*"))], owner, ["library/*"])
    assert robot.actions_on("alice/app") == {"pull", "push", "delete"}
    assert robot.actions_on("bob/app") == set()
    assert robot.actions_on("library/x") == {"pull"}
    pull_only = for_robot([Grant("alice/*", parse_actions("pull"))], owner, [])
    assert pull_only.actions_on("alice/app") == {"pull"}
    ownerless = for_robot([Grant("ci/*", parse_actions("pull"))], None, [])
    assert ownerless.actions_on("ci/app") == {"pull"}
    assert ownerless.actions_on("other/app") == set()


def test_empty_permissions() -> None:
    assert Permissions().actions_on("x") == set()
    assert not Permissions().may_list_catalog()
