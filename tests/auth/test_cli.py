"""The account commands, run as an operator runs them, against a fresh data folder."""

from __future__ import annotations

import json
from pathlib import Path

import bcrypt
import httpx

from auth.conftest import start_auth_server
from auth.helpers import SERVICE, assert_error, get_token, run_cli


def ok(data: Path, *args: str, input: str | None = None) -> str:
    done = run_cli(data, *args, input=input)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def fails(data: Path, *args: str, input: str | None = None) -> str:
    done = run_cli(data, *args, input=input)
    assert done.returncode == 1, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stderr


def test_users_teams_grants_public(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(data, "user", "add", "alice", "--admin", "--password-stdin", input="alice-password\n")
    ok(data, "user", "add", "bob", "--password-stdin", input="bob-password")
    users = json.loads(ok(data, "user", "list", "--json"))
    assert [(u["name"], u["admin"]) for u in users] == [("alice", True), ("bob", False)]
    assert "alice" in ok(data, "user", "list")
    fails(data, "user", "add", "bob", "--password-stdin", input="another-password")
    fails(data, "user", "add", "Bad/Name", "--password-stdin", input="long-enough")
    fails(data, "user", "add", "carol", "--password-stdin", input="short")
    ok(data, "team", "add", "devs")
    ok(data, "team", "add-member", "devs", "alice", "bob")
    assert json.loads(ok(data, "team", "list", "--json")) == [
        {"name": "devs", "members": ["alice", "bob"]}
    ]
    assert "pull,push" in ok(data, "grant", "devs/*", "push", "--team", "devs")
    assert "pull,push,delete" in ok(data, "grant", "devs/*", "delete", "--team", "devs")
    assert "delete" in ok(data, "revoke", "devs/*", "pull", "--team", "devs")
    ok(data, "grant", "shared/app", "pull", "--user", "bob")
    grants = json.loads(ok(data, "grants", "--json"))
    assert {"subject": "team:devs", "pattern": "devs/*", "actions": "delete"} in grants
    assert {"subject": "user:bob", "pattern": "shared/app", "actions": "pull"} in grants
    ok(data, "revoke", "shared/app", "--user", "bob")
    fails(data, "revoke", "shared/app", "--user", "bob")
    fails(data, "grant", "x/*", "pull", "--user", "bob", "--team", "devs")
    fails(data, "grant", "x/*", "fly", "--user", "bob")
    fails(data, "grant", "x/*", "pull", "--user", "nobody")
    ok(data, "public", "add", "library/*")
    assert json.loads(ok(data, "public", "list", "--json")) == [{"pattern": "library/*"}]
    ok(data, "public", "remove", "library/*")
    fails(data, "public", "remove", "library/*")
    ok(data, "team", "remove-member", "devs", "bob")
    ok(data, "team", "remove", "devs")
    ok(data, "user", "admin", "bob", "on")
    assert json.loads(ok(data, "user", "list", "--json"))[1]["admin"] is True
    ok(data, "user", "remove", "bob")
    fails(data, "user", "remove", "bob")
    fails(data, "user", "passwd", "bob", "--password-stdin", input="whatever-pass")


def test_tokens(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok(data, "user", "add", "alice", "--password-stdin", input="alice-password")
    made = run_cli(
        data, "token", "create", "ci-pull", "--scope", "alice/*:pull", "--owner", "alice"
    )
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("pkr_") and "docker login -u 'robot$alice+ci-pull'" in made.stderr
    listed = ok(data, "token", "list", "--json")
    assert secret not in listed
    [token] = json.loads(listed)
    assert token["name"] == "robot$alice+ci-pull" and token["owner"] == "alice"
    assert token["scopes"] == ["alice/*:pull"] and token["expires"]
    forever = run_cli(data, "token", "create", "ci-all", "--scope", "*:pull", "--expires", "never")
    assert forever.returncode == 0
    tokens = {t["name"]: t for t in json.loads(ok(data, "token", "list", "--json"))}
    assert tokens["robot$ci-all"]["expires"] is None and tokens["robot$ci-all"]["owner"] is None
    fails(data, "token", "create", "ci-pull", "--scope", "x/*:pull", "--owner", "alice")
    ok(data, "token", "create", "ci-pull", "--scope", "x/*:pull")  # robot$ci-pull: another name
    fails(data, "token", "create", "robot$ci-x", "--scope", "x/*:pull")  # names are short
    fails(data, "token", "create", "ci-bad", "--scope", "x/*")
    fails(data, "token", "create", "ci-bad", "--scope", "x/*:pull", "--expires", "tomorrow")
    fails(data, "token", "create", "ci-bad")
    fails(data, "token", "create", "ci-bad", "--scope", "x/*:pull", "--owner", "nobody")
    fails(data, "token", "revoke", "ci-pull")  # revoked by full name only
    ok(data, "token", "revoke", "robot$alice+ci-pull")
    fails(data, "token", "revoke", "robot$alice+ci-pull")
    ok(data, "token", "revoke", "robot$ci-pull")
    assert [t["name"] for t in json.loads(ok(data, "token", "list", "--json"))] == ["robot$ci-all"]


def test_htpasswd_import(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hashes = {
        name: "$2y$" + bcrypt.hashpw(f"{name}-pw".encode(), bcrypt.gensalt(5)).decode()[4:]
        for name in ("dave", "erin")
    }
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(
        f"dave:{hashes['dave']}\n"
        f"erin:{hashes['erin']}\n"
        "frank:$apr1$abc$def\n"
        "Not Valid:$2y$05$abcdefghijklmnopqrstuu5UbPEhXw4Z4UFO3zzvDq6mI7zm5a8yy\n"
    )
    done = run_cli(data, "user", "import-htpasswd", str(htpasswd))
    assert done.returncode == 0, done.stderr
    assert "2 added, 0 updated, 2 skipped" in done.stdout
    assert "line 3" in done.stderr and "line 4" in done.stderr
    again = run_cli(data, "user", "import-htpasswd", str(htpasswd))
    assert "0 added, 0 updated, 4 skipped" in again.stdout
    updated = run_cli(data, "user", "import-htpasswd", str(htpasswd), "--update")
    assert "0 added, 2 updated, 2 skipped" in updated.stdout
    fails(data, "user", "import-htpasswd", str(tmp_path / "missing"))
    # The imported bcrypt passwords log in, and are upgraded to argon2id on the way.
    server = start_auth_server(tmp_path / "srv", admin=None, start=False)
    server.data_dir = data
    server.start()
    try:
        assert get_token(server.url, [], ("dave", "dave-pw")).status_code == 200
        assert_error(get_token(server.url, [], ("dave", "wrong-pw")), 401)
        assert get_token(server.url, [], ("dave", "dave-pw")).status_code == 200
        form = {"grant_type": "password", "username": "erin", "password": "erin-pw"}
        answer = httpx.post(f"{server.url}/auth/token", data={**form, "service": SERVICE})
        assert answer.status_code == 200
    finally:
        server.stop()
    import sqlite3

    with sqlite3.connect(data / "registry.db") as db:
        stored = dict(db.execute("SELECT name, password_hash FROM users").fetchall())
    assert stored["dave"].startswith("$argon2id$") and stored["erin"].startswith("$argon2id$")


def test_keys_list_and_rotate(tmp_path: Path) -> None:
    """`registry keys`, on the default store (the folder), as the server would read it."""
    data = tmp_path / "data"
    assert json.loads(ok(data, "keys", "list", "--json")) == []  # listing makes none
    [first] = json.loads(ok(data, "keys", "rotate", "--json"))
    assert first["algorithm"] == "ES256" and first["verifies_until"] is None
    assert (data / "auth" / "keys").is_dir()
    first_again, second = json.loads(ok(data, "keys", "rotate", "--json"))
    assert first_again["kid"] == first["kid"] and first_again["verifies_until"]
    assert second["kid"] != first["kid"] and second["verifies_until"] is None
    table = ok(data, "keys", "list")
    assert table.splitlines()[0].split() == ["KID", "ALGORITHM", "CREATED", "VERIFIES_UNTIL"]
    assert first["kid"] in table and second["kid"] in table
    done = run_cli(data, "keys", "list", env={"REGISTRY_AUTH_KEYS_STORE": "database"})
    assert done.returncode == 2 and "at least 32 characters" in done.stderr
    assert "Traceback" not in done.stderr
