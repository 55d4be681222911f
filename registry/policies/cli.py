"""Policy commands: `registry retention|immutable|quota ...`, `registry usage`, `registry pulls`.

Like the account commands they work on the metadata database directly (same `--config` and
`--data` as `serve`), and changes are written to the audit log as made by `cli:<OS user>`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from registry.auth.cli import _audited, _emit, _flags

if TYPE_CHECKING:
    from registry.metadata.identity import IdentityStore
    from registry.policies.service import Policies

Action = Callable[["Policies", "IdentityStore", argparse.Namespace], Awaitable[int]]


def _run(action: Action) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from registry.config import ConfigError, load_config
        from registry.metadata.db import Database, run_on_database
        from registry.metadata.identity import IdentityStore
        from registry.metadata.policystore import PolicyConflict, PolicyNotFound, PolicyStore
        from registry.policies.rules import RuleError
        from registry.policies.service import Policies

        config = load_config(args.config, overrides={"data_dir": args.data})

        async def body(db: Database) -> int:
            policies = Policies(PolicyStore(db), config.policies)
            return await action(policies, IdentityStore(db), args)

        try:
            return run_on_database(config.database_url, config.database.auto_migrate, body)
        except (RuleError, PolicyNotFound, PolicyConflict, ConfigError) as exc:
            print(f"registry: {exc}", file=sys.stderr)
            return 1

    return command


# Retention ---------------------------------------------------------------------------------


async def retention_set(
    policies: Policies, identity: IdentityStore, args: argparse.Namespace
) -> int:
    from registry.metadata.identity import now
    from registry.policies import management

    fields: dict[str, Any] = {"pattern": args.pattern}
    for name in management.RETENTION_FIELDS:
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    policy = management.retention_policy(fields)
    await policies.store.set_retention(management.to_row(policy, now()))
    await _audited(identity, "retention.set", policy.pattern)
    print(f"retention policy for {policy.pattern} set")
    return 0


async def retention_remove(
    policies: Policies, identity: IdentityStore, args: argparse.Namespace
) -> int:
    await policies.store.delete_retention(args.pattern)
    await _audited(identity, "retention.remove", args.pattern)
    print(f"retention policy for {args.pattern} removed")
    return 0


async def retention_list(
    policies: Policies, identity: IdentityStore, args: argparse.Namespace
) -> int:
    from registry.policies.management import RETENTION_FIELDS, retention_json

    rows = [retention_json(p) for p in await policies.retention_policies()]
    _emit(args, rows, ["pattern", *RETENTION_FIELDS, "source"])
    return 0


async def retention_run(
    policies: Policies, identity: IdentityStore, args: argparse.Namespace
) -> int:
    from registry.metadata.retentionstore import RetentionStore
    from registry.policies.runner import Retention

    report = await Retention(policies, RetentionStore(policies.store.db)).run(args.dry_run)
    if not args.dry_run:
        await _audited(identity, "retention.run", f"{report.tags_removed} tags")
    if args.json:
        print(json.dumps(report.figures(), indent=2))
        return 0
    _emit(args, report.removed, ["repository", "tag", "digest", "reason"])
    _emit(args, report.deleted, ["repository", "digest", "reason"])
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{report.repositories} repositories under a policy: {verb} {report.tags_removed} of "
        f"{report.tags_examined} tags and {report.manifests_deleted} manifests"
    )
    return 0


# Immutable tags ----------------------------------------------------------------------------


async def immutable_add(
    policies: Policies, identity: IdentityStore, args: argparse.Namespace
) -> int:
    from registry.policies.management import immutable_rule

    rule = immutable_rule({"pattern": args.pattern, "tags": args.tags})
    rule_id = await policies.store.add_immutable(rule.pattern, ",".join(rule.tags))
    await _audited(identity, "immutable.add", f"{rule.pattern} {','.join(rule.tags)}")
    print(f"rule {rule_id}: tags {','.join(rule.tags)} of {rule.pattern} are immutable")
    return 0


async def immutable_remove(
    policies: Policies, identity: IdentityStore, args: argparse.Namespace
) -> int:
    await policies.store.delete_immutable(args.id)
    await _audited(identity, "immutable.remove", str(args.id))
    print(f"immutable tag rule {args.id} removed")
    return 0


async def immutable_list(
    policies: Policies, identity: IdentityStore, args: argparse.Namespace
) -> int:
    from registry.policies.management import immutable_json

    rows = [immutable_json(r) for r in await policies.immutable_rules()]
    _emit(args, rows, ["id", "pattern", "tags", "source"])
    return 0


# Quotas, usage, tags -----------------------------------------------------------------------


async def quota_set(policies: Policies, identity: IdentityStore, args: argparse.Namespace) -> int:
    from registry.policies.management import checked_namespace
    from registry.policies.rules import format_size, parse_size

    namespace, limit = checked_namespace(args.namespace), parse_size(args.limit)
    await policies.store.set_quota(namespace, limit)
    await _audited(identity, "quota.set", f"{namespace} {limit}")
    print(f"namespace {namespace} may store {format_size(limit)} ({limit} bytes)")
    return 0


async def quota_remove(
    policies: Policies, identity: IdentityStore, args: argparse.Namespace
) -> int:
    await policies.store.delete_quota(args.namespace)
    await _audited(identity, "quota.remove", args.namespace)
    print(f"quota of namespace {args.namespace} removed")
    return 0


async def quota_list(policies: Policies, identity: IdentityStore, args: argparse.Namespace) -> int:
    from registry.policies.rules import format_size

    quotas = await policies.store.quotas()
    rows: list[dict[str, Any]] = [
        {"namespace": ns, "limit": limit, "size": format_size(limit)}
        for ns, limit in sorted(quotas.items())
    ]
    if policies.default_quota is not None:
        limit = policies.default_quota
        rows.append({"namespace": "(default)", "limit": limit, "size": format_size(limit)})
    _emit(args, rows, ["namespace", "size", "limit"])
    return 0


async def usage(policies: Policies, identity: IdentityStore, args: argparse.Namespace) -> int:
    from registry.policies.management import checked_namespace
    from registry.policies.usage import usage_rows

    only = checked_namespace(args.namespace) if args.namespace else None
    rows = await usage_rows(policies, only)
    if args.check:
        return await _check_usage(policies, rows)
    if args.json:
        _emit(args, rows, [])
        return 0
    table = [
        {
            "namespace": r["namespace"],
            "used": r["used_human"],
            "quota": r["limit_human"],
            "percent": f"{r['percent']}%" if r["percent"] is not None else None,
            "bytes": r["used"],
        }
        for r in rows
    ]
    _emit(args, table, ["namespace", "used", "quota", "percent", "bytes"])
    return 0


async def _check_usage(policies: Policies, rows: list[dict[str, Any]]) -> int:
    """Sum each namespace's usage from its manifests and compare with the kept figure."""
    wrong = 0
    for row in rows:
        measured = await policies.store.measured_usage(row["namespace"])
        if measured != row["used"]:
            wrong += 1
            print(f"{row['namespace']}: kept {row['used']} bytes, measured {measured}")
    print(f"{len(rows)} namespace(s) checked, {wrong} wrong")
    return 1 if wrong else 0


async def tags(policies: Policies, identity: IdentityStore, args: argparse.Namespace) -> int:
    from registry.policies.usage import tag_rows

    rows = await tag_rows(policies.store, args.repository)
    if rows is None:
        print(f"registry: no repository {args.repository}", file=sys.stderr)
        return 1
    _emit(args, rows, ["tag", "digest", "pushed_at", "last_pulled_at", "pull_count"])
    return 0


# The parser --------------------------------------------------------------------------------


def _leaf(group: Any, name: str, action: Action, help: str, json_output: bool = False) -> Any:
    parser = group.add_parser(name, help=help, description=help)
    _flags(parser, json_output)
    parser.set_defaults(func=_run(action))
    return parser


def add_commands(commands: Any) -> None:
    retention = commands.add_parser(
        "retention", help="retention policies per repository pattern"
    ).add_subparsers(dest="retention_command", required=True)
    p = _leaf(retention, "set", retention_set, "set the retention policy of a repository pattern")
    p.add_argument("pattern", help="repository pattern: team-a/*, team-a/app, *")
    p.add_argument("--keep-last", dest="keep_last", type=int, help="keep the N newest tags")
    p.add_argument(
        "--keep-tags", dest="keep_tags", help="keep tags matching these globs: latest,v*"
    )
    p.add_argument("--keep-pulled-within", dest="keep_pulled_within", help="e.g. 30d")
    p.add_argument("--keep-pushed-within", dest="keep_pushed_within", help="e.g. 14d")
    p.add_argument("--untagged-after", dest="untagged_after", help="delete untagged after, e.g. 7d")
    p = _leaf(retention, "remove", retention_remove, "remove a repository pattern's policy")
    p.add_argument("pattern")
    _leaf(retention, "list", retention_list, "list retention policies", json_output=True)
    p = _leaf(retention, "run", retention_run, "apply the retention policies now", True)
    p.add_argument("--dry-run", action="store_true", help="only list what would go, and why")

    immutable = commands.add_parser(
        "immutable", help="immutable tags per repository pattern"
    ).add_subparsers(dest="immutable_command", required=True)
    p = _leaf(immutable, "add", immutable_add, "make tags immutable: pushed once, never moved")
    p.add_argument("pattern", help="repository pattern: prod/*, *")
    p.add_argument("tags", help="tag globs, comma-separated: v*,latest")
    p = _leaf(immutable, "remove", immutable_remove, "remove an immutable tag rule by its id")
    p.add_argument("id", type=int)
    _leaf(immutable, "list", immutable_list, "list immutable tag rules", json_output=True)

    quota = commands.add_parser("quota", help="storage quotas per namespace").add_subparsers(
        dest="quota_command", required=True
    )
    p = _leaf(quota, "set", quota_set, "set a namespace's storage quota")
    p.add_argument("namespace", help="a repository name's first component")
    p.add_argument("limit", help="10GiB, 500MB, or bytes")
    p = _leaf(quota, "remove", quota_remove, "remove a namespace's quota")
    p.add_argument("namespace")
    _leaf(quota, "list", quota_list, "list quotas", json_output=True)

    p = _leaf(commands, "usage", usage, "storage used per namespace (deduplicated)", True)
    p.add_argument("namespace", nargs="?")
    p.add_argument(
        "--check", action="store_true", help="also sum usage from the manifests and compare"
    )
    p = _leaf(commands, "pulls", tags, "a repository's tags: last pull time, pull count", True)
    p.add_argument("repository")
