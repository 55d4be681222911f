"""Account commands: `registry user|team|grant|revoke|grants|public|token|audit ...`.

They work on the metadata database directly (same `--config`/`--data` as `serve`), so an
operator can make the first admin before the server runs. Passwords are read from the
terminal (asked twice) or from the first line of stdin, never from the command line.
Token secrets are printed once and cannot be shown again.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The SQL and hashing modules load only when an account command runs, not for every
# `registry` invocation that builds the parser.
if TYPE_CHECKING:
    from registry.metadata.identity import IdentityStore

Action = Callable[["IdentityStore", argparse.Namespace], Awaitable[int]]
DEFAULT_TOKEN_LIFETIME = "90d"


class CommandError(Exception):
    """A message for stderr and exit code 1."""


def _run(action: Action) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from registry.auth.management import ManagementError
        from registry.config import load_config
        from registry.metadata.db import Database, run_on_database
        from registry.metadata.identity import IdentityConflict, IdentityNotFound, IdentityStore

        config = load_config(args.config, overrides={"data_dir": args.data})

        async def body(db: Database) -> int:
            return await action(IdentityStore(db), args)

        try:
            return run_on_database(config.database_url, config.database.auto_migrate, body)
        except (CommandError, ManagementError, IdentityConflict, IdentityNotFound) as exc:
            print(f"registry: {exc}", file=sys.stderr)
            return 1

    return command


async def _audited(identity: IdentityStore, op: str, target: str) -> None:
    """Changes made here are logged as made by `cli:<OS user>`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    await identity.audit(f"cli:{user}", "", "admin", target, {"op": op})


def _password(args: argparse.Namespace) -> str:
    if not args.password_stdin and sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password (again): ") != first:
            raise CommandError("the passwords differ")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def _emit(args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d %H:%M:%S"))
    return str(value)


def _subject(args: argparse.Namespace) -> tuple[str, str]:
    if bool(args.user) == bool(args.team):
        raise CommandError("give exactly one of --user or --team")
    return ("user", args.user) if args.user else ("team", args.team)


# Users -----------------------------------------------------------------------------------


async def user_add(identity: IdentityStore, args: argparse.Namespace) -> int:
    from registry.auth import management

    management.check_name("user", args.name)
    await management.add_user(identity, args.name, _password(args), args.admin)
    await _audited(identity, "user.add", args.name)
    print(f"added user {args.name}{' (admin)' if args.admin else ''}")
    return 0


async def user_list(identity: IdentityStore, args: argparse.Namespace) -> int:
    rows = []
    for user in await identity.list_users():
        teams = await identity.teams_of(user.id)
        rows.append(
            {"name": user.name, "admin": user.admin, "teams": teams, "created": user.created_at}
        )
    _emit(args, rows, ["name", "admin", "teams", "created"])
    return 0


async def user_passwd(identity: IdentityStore, args: argparse.Namespace) -> int:
    from registry.auth import management

    if await identity.get_user(args.name) is None:
        raise CommandError(f"no user {args.name}")
    await management.change_password(identity, args.name, _password(args))
    await _audited(identity, "user.passwd", args.name)
    print(f"password of {args.name} changed; their identity tokens were revoked")
    return 0


async def user_remove(identity: IdentityStore, args: argparse.Namespace) -> int:
    await identity.delete_user(args.name)
    await _audited(identity, "user.remove", args.name)
    print(f"removed user {args.name} with their grants and tokens")
    return 0


async def user_admin(identity: IdentityStore, args: argparse.Namespace) -> int:
    await identity.set_admin(args.name, args.state == "on")
    await _audited(identity, "user.admin", args.name)
    print(f"{args.name} is {'now' if args.state == 'on' else 'no longer'} an admin")
    return 0


async def user_import(identity: IdentityStore, args: argparse.Namespace) -> int:
    from registry.auth import management

    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}") from None
    report = await management.import_htpasswd(identity, text, args.update)
    for name in report.added:
        print(f"added {name}")
    for name in report.updated:
        print(f"updated {name}")
    for why in report.skipped:
        print(f"skipped {why}", file=sys.stderr)
    await _audited(identity, "user.import-htpasswd", ",".join(report.added + report.updated))
    counts = (len(report.added), len(report.updated), len(report.skipped))
    print("{} added, {} updated, {} skipped".format(*counts))
    return 0


# Teams -----------------------------------------------------------------------------------


async def team_add(identity: IdentityStore, args: argparse.Namespace) -> int:
    from registry.auth import management

    await identity.create_team(management.check_name("team", args.name))
    await _audited(identity, "team.add", args.name)
    print(f"added team {args.name}")
    return 0


async def team_list(identity: IdentityStore, args: argparse.Namespace) -> int:
    rows = [{"name": t.name, "members": t.members} for t in await identity.list_teams()]
    _emit(args, rows, ["name", "members"])
    return 0


async def team_remove(identity: IdentityStore, args: argparse.Namespace) -> int:
    await identity.delete_team(args.name)
    await _audited(identity, "team.remove", args.name)
    print(f"removed team {args.name} and its grants")
    return 0


async def team_add_member(identity: IdentityStore, args: argparse.Namespace) -> int:
    for user in args.users:
        await identity.add_member(args.team, user)
    await _audited(identity, "team.add-member", f"{args.team}/{','.join(args.users)}")
    print(f"{', '.join(args.users)} in team {args.team}")
    return 0


async def team_remove_member(identity: IdentityStore, args: argparse.Namespace) -> int:
    for user in args.users:
        await identity.remove_member(args.team, user)
    await _audited(identity, "team.remove-member", f"{args.team}/{','.join(args.users)}")
    print(f"{', '.join(args.users)} no longer in team {args.team}")
    return 0


# Grants and public patterns --------------------------------------------------------------


async def grant(identity: IdentityStore, args: argparse.Namespace) -> int:
    from registry.auth import management

    kind, name = _subject(args)
    result = await management.grant(identity, kind, name, args.pattern, args.actions)
    await _audited(identity, "grant", f"{kind}:{name} {args.pattern} {result}")
    print(f"{kind} {name} may {result} on {args.pattern}")
    return 0


async def revoke(identity: IdentityStore, args: argparse.Namespace) -> int:
    from registry.auth import management

    kind, name = _subject(args)
    left = await management.revoke(identity, kind, name, args.pattern, args.actions)
    await _audited(identity, "revoke", f"{kind}:{name} {args.pattern} {left or ''}")
    print(f"{kind} {name} may {left or 'no longer do anything'} on {args.pattern}")
    return 0


async def grants(identity: IdentityStore, args: argparse.Namespace) -> int:
    rows = [
        {"subject": f"{g.kind}:{g.subject}", "pattern": g.pattern, "actions": g.actions}
        for g in await identity.list_grants()
    ]
    _emit(args, rows, ["subject", "pattern", "actions"])
    return 0


async def public(identity: IdentityStore, args: argparse.Namespace) -> int:
    from registry.auth import management

    if args.op == "list":
        _emit(args, [{"pattern": p} for p in await identity.public_patterns()], ["pattern"])
        return 0
    if not args.pattern:
        raise CommandError(f"public {args.op} needs a pattern")
    if args.op == "add":
        await identity.add_public(management.checked_pattern(args.pattern))
        await _audited(identity, "public.add", args.pattern)
        print(f"anyone may now pull {args.pattern}")
    else:
        await identity.remove_public(args.pattern)
        await _audited(identity, "public.remove", args.pattern)
        print(f"{args.pattern} is no longer public")
    return 0


# Robot tokens ----------------------------------------------------------------------------


async def token_create(identity: IdentityStore, args: argparse.Namespace) -> int:
    from registry.auth import management

    if args.owner and await identity.get_user(args.owner) is None:
        raise CommandError(f"no user {args.owner}")
    token = await management.create_token(
        identity, args.name, args.scope or [], args.expires, args.owner, args.admin
    )
    await _audited(identity, "token.create", token.name)
    until = token.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC") if token.expires_at else "never"
    print(f"token {token.name} (expires: {until}); shown only now:", file=sys.stderr)
    print(token.secret)
    # Single quotes: a shell would expand the `$` of robot$... in double quotes or none.
    print(f"use it as: docker login -u '{token.name}' --password-stdin", file=sys.stderr)
    return 0


async def token_list(identity: IdentityStore, args: argparse.Namespace) -> int:
    rows = [
        {
            "name": r.name,
            "owner": r.owner,
            "scopes": [f"{p}:{a}" for p, a in r.scopes],
            "admin": r.admin,
            "expires": r.expires_at,
            "last_used": r.last_used_at,
            "old_name": r.legacy_name,  # still accepted at login (robots from before robot$)
        }
        for r in await identity.list_robots(args.owner)
    ]
    _emit(args, rows, ["name", "owner", "scopes", "admin", "expires", "last_used"])
    return 0


async def token_revoke(identity: IdentityStore, args: argparse.Namespace) -> int:
    await identity.delete_robot(args.name)
    await _audited(identity, "token.revoke", args.name)
    print(f"revoked token {args.name}")
    return 0


# Audit -----------------------------------------------------------------------------------


async def audit(identity: IdentityStore, args: argparse.Namespace) -> int:
    entries = await identity.audit_entries(args.limit, args.actor, args.action)
    rows = [
        {
            "at": e.at,
            "actor": e.actor or "(anonymous)",
            "address": e.address,
            "action": e.action,
            "target": e.target,
            "detail": json.dumps(e.detail) if e.detail and not args.json else e.detail or None,
        }
        for e in entries
    ]
    _emit(args, rows, ["at", "actor", "address", "action", "target", "detail"])
    return 0


# The parser ------------------------------------------------------------------------------


def _flags(parser: argparse.ArgumentParser, json_output: bool = False) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML settings file")
    parser.add_argument("--data", metavar="DIR", help="data folder (holds the SQLite database)")
    if json_output:
        parser.add_argument("--json", action="store_true", help="print JSON")


def _leaf(
    group: Any, name: str, action: Action, help: str, json_output: bool = False
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help, description=help)
    _flags(parser, json_output)
    parser.set_defaults(func=_run(action))
    return parser


def _password_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )


def _subject_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", help="the user to grant to")
    parser.add_argument("--team", help="the team to grant to")


def add_commands(commands: Any) -> None:
    """Add the account commands to the `registry` CLI's subparsers."""
    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="user_command", required=True
    )
    p = _leaf(user, "add", user_add, "add a user (password from the terminal or stdin)")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="may manage accounts and see everything")
    _password_flag(p)
    _leaf(user, "list", user_list, "list users", json_output=True)
    p = _leaf(user, "passwd", user_passwd, "set a user's password")
    p.add_argument("name")
    _password_flag(p)
    p = _leaf(user, "remove", user_remove, "remove a user, their grants and tokens")
    p.add_argument("name")
    p = _leaf(user, "admin", user_admin, "make a user an admin (on) or not (off)")
    p.add_argument("name")
    p.add_argument("state", choices=["on", "off"])
    p = _leaf(user, "import-htpasswd", user_import, "add users from an htpasswd file (bcrypt)")
    p.add_argument("file")
    p.add_argument("--update", action="store_true", help="replace passwords of existing users")

    team = commands.add_parser("team", help="manage teams").add_subparsers(
        dest="team_command", required=True
    )
    p = _leaf(team, "add", team_add, "add a team")
    p.add_argument("name")
    _leaf(team, "list", team_list, "list teams and members", json_output=True)
    p = _leaf(team, "remove", team_remove, "remove a team and its grants")
    p.add_argument("name")
    p = _leaf(team, "add-member", team_add_member, "put users in a team")
    p.add_argument("team")
    p.add_argument("users", nargs="+")
    p = _leaf(team, "remove-member", team_remove_member, "take users out of a team")
    p.add_argument("team")
    p.add_argument("users", nargs="+")

    p = _leaf(commands, "grant", grant, "let a user or team pull, push or delete on a pattern")
    p.add_argument("pattern", help="repository-name pattern: team-a/*, team-a/app, *")
    p.add_argument("actions", help="comma-separated: pull, push (implies pull), delete, or *")
    _subject_flags(p)
    p = _leaf(commands, "revoke", revoke, "take actions (default: all) off a grant")
    p.add_argument("pattern")
    p.add_argument("actions", nargs="?", default=None)
    _subject_flags(p)
    _leaf(commands, "grants", grants, "list grants", json_output=True)
    p = _leaf(commands, "public", public, "repositories anyone may pull, anonymously too")
    p.add_argument("op", choices=["add", "remove", "list"])
    p.add_argument("pattern", nargs="?")
    p.add_argument("--json", action="store_true", help="print JSON")

    token = commands.add_parser("token", help="manage robot (CI) tokens").add_subparsers(
        dest="token_command", required=True
    )
    p = _leaf(token, "create", token_create, "make a token and print its secret once")
    p.add_argument("name", help="short name: the token is robot$<owner>+<name> (robot$<name>)")
    p.add_argument(
        "--scope",
        action="append",
        metavar="PATTERN:ACTIONS",
        help="what it may do, e.g. 'ci/*:pull' (repeatable)",
    )
    p.add_argument("--expires", default=DEFAULT_TOKEN_LIFETIME, help="90d, 12h, never")
    p.add_argument("--owner", help="cap the token by this user's permissions")
    p.add_argument("--admin", action="store_true", help="may use the admin API")
    p = _leaf(token, "list", token_list, "list tokens (never their secrets)", json_output=True)
    p.add_argument("--owner", help="only this user's tokens")
    p = _leaf(token, "revoke", token_revoke, "revoke a token")
    p.add_argument("name", help="its full name, robot$...")

    p = _leaf(commands, "audit", audit, "show the audit log, newest first", json_output=True)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--actor", help="only this account (robot$... for tokens)")
    p.add_argument("--action", help="login, login_failed, push, delete, denied, admin")
