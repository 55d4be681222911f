"""The audit log: logins, failed logins, pushes, deletes and denials, with time and address;
shown by `registry audit` and the admin API. Secrets never reach it, nor the server log."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx

from auth.conftest import AuthRegistry
from auth.helpers import assert_error, bearer, get_token, push_image, run_cli, token_for


def entries(auth_server: AuthRegistry, actor: str) -> list[dict[str, object]]:
    answer = auth_server.admin_api("GET", "/audit", params={"actor": actor, "limit": "100"})
    assert answer.status_code == 200
    return list(reversed(answer.json()["entries"]))  # oldest first


def test_what_happens_is_recorded(auth_server: AuthRegistry, client: httpx.Client) -> None:
    name, password = auth_server.new_user()
    other, _ = auth_server.new_user()
    repo = f"{name}/audited"
    assert_error(get_token(auth_server.url, [], (name, "wrong-password")), 401)
    token = token_for(auth_server.url, [f"repository:{repo}:pull,push,delete"], (name, password))
    pushed, _ = push_image(client, repo, "v1", bearer(token))
    assert pushed.status_code == 201
    digest = pushed.headers["docker-content-digest"]
    assert client.delete(f"/v2/{repo}/manifests/{digest}", headers=bearer(token)).status_code == 202
    assert_error(client.get(f"/v2/{other}/x/tags/list", headers=bearer(token)), 403, "DENIED")

    log = entries(auth_server, name)
    actions = [(e["action"], e["target"]) for e in log]
    assert actions[0] == ("login_failed", "")
    assert actions[1] == ("login", "")
    assert ("push", f"{repo}:v1") in actions
    assert ("delete", f"{repo}@{digest}") in actions
    assert ("denied", f"repository:{other}/x:pull") in actions
    assert all(e["address"] == "127.0.0.1" for e in log)
    stamp = datetime.strptime(str(log[-1]["at"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 120

    shown = run_cli(auth_server.data_dir, "audit", "--actor", name, "--json")
    assert shown.returncode == 0, shown.stderr
    assert {e["action"] for e in json.loads(shown.stdout)} >= {"login", "push", "delete", "denied"}
    table = run_cli(auth_server.data_dir, "audit", "--actor", name, "--action", "push")
    assert f"{repo}:v1" in table.stdout and "denied" not in table.stdout


def test_admin_changes_are_recorded(auth_server: AuthRegistry) -> None:
    name, _ = auth_server.new_user()
    log = entries(auth_server, auth_server.admin[0])
    assert {"action": "admin", "target": name, "detail": {"op": "user.add"}}.items() <= max(
        (e for e in log if e["target"] == name), key=lambda e: str(e["at"])
    ).items()


def test_no_secret_is_ever_logged(auth_server: AuthRegistry) -> None:
    """Every password and token handed out in this session, against the log and the DB dump."""
    auth_server.new_token(["x/*:pull"])  # at least one token secret
    log = auth_server.server.log_path.read_text(errors="replace")
    audit = auth_server.admin_api("GET", "/audit", params={"limit": "10000"}).text
    dump = b"".join(p.read_bytes() for p in auth_server.data_dir.glob("registry.db*"))
    assert auth_server.secrets
    for secret in auth_server.secrets:
        assert secret not in log
        assert secret not in audit
        assert secret.encode() not in dump
