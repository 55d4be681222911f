"""Docker's rules for argv, env and users, as pure functions."""

from __future__ import annotations

import pytest

from registry.runtime.errors import StartFailure
from registry.runtime.spec import (
    DEFAULT_PATH,
    build_argv,
    build_env,
    build_spec,
    cli_env,
    read_env_file,
    resolve_user,
)

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nwheel:x:10:root,app\napp:x:1000:\nstaff:x:50:app\n"


def test_entrypoint_and_cmd() -> None:
    config = {"Entrypoint": ["/bin/tool"], "Cmd": ["--help"]}
    assert build_argv(config, [], None) == ["/bin/tool", "--help"]
    assert build_argv(config, ["run"], None) == ["/bin/tool", "run"]
    assert build_argv(config, [], "/bin/sh") == ["/bin/sh"]  # the image's Cmd is dropped
    assert build_argv(config, ["-c", "x"], "/bin/sh") == ["/bin/sh", "-c", "x"]
    with pytest.raises(StartFailure, match="no command"):
        build_argv({}, [], None)


def test_env_order_and_precedence() -> None:
    env = build_env(["A=image", "B=image", "PATH=/image/bin"], ["B=user", "C=user"], "h1")
    assert env == ["PATH=/image/bin", "HOSTNAME=h1", "B=user", "C=user", "A=image"]
    assert build_env([], [], "h")[0] == f"PATH={DEFAULT_PATH}"
    assert build_env(["A=1"], ["A"], "h") == [f"PATH={DEFAULT_PATH}", "HOSTNAME=h"]
    assert build_env([], ["X=1", "X=2"], "h")[-1] == "X=2"


def test_env_file_lines_are_literal() -> None:
    text = '# comment\n\nQUOTED="kept as is"\n  SPACED=a b \nFROM_HOST\nMISSING\nEMPTY=\n'
    assert read_env_file(text, {"FROM_HOST": "h"}) == [
        'QUOTED="kept as is"',
        "SPACED=a b ",
        "FROM_HOST=h",
        "MISSING",
        "EMPTY=",
    ]
    assert cli_env(["A=1", "HOSTVAR", "NOPE"], {"HOSTVAR": "v"}) == ["A=1", "HOSTVAR=v", "NOPE"]


@pytest.mark.parametrize(
    ("spec", "uid", "gid", "groups", "home"),
    [
        ("", 0, 0, (10,), "/root"),
        ("app", 1000, 1000, (10, 50), "/home/app"),
        ("1000", 1000, 1000, (10, 50), "/home/app"),
        ("app:staff", 1000, 50, (), "/home/app"),
        ("1000:7", 1000, 7, (), "/home/app"),
        ("4242", 4242, 0, (), "/"),
        ("4242:4242", 4242, 4242, (), "/"),
    ],
)
def test_users(spec: str, uid: int, gid: int, groups: tuple[int, ...], home: str) -> None:
    user = resolve_user(spec, PASSWD, GROUP)
    assert (user.uid, user.gid, user.groups, user.home) == (uid, gid, groups, home)


def test_unknown_names_are_refused() -> None:
    with pytest.raises(StartFailure, match="unable to find user nobody"):
        resolve_user("nobody", PASSWD, GROUP)
    with pytest.raises(StartFailure, match="unable to find group nogroup"):
        resolve_user("app:nogroup", PASSWD, GROUP)
    assert resolve_user("", None, None).home == "/"


def test_relative_workdir_is_refused() -> None:
    with pytest.raises(StartFailure, match="absolute path"):
        build_spec(
            {"Cmd": ["x"]}, [], entrypoint=None, user_env=[], user=None, workdir="rel", hostname="h"
        )
