"""A retention run: every repository a policy governs, its tags judged (policies/retention.py)
and those no rule keeps removed; with `untagged_after`, the manifests no tag reaches for
that long deleted. A dry run changes nothing and lists what a run would do, with reasons.

Runs with garbage collection (before the collector's own phases, so that what retention
lets go is freed by the collector's normal path), or alone (`registry retention run`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from registry.metadata.identity import now
from registry.metadata.retentionstore import RepositoryRow, RetentionStore
from registry.policies.retention import decide_tags
from registry.policies.rules import RetentionPolicy, format_duration, governing
from registry.policies.service import Policies

log = logging.getLogger("registry.policies")
PAGE = 200
LISTED = 10_000  # entries a report lists at most (the counts are complete)
MAX_PASSES = 5  # deletions of untagged manifests per repository and run


@dataclass
class RetentionReport:
    dry_run: bool
    repositories: int = 0  # governed by a policy
    tags_examined: int = 0
    tags_kept: int = 0
    tags_removed: int = 0
    manifests_deleted: int = 0
    removed: list[dict[str, str]] = field(default_factory=list)  # repository, tag, digest, reason
    deleted: list[dict[str, str]] = field(default_factory=list)  # repository, digest, reason
    errors: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return asdict(self)


class Retention:
    def __init__(self, policies: Policies, store: RetentionStore) -> None:
        self.policies = policies
        self.store = store

    async def run(self, dry_run: bool = False) -> RetentionReport:
        report = RetentionReport(dry_run)
        policies = await self.policies.retention_policies()
        if not policies:
            return report
        immutable = await self.policies.immutable_rules()
        stamp = now()
        after = ""
        while page := await self.store.repositories(after, PAGE):
            after = page[-1].name
            for repository in page:
                policy = governing(policies, repository.name)
                if policy is None:
                    continue
                report.repositories += 1
                facts = await self.store.tag_facts(repository.id)
                decisions = decide_tags(repository.name, policy, facts, immutable, stamp)
                report.tags_examined += len(decisions)
                report.tags_kept += sum(d.keep for d in decisions)
                doomed = {(d.tag, d.digest): d.reason for d in decisions if not d.keep}
                if doomed and not dry_run:
                    removed = await self.store.remove_tags(repository.id, list(doomed), stamp)
                    doomed = {key: doomed[key] for key in removed}
                report.tags_removed += len(doomed)
                for (tag, digest), reason in doomed.items():
                    if len(report.removed) < LISTED:
                        entry = {"tag": tag, "digest": digest, "reason": reason}
                        report.removed.append({"repository": repository.name, **entry})
                if policy.untagged_after is not None:
                    await self._untagged(report, repository, policy, list(doomed), stamp)
        if (report.tags_removed or report.manifests_deleted) and not dry_run:
            log.info(
                "retention: removed %d tag(s) and deleted %d manifest(s) in %d repositories",
                report.tags_removed, report.manifests_deleted, report.repositories,
            )  # fmt: skip
        return report

    async def _untagged(
        self,
        report: RetentionReport,
        repository: RepositoryRow,
        policy: RetentionPolicy,
        removed: list[tuple[str, str]],
        stamp: datetime,
    ) -> None:
        """Delete the manifests untagged for `untagged_after`. Again while a pass deletes
        something: an index deleted queues its platform manifests, which may go too."""
        assert policy.untagged_after is not None
        cutoff = stamp - timedelta(seconds=policy.untagged_after)
        reason = f"untagged for {format_duration(policy.untagged_after)} and reached by no tag"
        for _pass in range(1 if report.dry_run else MAX_PASSES):
            deleted = await self.store.delete_untagged(
                repository.id, cutoff, report.dry_run, removed, policy.untagged_after == 0
            )
            report.manifests_deleted += len(deleted)
            for digest in deleted[: max(0, LISTED - len(report.deleted))]:
                entry = {"repository": repository.name, "digest": digest, "reason": reason}
                report.deleted.append(entry)
            if not deleted:
                return
