"""The policies as the API applies them: the rules of the database over the config's, and
the checks of pushes and deletes (immutable tags, quotas), each refusal a DENIED (403) that
says which rule or how much is used and allowed.

A manifest push is checked inside the transaction that stores it (`push_check`), so that
two racing pushes cannot both pass: an immutable tag is created with INSERT ... ON CONFLICT
DO NOTHING and otherwise read under a row lock, and pushes into one namespace with a quota
take turns (an advisory lock on PostgreSQL; SQLite runs one write transaction at a time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from registry.config import ConfigError, PoliciesConfig
from registry.errors import Denied
from registry.metadata.db import SQLConnection
from registry.metadata.policystore import PolicyStore
from registry.metadata.store import PushCheck
from registry.policies.management import (
    from_immutable_row,
    from_row,
    immutable_rule,
    retention_policy,
)
from registry.policies.rules import (
    ImmutableRule,
    RetentionPolicy,
    RuleError,
    format_size,
    namespace_of,
    parse_size,
    protecting_rule,
)


def configured_rules(
    settings: PoliciesConfig,
) -> tuple[list[RetentionPolicy], list[ImmutableRule], int | None]:
    """The config's retention policies, immutable rules and default quota, checked
    (ConfigError naming the entry otherwise)."""
    try:
        retention = []
        for index, entry in enumerate(settings.retention):
            where = f"policies.retention[{index}]"
            if not isinstance(entry, dict):
                raise RuleError(f"{where} must be a mapping")
            try:
                retention.append(retention_policy(entry, source="config"))
            except RuleError as exc:
                raise RuleError(f"{where}: {exc}") from None
        immutable = []
        for index, entry in enumerate(settings.immutable_tags):
            if not isinstance(entry, dict):
                raise RuleError(f"policies.immutable_tags[{index}] must be a mapping")
            try:
                immutable.append(immutable_rule(entry))
            except RuleError as exc:
                raise RuleError(f"policies.immutable_tags[{index}]: {exc}") from None
        quota = parse_size(settings.default_quota) if settings.default_quota else None
    except RuleError as exc:
        raise ConfigError(str(exc)) from None
    if settings.pull_stats_flush_seconds < 1:
        raise ConfigError("policies.pull_stats_flush_seconds must be at least 1")
    return retention, immutable, quota


class Policies:
    def __init__(self, store: PolicyStore, settings: PoliciesConfig) -> None:
        self.store = store
        self.settings = settings
        self._retention, self._immutable, self.default_quota = configured_rules(settings)

    async def retention_policies(self) -> list[RetentionPolicy]:
        stored = [from_row(row) for row in await self.store.retention_policies()]
        return [*stored, *self._retention]

    async def immutable_rules(self, conn: SQLConnection | None = None) -> list[ImmutableRule]:
        stored = [from_immutable_row(row) for row in await self.store.immutable_rules(conn)]
        return [*stored, *self._immutable]

    async def quota(self, namespace: str, conn: SQLConnection | None = None) -> int | None:
        own = await self.store.quota(namespace, conn)
        return own if own is not None else self.default_quota

    # Checks -----------------------------------------------------------------------------------

    def push_check(
        self,
        repository: str,
        digest: str,
        size: int,
        blob_digests: Sequence[str],
        tag_names: Sequence[str],
    ) -> PushCheck:
        """What `MetadataStore.put_manifest` runs in its transaction before storing."""

        async def check(conn: SQLConnection, repository_id: int) -> None:
            if tag_names:
                await self._check_immutable(conn, repository, repository_id, digest, tag_names)
            await self._check_quota(conn, repository, digest, size, blob_digests)

        return check

    async def _check_immutable(
        self,
        conn: SQLConnection,
        repository: str,
        repository_id: int,
        digest: str,
        tag_names: Sequence[str],
    ) -> None:
        rules = await self.immutable_rules(conn)
        for tag in tag_names:
            rule = protecting_rule(rules, repository, tag)
            if rule is None:
                continue
            current = await self.store.claim_tag(conn, repository_id, tag, digest)
            if current is not None and current != digest:
                raise Denied(
                    f"tag {tag!r} of {repository} is immutable ({rule.describe()}): it points "
                    f"at {current} and cannot be pushed with other content; push a new tag",
                    detail={
                        "tag": tag,
                        "digest": current,
                        "rule": rule.id,
                        "pattern": rule.pattern,
                    },
                )

    async def _check_quota(
        self,
        conn: SQLConnection,
        repository: str,
        digest: str,
        size: int,
        blob_digests: Sequence[str],
    ) -> None:
        namespace = namespace_of(repository)
        limit = await self.quota(namespace, conn)
        if limit is None:
            return
        added = await self.store.added_bytes(conn, namespace, blob_digests, digest, size)
        if added == 0:
            return  # nothing new to the namespace: a re-push or a new tag
        used = await self.store.usage(namespace, conn)
        if used + added > limit:
            raise self._over_quota(namespace, used, limit, added)

    async def check_upload(self, repository: str) -> None:
        """A blob upload (or mount) into a namespace at or over its quota is refused."""
        namespace = namespace_of(repository)
        limit = await self.quota(namespace)
        if limit is None:
            return
        used = await self.store.usage(namespace)
        if used >= limit:
            raise self._over_quota(namespace, used, limit, None)

    @staticmethod
    def _over_quota(namespace: str, used: int, limit: int, added: int | None) -> Denied:
        needs = f"; this push needs {format_size(added)} more" if added is not None else ""
        return Denied(
            f"storage quota of namespace {namespace!r} exceeded: {format_size(used)} used of "
            f"{format_size(limit)} allowed{needs}",
            detail={"namespace": namespace, "used": used, "limit": limit, "needed": added},
        )

    async def check_delete_tag(self, repository: str, tag: str) -> None:
        rule = protecting_rule(await self.immutable_rules(), repository, tag)
        if rule is not None:
            raise Denied(
                f"tag {tag!r} of {repository} is immutable ({rule.describe()}) and cannot be "
                "deleted",
                detail={"tag": tag, "rule": rule.id, "pattern": rule.pattern},
            )

    async def manifest_delete_guard(
        self, repository: str, digest: str
    ) -> Callable[[list[str]], None] | None:
        """Deleting a manifest deletes its tags: a check of those tags (raising Denied when
        one is immutable) for the delete to run inside its transaction, once the manifest's
        row is locked, so that a tag pushed meanwhile cannot slip by; None without rules."""
        rules = await self.immutable_rules()
        if not rules:
            return None

        def guard(tags_at_digest: list[str]) -> None:
            for tag in tags_at_digest:
                rule = protecting_rule(rules, repository, tag)
                if rule is not None:
                    raise Denied(
                        f"manifest {digest} of {repository} carries the immutable tag {tag!r} "
                        f"({rule.describe()}) and cannot be deleted",
                        detail={"tag": tag, "rule": rule.id, "pattern": rule.pattern},
                    )

        return guard
