"""Turning what people type (CLI flags, admin API bodies, config entries) into checked rules,
and rules back into plain JSON. Invalid input raises `RuleError`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from registry.auth.permissions import PatternError, validate_pattern
from registry.metadata.policystore import ImmutableRow, RetentionRow
from registry.oci.names import is_repository_name
from registry.policies.rules import (
    ImmutableRule,
    RetentionPolicy,
    RuleError,
    format_duration,
    parse_duration,
    parse_tag_globs,
)

RETENTION_FIELDS = (
    "keep_last",
    "keep_tags",
    "keep_pulled_within",
    "keep_pushed_within",
    "untagged_after",
)
MAX_KEEP_LAST = 1_000_000


def checked_pattern(pattern: Any) -> str:
    if not isinstance(pattern, str):
        raise RuleError("`pattern` must be a repository pattern such as team-a/* or *")
    try:
        return validate_pattern(pattern)
    except PatternError as exc:
        raise RuleError(str(exc)) from None


def checked_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str) or "/" in namespace or not is_repository_name(namespace):
        raise RuleError(f"a namespace is one repository-name component: {str(namespace)[:80]!r}")
    return namespace


def retention_policy(fields: Mapping[str, Any], source: str = "database") -> RetentionPolicy:
    """A policy from {pattern, keep_last, keep_tags, keep_pulled_within, keep_pushed_within,
    untagged_after}; absent or null fields are not set."""
    unknown = set(fields) - {"pattern", *RETENTION_FIELDS}
    if unknown:
        raise RuleError(f"unknown retention field {sorted(unknown)[0]!r}")
    keep_last = fields.get("keep_last")
    if keep_last is not None and (
        isinstance(keep_last, bool)
        or not isinstance(keep_last, int)
        or not 0 <= keep_last <= MAX_KEEP_LAST
    ):
        raise RuleError(f"`keep_last` must be a number from 0 to {MAX_KEEP_LAST}")
    keep_tags = fields.get("keep_tags")
    durations = {
        name: None if fields.get(name) is None else parse_duration(fields[name])
        for name in ("keep_pulled_within", "keep_pushed_within", "untagged_after")
    }
    policy = RetentionPolicy(
        pattern=checked_pattern(fields.get("pattern")),
        keep_last=keep_last,
        keep_tags=parse_tag_globs(keep_tags) if keep_tags not in (None, "", []) else (),
        source=source,
        **durations,
    )
    if not policy.prunes_tags and policy.untagged_after is None:
        raise RuleError("a retention policy needs at least one rule (keep_* or untagged_after)")
    return policy


def immutable_rule(fields: Mapping[str, Any], rule_id: int | None = None) -> ImmutableRule:
    unknown = set(fields) - {"pattern", "tags"}
    if unknown:
        raise RuleError(f"unknown immutable-tag field {sorted(unknown)[0]!r}")
    tags = fields.get("tags")
    if not isinstance(tags, str | list):
        raise RuleError("`tags` must be tag patterns such as 'v*,latest'")
    return ImmutableRule(rule_id, checked_pattern(fields.get("pattern")), parse_tag_globs(tags))


def to_row(policy: RetentionPolicy, stamp: datetime) -> RetentionRow:
    return RetentionRow(
        pattern=policy.pattern,
        keep_last=policy.keep_last,
        keep_tags=",".join(policy.keep_tags) or None,
        keep_pulled_within=policy.keep_pulled_within,
        keep_pushed_within=policy.keep_pushed_within,
        untagged_after=policy.untagged_after,
        updated_at=stamp,
    )


def from_row(row: RetentionRow) -> RetentionPolicy:
    return RetentionPolicy(
        pattern=row.pattern,
        keep_last=row.keep_last,
        keep_tags=tuple(row.keep_tags.split(",")) if row.keep_tags else (),
        keep_pulled_within=row.keep_pulled_within,
        keep_pushed_within=row.keep_pushed_within,
        untagged_after=row.untagged_after,
    )


def from_immutable_row(row: ImmutableRow) -> ImmutableRule:
    return ImmutableRule(row.id, row.pattern, tuple(row.tags.split(",")))


def retention_json(policy: RetentionPolicy) -> dict[str, Any]:
    return {
        "pattern": policy.pattern,
        "keep_last": policy.keep_last,
        "keep_tags": ",".join(policy.keep_tags) or None,
        "keep_pulled_within": format_duration(policy.keep_pulled_within),
        "keep_pushed_within": format_duration(policy.keep_pushed_within),
        "untagged_after": format_duration(policy.untagged_after),
        "source": policy.source,
    }


def immutable_json(rule: ImmutableRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "pattern": rule.pattern,
        "tags": ",".join(rule.tags),
        "source": "database" if rule.id is not None else "config",
    }
