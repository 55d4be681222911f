"""Every /v2/ request without valid credentials: 401 with the right challenge and error body.

Bad tokens and headers of every kind get 401 (or 403) with the spec's JSON, never a 500.
Tokens are crafted here with the server's own signing key (read from its data folder),
so each is refused for the one reason it is made to have.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auth.conftest import AuthRegistry
from auth.helpers import SERVICE, assert_error, bearer, challenge, token_for

ZERO = "sha256:" + "0" * 64


def server_key(data_dir: Path) -> tuple[str, Any]:
    [path] = sorted((data_dir / "auth" / "keys").glob("*.pem"))[-1:]
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return path.name.split("-", 1)[1].removesuffix(".pem"), key


def craft(data_dir: Path, **overrides: Any) -> str:
    kid, key = server_key(data_dir)
    now = int(time.time())
    claims = {
        "iss": "pocket-registry",
        "sub": "root",
        "aud": SERVICE,
        "exp": now + 60,
        "nbf": now,
        "iat": now,
        "jti": "crafted",
        "access": [{"type": "repository", "name": "crafted/app", "actions": ["pull"]}],
        "account": "user:1",  # root, the first user
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, "ES256", headers={"kid": kid})


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/v2/", None),
        ("GET", "/v2/alice/app/manifests/latest", "repository:alice/app:pull"),
        ("HEAD", "/v2/alice/app/manifests/latest", "repository:alice/app:pull"),
        ("GET", f"/v2/a/b/c/blobs/{ZERO}", "repository:a/b/c:pull"),
        ("POST", "/v2/alice/app/blobs/uploads/", "repository:alice/app:pull,push"),
        ("PUT", "/v2/alice/app/manifests/v1", "repository:alice/app:pull,push"),
        ("DELETE", "/v2/alice/app/manifests/v1", "repository:alice/app:delete"),
        ("DELETE", f"/v2/alice/app/blobs/{ZERO}", "repository:alice/app:delete"),
        ("GET", "/v2/alice/app/tags/list", "repository:alice/app:pull"),
        ("GET", f"/v2/alice/app/referrers/{ZERO}", "repository:alice/app:pull"),
        ("GET", "/v2/_catalog", "registry:catalog:*"),
    ],
)
def test_anonymous_requests_are_challenged(
    client: httpx.Client, auth_server: AuthRegistry, method: str, path: str, scope: str | None
) -> None:
    answer = client.request(method, path)
    if method == "HEAD":
        assert answer.status_code == 401 and not answer.content
    else:
        assert_error(answer, 401, "UNAUTHORIZED")
    assert answer.headers["docker-distribution-api-version"] == "registry/2.0"
    params = challenge(answer)
    assert params["realm"] == f"{auth_server.url}/auth/token"
    assert params["service"] == SERVICE
    assert params.get("scope") == scope
    assert "error" not in params


def test_the_realm_follows_the_host_the_client_used(client: httpx.Client) -> None:
    answer = client.get("/v2/", headers={"Host": "registry.example.com:8443"})
    assert challenge(answer)["realm"] == "http://registry.example.com:8443/auth/token"
    hostile = client.get("/v2/", headers={"Host": 'evil",realm="x'})
    assert '"x' not in challenge(hostile)["realm"]


def test_a_valid_token_opens_the_base_endpoint(
    client: httpx.Client, auth_server: AuthRegistry
) -> None:
    user = auth_server.new_user()
    token = token_for(auth_server.url, [], user)
    assert client.get("/v2/", headers=bearer(token)).status_code == 200
    anonymous = token_for(auth_server.url, [])
    assert client.get("/v2/", headers=bearer(anonymous)).status_code == 200


def test_a_token_lacking_the_action_gets_insufficient_scope(
    client: httpx.Client, auth_server: AuthRegistry
) -> None:
    name, password = auth_server.new_user()
    pull_only = token_for(auth_server.url, [f"repository:{name}/app:pull"], (name, password))
    answer = client.post(f"/v2/{name}/app/blobs/uploads/", headers=bearer(pull_only))
    # The account may push there, so a new token would do: 401, naming the scope to ask for.
    error = assert_error(answer, 401, "UNAUTHORIZED")
    assert error["detail"] == [
        {"type": "repository", "name": f"{name}/app", "actions": ["pull", "push"]}
    ]
    params = challenge(answer)
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == f"repository:{name}/app:pull,push"
    assert params["realm"] == f"{auth_server.url}/auth/token"
    # ...and a token for one repository says nothing about another.
    answer = client.get(f"/v2/{name}/other/tags/list", headers=bearer(pull_only))
    assert challenge(assert_response(answer, 401))["error"] == "insufficient_scope"
    # Where the account itself may not go, no token would help: 403 DENIED.
    other, _ = auth_server.new_user()
    answer = client.get(f"/v2/{other}/app/tags/list", headers=bearer(pull_only))
    assert_error(answer, 403, "DENIED")
    assert challenge(answer)["error"] == "insufficient_scope"
    # An anonymous token lacking access: 401, since logging in may help.
    anonymous = token_for(auth_server.url, [f"repository:{name}/app:pull"])
    answer = client.get(f"/v2/{name}/app/tags/list", headers=bearer(anonymous))
    assert_error(answer, 401, "UNAUTHORIZED")
    assert challenge(answer) == {
        "realm": f"{auth_server.url}/auth/token",
        "service": SERVICE,
        "scope": f"repository:{name}/app:pull",
        "error": "insufficient_scope",
    }


def assert_response(answer: httpx.Response, status: int) -> httpx.Response:
    assert_error(answer, status)
    return answer


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not yet valid"),
        ({"aud": "another-registry"}, "audience"),
        ({"iss": "somebody-else"}, "untrusted issuer"),
        ({"jti": None}, "missing claim"),
        ({"access": {"all": True}}, "access claim"),
        ({"access": [{"type": "repository", "name": "UPPER", "actions": ["pull"]}]}, "access"),
        ({"sub": "no-such-user"}, "no longer exists"),
        ({"account": None}, "no longer exists"),  # as issued before tokens named the id
        ({"account": "user:999999"}, "no longer exists"),
        ({"account": "robot:1"}, "no longer exists"),
        ({"account": "team:1"}, "no longer exists"),
        ({"account": 1}, "malformed claims"),
    ],
)
def test_bad_tokens_signed_with_the_real_key(
    client: httpx.Client, auth_server: AuthRegistry, overrides: dict[str, Any], reason: str
) -> None:
    token = craft(auth_server.data_dir, **overrides)
    answer = client.get("/v2/crafted/app/tags/list", headers=bearer(token))
    assert reason in assert_error(answer, 401, "UNAUTHORIZED")["message"]
    params = challenge(answer)
    assert params["error"] == "invalid_token" and params["scope"] == "repository:crafted/app:pull"


def test_the_crafting_itself_works(client: httpx.Client, auth_server: AuthRegistry) -> None:
    """The control for the test above: the same token without the flaw is accepted."""
    answer = client.get("/v2/crafted/app/tags/list", headers=bearer(craft(auth_server.data_dir)))
    assert_error(answer, 404, "NAME_UNKNOWN")


def _segments(token: str) -> list[str]:
    return token.split(".")


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def test_forged_tokens(client: httpx.Client, auth_server: AuthRegistry) -> None:
    name, password = auth_server.new_user()
    real = token_for(auth_server.url, [f"repository:{name}/app:pull"], (name, password))
    head, body, signature = _segments(real)
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    escalated = {**claims, "access": [{"type": "repository", "name": "*", "actions": ["*"]}]}
    attacker = ec.generate_private_key(ec.SECP256R1())
    forgeries = {
        "scope escalation": f"{head}.{_b64(escalated)}.{signature}",
        "alg none": f"{_b64({**header, 'alg': 'none'})}.{body}.",
        "HS256": jwt.encode(
            claims,
            "an hmac secret the attacker chose, long enough",
            "HS256",
            headers={"kid": header["kid"]},
        ),
        "another key under our kid": jwt.encode(
            claims, attacker, "ES256", headers={"kid": header["kid"]}
        ),
        "an unknown kid": jwt.encode(claims, attacker, "ES256", headers={"kid": "x" * 43}),
        "no signature": f"{head}.{body}.",
        "truncated": real[:-10],
    }
    for label, forged in forgeries.items():
        answer = client.get(f"/v2/{name}/app/tags/list", headers=bearer(forged))
        assert answer.status_code == 401, label
        assert_error(answer, 401, "UNAUTHORIZED")
        assert challenge(answer)["error"] == "invalid_token", label


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Bearer " + "x" * 20000,
        "Basic",
        "Basic !!!notbase64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b":password-only").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Digest username=x",
        "Negotiate abc",
        "token",
        "",
    ],
)
def test_malformed_authorization_headers(auth_server: AuthRegistry, header: str) -> None:
    for path in ("/v2/", "/v2/alice/app/manifests/latest"):
        answer = raw_get(auth_server, path, header.encode())
        assert_error(answer, 401, "UNAUTHORIZED")
        assert challenge(answer)["realm"].endswith("/auth/token")


def test_non_ascii_header_bytes(auth_server: AuthRegistry) -> None:
    for value in (b"Bearer \xff\xfe\xfd", b"Basic \xff\xfe", "Basic é".encode()):
        assert_error(raw_get(auth_server, "/v2/", value), 401, "UNAUTHORIZED")


def raw_get(auth_server: AuthRegistry, path: str, authorization: bytes) -> httpx.Response:
    """Send the header byte for byte (httpx refuses some of these)."""
    conn = http.client.HTTPConnection("127.0.0.1", auth_server.server.port, timeout=30)
    try:
        conn.putrequest("GET", path)
        conn.putheader("Authorization", authorization)
        conn.endheaders()
        answer = conn.getresponse()
        return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())
    finally:
        conn.close()
