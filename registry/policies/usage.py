"""Usage and tag statistics as rows, shared by `registry usage|tags` and the admin API."""

from __future__ import annotations

from typing import Any

from registry.metadata.policystore import PolicyStore
from registry.policies.rules import format_size
from registry.policies.service import Policies


def _stamp(value: Any) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


async def usage_rows(policies: Policies, only: str | None = None) -> list[dict[str, Any]]:
    """Per namespace (every one with content or a quota, or just `only`): its deduplicated
    bytes, its quota (own or the default) and the share used."""
    quotas = await policies.store.quotas()
    names = [only] if only else sorted({*await policies.store.namespaces(), *quotas})
    rows = []
    for namespace in names:
        used = await policies.store.usage(namespace)
        limit = quotas.get(namespace, policies.default_quota)
        rows.append(
            {
                "namespace": namespace,
                "used": used,
                "limit": limit,
                "used_human": format_size(used),
                "limit_human": format_size(limit) if limit is not None else None,
                "percent": round(100 * used / limit, 1) if limit else None,
            }
        )
    return rows


async def tag_rows(store: PolicyStore, repository: str) -> list[dict[str, Any]] | None:
    stats = await store.tag_stats(repository)
    if stats is None:
        return None
    return [
        {
            "tag": s.name,
            "digest": s.digest,
            "pushed_at": _stamp(s.pushed_at),
            "last_pulled_at": _stamp(s.last_pulled_at),
            "pull_count": s.pull_count,
        }
        for s in stats
    ]
