"""Which tags a retention policy keeps, and why (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from registry.policies.retention import TagFacts, decide_tags
from registry.policies.rules import ImmutableRule, RetentionPolicy

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
DAY = 86400


def tag(name: str, pushed_days_ago: float, pulled_days_ago: float | None = None) -> TagFacts:
    pulled = NOW - timedelta(days=pulled_days_ago) if pulled_days_ago is not None else None
    return TagFacts(name, f"sha256:{name}", NOW - timedelta(days=pushed_days_ago), pulled)


TAGS = [
    tag("latest", 40),
    tag("v1", 30),
    tag("v2", 20),
    tag("build-1", 10, pulled_days_ago=2),
    tag("build-2", 5),
    tag("build-3", 1),
]


def kept(policy: RetentionPolicy, rules: list[ImmutableRule] | None = None) -> list[str]:
    decisions = decide_tags("ci/app", policy, TAGS, rules or [], NOW)
    assert [d.tag for d in decisions] == sorted(t.name for t in TAGS)
    return [d.tag for d in decisions if d.keep]


def test_keep_last_keeps_the_most_recently_pushed() -> None:
    assert kept(RetentionPolicy("ci/*", keep_last=2)) == ["build-2", "build-3"]
    assert kept(RetentionPolicy("ci/*", keep_last=0)) == []
    assert len(kept(RetentionPolicy("ci/*", keep_last=100))) == len(TAGS)


def test_rules_combine_any_keeps() -> None:
    policy = RetentionPolicy(
        "ci/*", keep_last=1, keep_tags=("latest", "v*"), keep_pulled_within=3 * DAY
    )
    assert kept(policy) == ["build-1", "build-3", "latest", "v1", "v2"]
    assert kept(RetentionPolicy("ci/*", keep_pushed_within=7 * DAY)) == ["build-2", "build-3"]
    assert kept(RetentionPolicy("ci/*", keep_pulled_within=1 * DAY)) == []


def test_a_policy_without_keep_rules_keeps_every_tag() -> None:
    assert len(kept(RetentionPolicy("ci/*", untagged_after=DAY))) == len(TAGS)


def test_immutable_tags_are_always_kept_with_their_rule_as_reason() -> None:
    rule = ImmutableRule(4, "ci/*", ("v*",))
    decisions = decide_tags("ci/app", RetentionPolicy("ci/*", keep_last=0), TAGS, [rule], NOW)
    reasons = {d.tag: (d.keep, d.reason) for d in decisions}
    assert reasons["v1"] == (True, "immutable (rule 4: repositories 'ci/*', tags 'v*')")
    assert reasons["latest"][0] is False and "ci/*" in reasons["latest"][1]
    other_repository = ImmutableRule(5, "prod/*", ("*",))
    assert kept(RetentionPolicy("ci/*", keep_last=0), [other_repository]) == []
