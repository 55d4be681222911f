"""Failed logins are limited per account and per address, in the database, so replicas
sharing it share the limits (and the signing keys, through a shared key folder)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auth.conftest import ADMIN, start_auth_server
from auth.helpers import SERVICE, assert_error, get_token, token_for, unique

from support.server import RegistryServer


def ask(client: httpx.Client, url: str, credentials: tuple[str, str]) -> httpx.Response:
    """GET /auth/token with Basic credentials, from the client's address."""
    return client.get(f"{url}/auth/token", params={"service": SERVICE}, auth=credentials)


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_auth_server(
        tmp_path_factory.mktemp("strict"),
        env={
            "REGISTRY_AUTH_LOGIN_FAILURES_PER_ACCOUNT": "3",
            "REGISTRY_AUTH_LOGIN_FAILURES_PER_ADDRESS": "8",
            "REGISTRY_AUTH_LOGIN_FAILURE_WINDOW_SECONDS": "300",
        },
    )
    yield server
    server.stop()


def add_user(url: str, name: str, password: str) -> None:
    answer = httpx.post(
        f"{url}/auth/admin/users", json={"name": name, "password": password}, auth=ADMIN
    )
    assert answer.status_code == 201, answer.text


def from_address(address: str) -> httpx.Client:
    """A client whose connections come from another loopback address."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def assert_limited(answer: httpx.Response) -> int:
    assert_error(answer, 429, "TOOMANYREQUESTS")
    retry_after = int(answer.headers["retry-after"])
    assert 0 < retry_after <= 300
    return retry_after


def test_failed_logins_lock_the_account(strict_server: RegistryServer) -> None:
    url = strict_server.url
    name, password = unique(), "right-password"
    other = unique()
    add_user(url, name, password)
    add_user(url, other, password)
    with from_address("127.0.0.11") as client:
        for _ in range(3):
            answer = ask(client, url, (name, "wrong-password"))
            assert_error(answer, 401, "UNAUTHORIZED")
        # Now even the right password waits, through every way of logging in...
        assert_limited(ask(client, url, (name, password)))
        assert_limited(client.get(f"{url}/v2/", auth=(name, password)))
        form = {"grant_type": "password", "username": name, "password": password}
        assert_limited(client.post(f"{url}/auth/token", data={**form, "service": SERVICE}))
        # ...while other accounts are not held up.
        assert ask(client, url, (other, password)).status_code == 200
    # From another address too: the lock is on the account.
    with from_address("127.0.0.12") as client:
        assert_limited(ask(client, url, (name, password)))


def test_unknown_accounts_are_limited_like_real_ones(strict_server: RegistryServer) -> None:
    ghost = unique("ghost")
    with from_address("127.0.0.13") as client:
        for _ in range(3):
            assert_error(ask(client, strict_server.url, (ghost, "x")), 401)
        assert_limited(ask(client, strict_server.url, (ghost, "x")))


def test_failed_logins_lock_the_address(strict_server: RegistryServer) -> None:
    url = strict_server.url
    name, password = unique(), "right-password"
    add_user(url, name, password)
    with from_address("127.0.0.14") as client:
        for _ in range(8):  # spread over many account names, each below its own limit
            assert_error(ask(client, url, (unique(), "guess")), 401)
        assert_limited(ask(client, url, (name, password)))
        anonymous = client.get(f"{url}/auth/token", params={"service": SERVICE})
        assert anonymous.status_code == 200  # no credentials, nothing to limit
    with from_address("127.0.0.15") as client:
        assert ask(client, url, (name, password)).status_code == 200


def test_a_right_password_resets_the_account_count(strict_server: RegistryServer) -> None:
    url = strict_server.url
    name, password = unique(), "right-password"
    add_user(url, name, password)
    with from_address("127.0.0.16") as client:
        for _ in range(2):
            assert_error(ask(client, url, (name, "wrong")), 401)
        assert ask(client, url, (name, password)).status_code == 200
        for _ in range(2):
            assert_error(ask(client, url, (name, "wrong")), 401)
        assert ask(client, url, (name, password)).status_code == 200


def test_the_window_ends(tmp_path: Path) -> None:
    server = start_auth_server(
        tmp_path,
        env={
            "REGISTRY_AUTH_LOGIN_FAILURES_PER_ACCOUNT": "1",
            "REGISTRY_AUTH_LOGIN_FAILURE_WINDOW_SECONDS": "2",
        },
    )
    try:
        assert_error(get_token(server.url, [], (ADMIN[0], "wrong")), 401)
        assert assert_limited(get_token(server.url, [], ADMIN)) <= 2
        time.sleep(2.5)
        assert get_token(server.url, [], ADMIN).status_code == 200
    finally:
        server.stop()


def test_replicas_share_limits_and_keys(tmp_path: Path, postgres: object) -> None:
    """Two servers on one PostgreSQL database and one key folder, as replicas would be."""
    database = postgres.create_database(unique("auth"))  # type: ignore[attr-defined]
    env = {
        "REGISTRY_DATABASE_URL": database,
        "REGISTRY_AUTH_KEYS_DIR": str(tmp_path / "keys"),
        "REGISTRY_AUTH_LOGIN_FAILURES_PER_ACCOUNT": "2",
    }
    first = start_auth_server(tmp_path / "one", env=env)
    second = start_auth_server(tmp_path / "two", env=env, admin=None)
    try:
        name, password = unique(), "right-password"
        add_user(first.url, name, password)
        token = token_for(first.url, [f"repository:{name}/app:pull"], (name, password))
        answer = httpx.get(
            f"{second.url}/v2/{name}/app/tags/list", headers={"Authorization": f"Bearer {token}"}
        )
        assert_error(answer, 404, "NAME_UNKNOWN")  # accepted by the other replica
        assert_error(get_token(first.url, [], (name, "wrong")), 401)
        assert_error(get_token(second.url, [], (name, "wrong")), 401)
        assert_limited(get_token(first.url, [], (name, password)))
        assert_limited(get_token(second.url, [], (name, password)))
    finally:
        first.stop()
        second.stop()


def make_robot(url: str, owner: tuple[str, str], short: str) -> tuple[str, str]:
    """A robot token a non-admin makes for themself: (its login name, its secret)."""
    answer = httpx.post(
        f"{url}/auth/admin/tokens", json={"name": short, "scopes": ["*:pull"]}, auth=owner
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["name"]), str(answer.json()["token"])


def test_a_robot_cannot_reset_a_users_count(strict_server: RegistryServer) -> None:
    """Robots have their own namespace: Mallory's robot named `alice` is not Alice, and its
    logins clear no one's failed-login count but (were there one) its own."""
    url = strict_server.url
    alice, mallory = unique("alice"), (unique("mallory"), "mallory-password")
    add_user(url, alice, "alice-password")
    add_user(url, *mallory)
    robot, secret = make_robot(url, mallory, alice)
    assert robot == f"robot${mallory[0]}+{alice}" and robot != alice
    with from_address("127.0.0.21") as client:
        assert_error(ask(client, url, (alice, secret)), 401)  # not Alice's name for it
        for _ in range(2):  # two guesses, a robot login, two more: over Alice's limit of 3
            assert_error(ask(client, url, (alice, "guess-one")), 401)
            assert ask(client, url, (robot, secret)).status_code == 200
    with from_address("127.0.0.22") as client:
        assert_limited(ask(client, url, (alice, "alice-password")))


def test_strangers_cannot_lock_out_a_robot(strict_server: RegistryServer) -> None:
    url = strict_server.url
    owner = (unique("owner"), "owner-password")
    add_user(url, *owner)
    robot, secret = make_robot(url, owner, "ci")
    with from_address("127.0.0.23") as client:
        for _ in range(4):  # 8 failures: far over the per-account limit, at the address's
            assert_error(ask(client, url, (robot, "pkr_" + unique() * 4)), 401)
            assert_error(ask(client, url, (robot, "a-password")), 401)
    with from_address("127.0.0.24") as client:
        assert ask(client, url, (robot, secret)).status_code == 200
    with from_address("127.0.0.23") as client:  # that address is over its own limit
        assert_limited(ask(client, url, (robot, secret)))


def refresh(client: httpx.Client, url: str, secret: str) -> httpx.Response:
    form = {"grant_type": "refresh_token", "refresh_token": secret, "service": SERVICE}
    return client.post(f"{url}/auth/token", data=form)


def test_bogus_refresh_tokens_lock_out_only_their_address(strict_server: RegistryServer) -> None:
    url = strict_server.url
    name, password = unique(), "right-password"
    add_user(url, name, password)
    with from_address("127.0.0.25") as client:
        answer = client.get(
            f"{url}/auth/token",
            params={"service": SERVICE, "offline_token": "true"},
            auth=(name, password),
        )
        valid = answer.json()["refresh_token"]
    with from_address("127.0.0.26") as client:
        for _ in range(8):  # the per-address limit
            assert_error(refresh(client, url, "pkrt_" + unique() * 4), 401)
        assert_limited(refresh(client, url, valid))
    with from_address("127.0.0.27") as client:  # anyone else's refresh still works
        assert refresh(client, url, valid).status_code == 200
        assert ask(client, url, (name, password)).status_code == 200
