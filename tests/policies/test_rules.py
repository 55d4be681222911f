"""The pure rules: tag globs (linear, never backtracking for ever), sizes, durations, which
policy governs a repository, and the config's policies checked at start."""

from __future__ import annotations

import time

import pytest

from registry.config import ConfigError, PoliciesConfig
from registry.policies.management import retention_policy
from registry.policies.rules import (
    RetentionPolicy,
    RuleError,
    glob_matches,
    governing,
    namespace_of,
    parse_duration,
    parse_size,
    parse_tag_globs,
)
from registry.policies.service import configured_rules


@pytest.mark.parametrize(
    ("glob", "tag", "matches"),
    [
        ("latest", "latest", True),
        ("latest", "latest2", False),
        ("v*", "v1.2.3", True),
        ("v*", "1.2.3", False),
        ("*", "anything", True),
        ("v?.*", "v1.0", True),
        ("v?.*", "v10.0", False),
        ("*-rc*", "1.0-rc2", True),
        ("*a*b", "xaxxb", True),
        ("*a*b", "xaxxbc", False),
        ("a.b", "aXb", False),  # `.` is itself, not "any character"
    ],
)
def test_globs(glob: str, tag: str, matches: bool) -> None:
    assert glob_matches(glob, tag) is matches


def test_a_hostile_glob_is_matched_in_linear_time() -> None:
    started = time.process_time()
    assert not glob_matches("*a" * 60 + "b", "a" * 128)
    assert time.process_time() - started < 0.5


def test_tag_globs_are_checked() -> None:
    assert parse_tag_globs("latest, v*,latest") == ("latest", "v*")
    for bad in ("", ",", "v[0-9]", "a/b", "x" * 129, "v(1|2)"):
        with pytest.raises(RuleError):
            parse_tag_globs(bad)


def test_sizes_and_durations() -> None:
    assert parse_size("10GiB") == 10 * 1024**3
    assert parse_size("500MB") == 500_000_000
    assert parse_size("1k") == 1000 and parse_size(1234) == 1234
    for bad in ("0", "-1", "1.5GB", "10 bananas", "", True):
        with pytest.raises(RuleError):
            parse_size(bad)  # type: ignore[arg-type]
    assert parse_duration("30d") == 30 * 86400 and parse_duration("2w") == 14 * 86400
    for bad in ("30", "1y", "-1d", "d"):
        with pytest.raises(RuleError):
            parse_duration(bad)


def test_the_longest_matching_pattern_governs() -> None:
    policies = [
        RetentionPolicy("*", keep_last=1, source="config"),
        RetentionPolicy("team/*", keep_last=2),
        RetentionPolicy("team/app", keep_last=3, source="config"),
        RetentionPolicy("team/app", keep_last=4),
    ]
    assert governing(policies, "team/app") == policies[3]
    assert governing(policies, "team/other") == policies[1]
    assert governing(policies, "alone") == policies[0]
    assert governing(policies[1:], "alone") is None
    assert namespace_of("team/a/b") == "team" and namespace_of("alpine") == "alpine"


def test_a_policy_needs_a_rule_and_keep_last_zero_keeps_nothing_by_count() -> None:
    with pytest.raises(RuleError):
        retention_policy({"pattern": "x/*"})
    assert retention_policy({"pattern": "x/*", "keep_last": 0}).prunes_tags
    only_untagged = retention_policy({"pattern": "x/*", "untagged_after": "1d"})
    assert not only_untagged.prunes_tags and only_untagged.untagged_after == 86400


def test_configured_policies_are_checked_at_start() -> None:
    good = PoliciesConfig(
        retention=[{"pattern": "ci/*", "keep_last": 3}],
        immutable_tags=[{"pattern": "prod/*", "tags": "v*"}],
        default_quota="1GiB",
    )
    retention, immutable, quota = configured_rules(good)
    assert retention[0].source == "config" and immutable[0].id is None and quota == 1024**3
    for bad in (
        PoliciesConfig(retention=[{"pattern": "ci/*"}]),
        PoliciesConfig(retention=["ci/*"]),  # type: ignore[list-item]
        PoliciesConfig(immutable_tags=[{"pattern": "prod/*", "tags": "v("}]),
        PoliciesConfig(default_quota="huge"),
        PoliciesConfig(pull_stats_flush_seconds=0),
    ):
        with pytest.raises(ConfigError):
            configured_rules(bad)
