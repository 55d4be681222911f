"""The admin API: admins manage everything over JSON; users manage their own CI tokens."""

from __future__ import annotations

import httpx
import pytest

from auth.conftest import AuthRegistry
from auth.helpers import assert_error, get_token, unique


def api(
    auth_server: AuthRegistry, method: str, path: str, auth: tuple[str, str], **kwargs: object
) -> httpx.Response:
    return httpx.request(
        method,
        f"{auth_server.url}/auth/admin{path}",
        auth=auth,
        timeout=30,
        **kwargs,  # type: ignore[arg-type]
    )


def test_users_teams_and_grants(auth_server: AuthRegistry) -> None:
    name, team = unique(), unique("team")
    admin = auth_server.admin
    created = api(
        auth_server, "POST", "/users", admin, json={"name": name, "password": "pw-12345678"}
    )
    assert created.status_code == 201
    assert name in [u["name"] for u in api(auth_server, "GET", "/users", admin).json()["users"]]
    assert api(auth_server, "POST", "/teams", admin, json={"name": team}).status_code == 201
    assert api(auth_server, "PUT", f"/teams/{team}/members/{name}", admin).status_code == 204
    grant = api(
        auth_server,
        "POST",
        "/grants",
        admin,
        json={"team": team, "pattern": "t/*", "actions": "push"},
    )
    assert grant.json() == {"team": team, "pattern": "t/*", "actions": "pull,push"}
    detail = api(auth_server, "GET", f"/users/{name}", admin).json()
    assert detail["teams"] == [team] and detail["admin"] is False
    teams = api(auth_server, "GET", "/teams", admin).json()["teams"]
    assert {"name": team, "members": [name]} in teams
    grants = api(auth_server, "GET", "/grants", admin).json()["grants"]
    assert {"team": team, "pattern": "t/*", "actions": "pull,push"} in grants
    # A password change over the API takes effect at once.
    changed = api(auth_server, "PATCH", f"/users/{name}", admin, json={"password": "pw-new-5678"})
    assert changed.status_code == 200
    assert get_token(auth_server.url, [], (name, "pw-new-5678")).status_code == 200
    assert (
        api(auth_server, "PATCH", f"/users/{name}", admin, json={"admin": True}).status_code == 200
    )
    assert api(auth_server, "GET", "/users", (name, "pw-new-5678")).status_code == 200
    assert api(auth_server, "DELETE", f"/teams/{team}/members/{name}", admin).status_code == 204
    assert api(auth_server, "DELETE", f"/teams/{team}", admin).status_code == 204
    assert api(auth_server, "DELETE", f"/users/{name}", admin).status_code == 204
    assert_error(get_token(auth_server.url, [], (name, "pw-new-5678")), 401)


def test_public_patterns(auth_server: AuthRegistry) -> None:
    pattern = f"{unique('lib')}/*"
    admin = auth_server.admin
    assert api(auth_server, "POST", "/public", admin, json={"pattern": pattern}).status_code == 201
    assert pattern in api(auth_server, "GET", "/public", admin).json()["patterns"]
    removed = api(auth_server, "DELETE", "/public", admin, params={"pattern": pattern})
    assert removed.status_code == 204
    assert pattern not in api(auth_server, "GET", "/public", admin).json()["patterns"]


def test_tokens_are_shown_once_and_stored_hashed(auth_server: AuthRegistry) -> None:
    name = unique("ci")
    made = api(
        auth_server,
        "POST",
        "/tokens",
        auth_server.admin,
        json={"name": name, "scopes": ["ci/*:pull"], "expires": "1d"},
    )
    assert made.status_code == 201
    body = made.json()
    secret, full = body["token"], body["name"]
    assert secret.startswith("pkr_") and body["scopes"] == ["ci/*:pull"] and body["expires_at"]
    assert full == f"robot${name}" and body["owner"] is None  # an admin's token, no owner
    assert body["old_name"] is None
    listed = api(auth_server, "GET", "/tokens", auth_server.admin).text
    assert full in listed and secret not in listed
    assert get_token(auth_server.url, [], (full, secret)).status_code == 200
    assert_error(get_token(auth_server.url, [], (name, secret)), 401)  # the short name is not it
    assert api(auth_server, "DELETE", f"/tokens/{full}", auth_server.admin).status_code == 204
    assert_error(get_token(auth_server.url, [], (full, secret)), 401)


def test_users_manage_their_own_tokens_only(auth_server: AuthRegistry) -> None:
    alice, bob = auth_server.new_user(), auth_server.new_user()
    made = api(
        auth_server, "POST", "/tokens", alice, json={"name": unique("ci"), "scopes": ["*:pull"]}
    )
    assert made.status_code == 201 and made.json()["owner"] == alice[0]
    mine = made.json()["name"]
    assert mine.startswith(f"robot${alice[0]}+")
    listed = api(auth_server, "GET", "/tokens", alice).json()["tokens"]
    assert [t["name"] for t in listed] == [mine]
    assert api(auth_server, "GET", "/tokens", bob).json()["tokens"] == []
    assert_error(api(auth_server, "DELETE", f"/tokens/{mine}", bob), 404)
    for body in (
        {"name": unique("ci"), "scopes": ["*:pull"], "admin": True},
        {"name": unique("ci"), "scopes": ["*:pull"], "owner": bob[0]},
    ):
        assert_error(api(auth_server, "POST", "/tokens", alice, json=body), 403, "DENIED")
    assert api(auth_server, "DELETE", f"/tokens/{mine}", alice).status_code == 204
    # Everything else is for admins.
    for method, path in [("GET", "/users"), ("POST", "/teams"), ("GET", "/audit")]:
        assert_error(api(auth_server, method, path, alice, json={}), 403, "DENIED")


def test_an_admin_token_drives_the_api(auth_server: AuthRegistry) -> None:
    name, secret = auth_server.new_token([], admin=True)
    assert api(auth_server, "GET", "/users", (name, secret)).status_code == 200
    plain, plain_secret = auth_server.new_token(["x/*:pull"])
    assert_error(api(auth_server, "GET", "/users", (plain, plain_secret)), 403, "DENIED")
    assert_error(api(auth_server, "GET", "/tokens", (plain, plain_secret)), 403, "DENIED")


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("POST", "/users", {"content": b"{not json"}, 400, "BAD_REQUEST"),
        ("POST", "/users", {"json": ["a", "list"]}, 400, "BAD_REQUEST"),
        ("POST", "/users", {"json": {"name": "Bad Name", "password": "pw-12345678"}}, 400, None),
        ("POST", "/users", {"json": {"name": "shortpw", "password": "x"}}, 400, None),
        ("POST", "/users", {"json": {"name": "root", "password": "pw-12345678"}}, 409, "CONFLICT"),
        ("POST", "/users", {"json": {"name": 5, "password": "pw-12345678"}}, 400, None),
        ("PATCH", "/users/nobody-here", {"json": {"admin": True}}, 404, "NOT_FOUND"),
        ("PATCH", "/users/root", {"json": {"admin": "yes"}}, 400, None),
        ("DELETE", "/users/nobody-here", {}, 404, "NOT_FOUND"),
        (
            "POST",
            "/grants",
            {"json": {"user": "root", "team": "x", "pattern": "a", "actions": "pull"}},
            400,
            None,
        ),
        (
            "POST",
            "/grants",
            {"json": {"user": "root", "pattern": "A/*", "actions": "pull"}},
            400,
            None,
        ),
        (
            "POST",
            "/grants",
            {"json": {"user": "root", "pattern": "a/*", "actions": "fly"}},
            400,
            None,
        ),
        (
            "POST",
            "/grants",
            {"json": {"user": "nobody-here", "pattern": "a/*", "actions": "pull"}},
            404,
            None,
        ),
        ("DELETE", "/grants", {"params": {"user": "root", "pattern": "never/granted"}}, 404, None),
        ("POST", "/tokens", {"json": {"name": "t1", "scopes": "ci/*:pull"}}, 400, None),
        ("POST", "/tokens", {"json": {"name": "t2", "scopes": ["ci/*"]}}, 400, None),
        (
            "POST",
            "/tokens",
            {"json": {"name": "t3", "scopes": ["ci/*:pull"], "expires": "soon"}},
            400,
            None,
        ),
        ("GET", "/audit", {"params": {"limit": "many"}}, 400, None),
        ("PUT", "/teams/nobody/members/root", {}, 404, None),
    ],
)
def test_bad_requests(
    auth_server: AuthRegistry,
    method: str,
    path: str,
    kwargs: dict[str, object],
    status: int,
    code: str | None,
) -> None:
    assert_error(api(auth_server, method, path, auth_server.admin, **kwargs), status, code)


def test_authentication(auth_server: AuthRegistry) -> None:
    for auth in (None, ("root", "wrong-password")):
        answer = httpx.get(f"{auth_server.url}/auth/admin/users", auth=auth)
        assert_error(answer, 401, "UNAUTHORIZED")
        assert answer.headers["www-authenticate"].startswith("Basic ")
    # A bearer token from the token endpoint is not an admin credential.
    token = get_token(auth_server.url, [], auth_server.admin).json()["token"]
    answer = httpx.get(
        f"{auth_server.url}/auth/admin/users", headers={"Authorization": f"Bearer {token}"}
    )
    assert_error(answer, 401, "UNAUTHORIZED")
