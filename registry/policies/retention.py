"""Which tags a retention policy keeps: pure, so that a dry run and a real run decide alike.

A tag is kept when any rule keeps it: an immutable rule protects it, it is among the
`keep_last` most recently pushed, it matches `keep_tags`, it was pulled within
`keep_pulled_within` or pushed within `keep_pushed_within`. A policy with no `keep_*` rule
keeps every tag. Each decision carries its reason, for the dry run's listing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from registry.policies.rules import (
    ImmutableRule,
    RetentionPolicy,
    format_duration,
    protecting_rule,
    tags_match,
)


@dataclass(frozen=True, slots=True)
class TagFacts:
    name: str
    digest: str
    pushed_at: datetime  # when the tag last moved (was pushed)
    last_pulled_at: datetime | None


@dataclass(frozen=True, slots=True)
class TagDecision:
    tag: str
    digest: str
    keep: bool
    reason: str


def decide_tags(
    repository: str,
    policy: RetentionPolicy,
    tags: Sequence[TagFacts],
    immutable: Iterable[ImmutableRule],
    now: datetime,
) -> list[TagDecision]:
    """A decision for every tag of `repository`, in tag-name order."""
    rules = list(immutable)
    newest: set[str] = set()
    if policy.keep_last is not None:
        by_age = sorted(tags, key=lambda t: (-t.pushed_at.timestamp(), t.name))
        newest = {t.name for t in by_age[: policy.keep_last]}
    decisions = []
    for tag in sorted(tags, key=lambda t: t.name):
        reason = _kept_because(repository, policy, tag, rules, newest, now)
        decisions.append(
            TagDecision(tag.name, tag.digest, reason is not None, reason or _why_not(policy))
        )
    return decisions


def _kept_because(
    repository: str,
    policy: RetentionPolicy,
    tag: TagFacts,
    immutable: list[ImmutableRule],
    newest: set[str],
    now: datetime,
) -> str | None:
    rule = protecting_rule(immutable, repository, tag.name)
    if rule is not None:
        return f"immutable ({rule.describe()})"
    if not policy.prunes_tags:
        return "the policy has no keep_* rule"
    if tag.name in newest:
        return f"among the {policy.keep_last} most recently pushed"
    if policy.keep_tags and tags_match(policy.keep_tags, tag.name):
        return f"matches keep_tags {','.join(policy.keep_tags)}"
    window = policy.keep_pulled_within
    pulled = tag.last_pulled_at
    if window is not None and pulled is not None and pulled >= now - timedelta(seconds=window):
        return f"pulled within {format_duration(window)}"
    window = policy.keep_pushed_within
    if window is not None and tag.pushed_at >= now - timedelta(seconds=window):
        return f"pushed within {format_duration(window)}"
    return None


def _why_not(policy: RetentionPolicy) -> str:
    return f"no rule of the policy for {policy.pattern!r} keeps it"
