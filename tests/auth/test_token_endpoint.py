"""`/auth/token`: what Docker's token specification asks of the token server, and `/auth/jwks`."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import jwt
import pytest

from auth.conftest import AuthRegistry
from auth.helpers import SERVICE, assert_error, bearer, get_token, run_cli, token_for


def claims_of(token: str) -> dict[str, object]:
    return jwt.decode(token, options={"verify_signature": False})


def access_of(token: str) -> list[object]:
    return list(claims_of(token)["access"])  # type: ignore[call-overload]


def test_answer_shape_and_claims(auth_server: AuthRegistry) -> None:
    name, password = auth_server.new_user()
    answer = get_token(auth_server.url, [f"repository:{name}/app:pull,push"], (name, password))
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    issued = datetime.strptime(body["issued_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - issued).total_seconds()) < 60
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "ES256" and header["kid"]
    claims = claims_of(body["token"])
    assert set(claims) == {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access", "account"}
    assert claims["iss"] == "pocket-registry" and claims["aud"] == SERVICE
    assert claims["sub"] == name and str(claims["account"]).startswith("user:")
    assert claims["access"] == [
        {"type": "repository", "name": f"{name}/app", "actions": ["pull", "push"]}
    ]


def test_tokens_verify_with_the_published_jwks(auth_server: AuthRegistry) -> None:
    jwks = httpx.get(f"{auth_server.url}/auth/jwks").json()
    assert jwks["keys"] and all("d" not in key for key in jwks["keys"])
    token = token_for(auth_server.url, [], auth_server.new_user())
    kid = jwt.get_unverified_header(token)["kid"]
    [key] = [k for k in jwks["keys"] if k["kid"] == kid]
    public = jwt.PyJWK.from_dict(key)
    claims = jwt.decode(token, public, algorithms=["ES256"], audience=SERVICE)
    assert claims["iss"] == "pocket-registry"


def test_asking_too_much_yields_less_never_an_error(auth_server: AuthRegistry) -> None:
    alice, alice_password = auth_server.new_user()
    bob, _ = auth_server.new_user()
    scopes = [
        f"repository:{alice}/app:pull,push,delete",
        f"repository:{bob}/app:pull,push",
        f"repository:{alice}/x:* repository:{bob}/y:pull",
        "registry:catalog:*",
        "repository(plugin):x/y:pull",
    ]
    token = token_for(auth_server.url, scopes, (alice, alice_password))
    assert access_of(token) == [
        {"type": "repository", "name": f"{alice}/app", "actions": ["pull", "push", "delete"]},
        {"type": "repository", "name": f"{alice}/x", "actions": ["pull", "push", "delete"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]


def test_anonymous_tokens(auth_server: AuthRegistry) -> None:
    owner = auth_server.new_user()
    public = f"{owner[0]}/public-app"
    auth_server.make_public(public)
    token = token_for(
        auth_server.url,
        [f"repository:{public}:pull,push", f"repository:{owner[0]}/private:pull"],
    )
    assert claims_of(token)["sub"] == ""
    assert access_of(token) == [{"type": "repository", "name": public, "actions": ["pull"]}]
    # An anonymous caller gets no refresh token, even when asking.
    answer = get_token(auth_server.url, [], offline_token="true")
    assert "refresh_token" not in answer.json()


def test_wrong_passwords(auth_server: AuthRegistry) -> None:
    name, _ = auth_server.new_user()
    answer = get_token(auth_server.url, [], (name, "not-the-password"))
    assert_error(answer, 401, "UNAUTHORIZED")
    assert answer.headers["www-authenticate"].startswith("Basic ")
    assert_error(get_token(auth_server.url, [], ("nobody-here", "whatever1")), 401, "UNAUTHORIZED")


def test_credentials_are_checked_before_anything_else(auth_server: AuthRegistry) -> None:
    """A wrong password is 401 whatever the rest of the request says, and it counts."""
    name, _ = auth_server.new_user()
    for scope in ("repository:UPPER:pull", "::", "repository:a:pull;x"):
        answer = get_token(auth_server.url, [scope], (name, "not-the-password"))
        assert_error(answer, 401, "UNAUTHORIZED")
    answer = httpx.get(f"{auth_server.url}/auth/token", auth=(name, "not-the-password"))
    assert_error(answer, 401, "UNAUTHORIZED")  # no service either
    form = {"grant_type": "password", "username": name, "password": "nope-nope", "scope": "::"}
    assert_error(httpx.post(f"{auth_server.url}/auth/token", data=form), 401, "UNAUTHORIZED")
    failed = auth_server.admin_api(
        "GET", "/audit", params={"actor": name, "action": "login_failed"}
    ).json()["entries"]
    assert len(failed) == 5  # the account's limit: the next attempt waits
    assert_error(get_token(auth_server.url, [], (name, "not-the-password")), 429)


def test_unreadable_scopes_and_actions_are_dropped(auth_server: AuthRegistry) -> None:
    name, password = auth_server.new_user()
    scopes = [
        f"repository:{name}/app:pull,no-such-action",
        f"repository:{name}/b:frobnicate,push,PULL",
        f"repository:{name}/UPPER:pull",
        f"repository(plugin):{name}/x:pull",
        f"nosuchtype:{name}/y:pull",
        "registry:other:*",
        "repository",
        "::",
    ]
    answer = get_token(auth_server.url, scopes, (name, password))
    assert answer.status_code == 200, answer.text
    assert access_of(answer.json()["token"]) == [
        {"type": "repository", "name": f"{name}/app", "actions": ["pull"]},
        {"type": "repository", "name": f"{name}/b", "actions": ["push"]},
    ]


def test_nothing_granted_is_a_token_with_empty_access(auth_server: AuthRegistry) -> None:
    name, password = auth_server.new_user()
    other, _ = auth_server.new_user()
    for scopes in (["repository:UPPER:pull"], [f"repository:{other}/app:pull"], ["::"]):
        answer = get_token(auth_server.url, scopes, (name, password))
        assert answer.status_code == 200, answer.text
        assert claims_of(answer.json()["token"])["sub"] == name
        assert access_of(answer.json()["token"]) == []
    form = {
        "grant_type": "password", "username": name, "password": password,
        "service": SERVICE, "scope": "repository:x:no-such-action",
    }  # fmt: skip
    answer = httpx.post(f"{auth_server.url}/auth/token", data=form)
    assert answer.status_code == 200, answer.text
    assert answer.json()["scope"] == "" and access_of(answer.json()["token"]) == []


def test_malformed_requests(auth_server: AuthRegistry) -> None:
    name, password = auth_server.new_user()
    url = f"{auth_server.url}/auth/token"
    for params in ({}, {"service": ""}, {"service": "someone-else"}):
        for credentials in ((name, password), None):
            answer = httpx.get(url, params=params, auth=credentials)
            assert "service" in assert_error(answer, 400)["message"]
    form = {"grant_type": "password", "username": name, "password": password}
    for extra in ({}, {"service": "someone-else"}):
        answer = httpx.post(url, data={**form, **extra, "access_type": "offline"})
        assert "service" in assert_error(answer, 400)["message"]
    too_many = " ".join(f"repository:{name}/r{i}:pull" for i in range(100))
    assert_error(get_token(auth_server.url, [too_many], (name, password)), 400)
    for header in ("Bearer abc", "Basic ####", "Weird"):
        answer = httpx.get(url, headers={"Authorization": header})
        assert_error(answer, 401, "UNAUTHORIZED")


def test_offline_token_and_the_refresh_grant(auth_server: AuthRegistry) -> None:
    name, password = auth_server.new_user()
    answer = get_token(
        auth_server.url, [], (name, password), offline_token="true", client_id="docker"
    )
    refresh = answer.json()["refresh_token"]
    assert refresh.startswith("pkrt_")
    auth_server.secrets.append(refresh)
    answer = httpx.post(
        f"{auth_server.url}/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": SERVICE,
            "client_id": "docker",
            "scope": f"repository:{name}/app:pull,push repository:other/app:pull",
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["scope"] == f"repository:{name}/app:pull,push"
    assert claims_of(body["access_token"])["sub"] == name
    assert body["token"] == body["access_token"] and body["expires_in"] == 300


def test_the_password_grant(auth_server: AuthRegistry) -> None:
    name, password = auth_server.new_user()
    form = {
        "grant_type": "password",
        "username": name,
        "password": password,
        "service": SERVICE,
        "client_id": "tests",
        "access_type": "offline",
        "scope": f"repository:{name}/app:pull",
    }
    answer = httpx.post(f"{auth_server.url}/auth/token", data=form)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["refresh_token"].startswith("pkrt_")
    auth_server.secrets.append(body["refresh_token"])
    assert access_of(body["access_token"]) == [
        {"type": "repository", "name": f"{name}/app", "actions": ["pull"]}
    ]
    no_offline = httpx.post(f"{auth_server.url}/auth/token", data={**form, "access_type": ""})
    assert "refresh_token" not in no_offline.json()
    wrong = httpx.post(f"{auth_server.url}/auth/token", data={**form, "password": "nope-nope"})
    assert_error(wrong, 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    ("form", "status", "code"),
    [
        ({"grant_type": "client_credentials"}, 400, "UNSUPPORTED"),
        ({}, 400, "UNSUPPORTED"),
        ({"grant_type": "refresh_token", "refresh_token": "pkrt_made-up"}, 401, "UNAUTHORIZED"),
        ({"grant_type": "refresh_token", "refresh_token": "garbage"}, 401, "UNAUTHORIZED"),
        ({"grant_type": "refresh_token"}, 401, "UNAUTHORIZED"),
        ({"grant_type": "password", "password": "x"}, 401, "UNAUTHORIZED"),
        ({"grant_type": "password", "username": "x", "scope": "bad scope!"}, 401, "UNAUTHORIZED"),
    ],
)
def test_bad_posts(auth_server: AuthRegistry, form: dict[str, str], status: int, code: str) -> None:
    answer = httpx.post(f"{auth_server.url}/auth/token", data=form)
    assert_error(answer, status, code)


def test_posts_must_be_forms(auth_server: AuthRegistry) -> None:
    answer = httpx.post(f"{auth_server.url}/auth/token", json={"grant_type": "password"})
    assert_error(answer, 400)
    big = httpx.post(
        f"{auth_server.url}/auth/token",
        content=b"a=" + b"x" * 100_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(big, 400)


def test_a_new_password_revokes_refresh_tokens(auth_server: AuthRegistry) -> None:
    name, password = auth_server.new_user()
    refresh = get_token(auth_server.url, [], (name, password), offline_token="true").json()[
        "refresh_token"
    ]
    auth_server.secrets.append(refresh)
    changed = run_cli(
        auth_server.data_dir, "user", "passwd", name, "--password-stdin", input="brand-new-pass"
    )
    assert changed.returncode == 0, changed.stderr
    answer = httpx.post(
        f"{auth_server.url}/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh, "service": SERVICE},
    )
    assert_error(answer, 401, "UNAUTHORIZED")
    assert_error(get_token(auth_server.url, [], (name, password)), 401)
    assert get_token(auth_server.url, [], (name, "brand-new-pass")).status_code == 200


def test_tokens_work_on_the_registry(auth_server: AuthRegistry, client: httpx.Client) -> None:
    name, password = auth_server.new_user()
    token = token_for(auth_server.url, [f"repository:{name}/app:pull"], (name, password))
    answer = client.get(f"/v2/{name}/app/tags/list", headers=bearer(token))
    assert_error(answer, 404, "NAME_UNKNOWN")  # allowed in, and nothing is there yet
