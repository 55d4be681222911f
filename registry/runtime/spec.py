"""What a container runs, from image config plus flags, following Docker's rules. Pure.

- argv: `--entrypoint` replaces Entrypoint and drops the image's Cmd; arguments replace Cmd.
- env: `PATH` (Docker's default unless set) and `HOSTNAME` first, then the user's
  variables (`--env-file` lines, then `-e`), then the image's not overridden; a name
  without `=` and no host value removes it. `HOME` is added last, from /etc/passwd.
- user: `uid`, `uid:gid`, `name`, `name:group`, resolved against the image's passwd and
  group files as runc does, with supplementary groups from group memberships.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from registry.runtime.errors import RuntimeFailure, StartFailure

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class ProcessSpec:
    argv: list[str]
    env: list[str]
    user: str = ""
    workdir: str = "/"
    hostname: str = ""


@dataclass(frozen=True)
class ExecUser:
    uid: int
    gid: int
    groups: tuple[int, ...] = field(default_factory=tuple)
    home: str = "/"


def read_env_file(text: str, host_env: Mapping[str, str]) -> list[str]:
    """Docker's `--env-file`: `NAME=value` taken literally, `#` comments, bare `NAME`."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not name or any(c.isspace() for c in name):
            raise RuntimeFailure(f"env file line {number}: variable {name!r} is not valid")
        if sep:
            out.append(f"{name}={value}")
        elif name in host_env:
            out.append(f"{name}={host_env[name]}")
        else:
            out.append(name)
    return out


def cli_env(values: Sequence[str], host_env: Mapping[str, str]) -> list[str]:
    """`-e NAME=value` as given; `-e NAME` takes the host's value if it has one."""
    out = []
    for value in values:
        if "=" in value or value not in host_env:
            out.append(value)
        else:
            out.append(f"{value}={host_env[value]}")
    return out


def _key(entry: str) -> str:
    return entry.split("=", 1)[0]


def replace_or_append(env: list[str], overrides: Sequence[str]) -> list[str]:
    out = list(env)
    for entry in overrides:
        key = _key(entry)
        positions = [i for i, e in enumerate(out) if _key(e) == key]
        if "=" not in entry:
            out = [e for e in out if _key(e) != key]
        elif positions:
            out[positions[0]] = entry
        else:
            out.append(entry)
    return out


def build_env(image_env: Sequence[str], user_env: Sequence[str], hostname: str) -> list[str]:
    user_keys = {_key(e) for e in user_env}
    merged = list(user_env) + [e for e in image_env if _key(e) not in user_keys]
    return replace_or_append([f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"], merged)


def build_argv(config: Mapping[str, Any], args: Sequence[str], entrypoint: str | None) -> list[str]:
    if entrypoint is not None:
        head = [entrypoint] if entrypoint else []
        tail = list(args)
    else:
        head = list(config.get("Entrypoint") or [])
        tail = list(args) if args else list(config.get("Cmd") or [])
    argv = head + tail
    if not argv:
        raise StartFailure("no command specified", 125)
    return argv


def build_spec(
    config: Mapping[str, Any],
    args: Sequence[str],
    *,
    entrypoint: str | None,
    user_env: Sequence[str],
    user: str | None,
    workdir: str | None,
    hostname: str,
) -> ProcessSpec:
    """The process to run, from the image's `config` object and the run flags."""
    wd = workdir if workdir else str(config.get("WorkingDir") or "/")
    if not wd.startswith("/"):
        raise StartFailure(
            f"the working directory '{wd}' is invalid, it needs to be an absolute path", 125
        )
    return ProcessSpec(
        argv=build_argv(config, args, entrypoint),
        env=build_env(list(config.get("Env") or []), user_env, hostname),
        user=user if user is not None else str(config.get("User") or ""),
        workdir=wd,
        hostname=hostname,
    )


def _records(text: str | None, fields: int) -> list[list[str]]:
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) >= fields:
            out.append(parts)
    return out


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def resolve_user(spec: str, passwd: str | None, group: str | None) -> ExecUser:
    """runc's GetExecUser: raises StartFailure for a name that is in neither file."""
    user_arg, _, group_arg = spec.partition(":")
    uid_arg, gid_arg = _int(user_arg), _int(group_arg)
    uid, gid, home = 0, 0, "/"
    sgids: tuple[int, ...] = ()
    users = []
    for rec in _records(passwd, 7):
        rec_uid = _int(rec[2])
        if rec_uid is None:
            continue
        if (
            (user_arg == "" and rec_uid == 0)
            or (uid_arg is not None and uid_arg == rec_uid)
            or (uid_arg is None and rec[0] == user_arg)
        ):
            users.append(rec)
    matched = ""
    if users:
        matched = users[0][0]
        uid, gid, home = int(users[0][2]), _int(users[0][3]) or 0, users[0][5]
    elif user_arg:
        if uid_arg is None:
            raise StartFailure(
                f"unable to find user {user_arg}: no matching entries in passwd file", 125
            )
        uid = uid_arg
    if group_arg or matched:
        groups = []
        for rec in _records(group, 4):
            rec_gid = _int(rec[2])
            if rec_gid is None:
                continue
            if not group_arg:
                if matched in rec[3].split(","):
                    groups.append(rec_gid)
            elif (gid_arg is not None and gid_arg == rec_gid) or (
                gid_arg is None and rec[0] == group_arg
            ):
                groups.append(rec_gid)
        if group_arg:
            if groups:
                gid = groups[0]
            elif gid_arg is None:
                raise StartFailure(
                    f"unable to find group {group_arg}: no matching entries in group file", 125
                )
            else:
                gid = gid_arg
        else:
            sgids = tuple(groups)
    return ExecUser(uid, gid, sgids, home)


def with_home(env: list[str], home: str) -> list[str]:
    if any(e.startswith("HOME=") for e in env):
        return env
    return [*env, f"HOME={home}"]
