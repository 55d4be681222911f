"""Garbage at every auth endpoint: always a 4xx with the spec's JSON error body, never a 500."""

from __future__ import annotations

import base64
import http.client
import json

import pytest

from auth.conftest import AuthRegistry


def raw(
    auth_server: AuthRegistry,
    method: str,
    target: str,
    headers: dict[str, bytes] | None = None,
    body: bytes = b"",
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", auth_server.server.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def assert_client_error(status: int, body: bytes) -> None:
    assert 400 <= status < 500, (status, body[:300])
    errors = json.loads(body)["errors"]
    assert errors and {"code", "message", "detail"} <= set(errors[0])


def basic(text: bytes) -> bytes:
    return b"Basic " + base64.b64encode(text)


TARGETS = [
    "/auth/token?scope=%FF%FE",
    "/auth/token?scope=repository:%00:pull",
    "/auth/token?scope=" + "repository:a:pull%20" * 80,
    "/auth/token?scope=repository:a:pull&scope=&scope=%20%20",
    "/auth/token?service=%FF",
    "/auth/token?service=pocket-registry&scope=repository:" + "a/" * 200 + "b:pull",
    "/auth/token?offline_token=maybe&client_id=" + "x" * 5000,
    "/auth/token?scope=registry:catalog:pull",
    "/auth/token?scope=repository:a:pull:push",
    "/auth/admin/users/%2e%2e%2f%2e%2e",
    "/auth/admin/users/" + "a" * 3000,
    "/auth/admin/tokens/%FF",
    "/auth/admin/audit?limit=-1",
    "/auth/admin/audit?limit=99999999999999999999999",
    "/auth/admin/grants?user=%FF&pattern=x",
]


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


DEEP = b"[" * 5000 + b"]" * 5000
HEADERS = [
    {},
    {"Authorization": basic(b"\xff\xfe:\xfd")},
    {"Authorization": basic(b"garbage-user:" + b"x" * 5000)},
    {"Authorization": basic(b"garbage" * 1000 + b":pw")},
    {"Authorization": b"Basic " + b"A" * 20000},
    {"Authorization": b"Bearer " + b"e" * 3000},
    {"Authorization": basic(b"ci:pkr_" + b"z" * 40)},
    {"Authorization": b"Bearer " + _b64(b'{"alg":"ES256"}') + b"." + _b64(DEEP) + b".c2ln"},
    {"Authorization": b"Bearer " + _b64(DEEP) + b"." + _b64(b"{}") + b".c2ln"},
]


@pytest.mark.parametrize("target", TARGETS)
def test_get_garbage(auth_server: AuthRegistry, target: str) -> None:
    for headers in HEADERS:
        status, body = raw(auth_server, "GET", target, headers)
        if status == 200:
            assert target.startswith("/auth/token")  # anonymous, or nothing granted
            assert "token" in json.loads(body)
        else:
            assert_client_error(status, body)


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=password&username=%FF&password=%FE",
        b"grant_type=refresh_token&refresh_token=pkrt_" + b"%00" * 50,
        b"grant_type=password&username=garbage-user&password=" + b"p" * 5000,
        b"\xff\xfe\xfd",
        b"grant_type=password&username=garbage-user&password=x&scope=repository%3AUPPER%3Apull",
        b"=&=&&&==",
        b"grant_type=" + b"x" * 60000,
    ],
)
def test_post_garbage(auth_server: AuthRegistry, body: bytes) -> None:
    headers = {"Content-Type": b"application/x-www-form-urlencoded"}
    status, answer = raw(auth_server, "POST", "/auth/token", headers, body)
    assert_client_error(status, answer)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/auth/admin/users", b"\xff\xfe"),
        ("POST", "/auth/admin/users", b'{"name": "x", "password": ["a"]}'),
        ("POST", "/auth/admin/users", b"[" * 10000),
        ("POST", "/auth/admin/grants", b'{"user": ["root"], "pattern": "a/*", "actions": "pull"}'),
        ("POST", "/auth/admin/grants", b'{"user": "root", "pattern": "a/*", "actions": 5}'),
        ("POST", "/auth/admin/tokens", b'{"name": "x", "scopes": [null]}'),
        ("POST", "/auth/admin/tokens", b'{"name": "x", "scopes": ["a/*:pull"], "expires": 5}'),
        ("POST", "/auth/admin/public", b'{"pattern": "../../etc"}'),
        ("PATCH", "/auth/admin/users/root", b'{"password": 12345678}'),
        ("POST", "/auth/admin/users", b"{" + b'"a": 1,' * 20000 + b'"b": 2}'),
    ],
)
def test_admin_garbage(auth_server: AuthRegistry, method: str, path: str, body: bytes) -> None:
    credentials = base64.b64encode(f"{auth_server.admin[0]}:{auth_server.admin[1]}".encode())
    headers = {"Authorization": b"Basic " + credentials, "Content-Type": b"application/json"}
    status, answer = raw(auth_server, method, path, headers, body)
    assert status != 429, "the admin's account must not be locked by these tests"
    assert_client_error(status, answer)


def test_v2_garbage(auth_server: AuthRegistry) -> None:
    for headers in HEADERS:
        for target in ("/v2/", "/v2/_catalog?n=1", "/v2/a/b/tags/list", "/v2/%FF/tags/list"):
            status, body = raw(auth_server, "GET", target, headers)
            assert_client_error(status, body)
