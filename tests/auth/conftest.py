"""Auth-enabled registry servers for the protocol and client tests.

`auth_server` is one real `registry serve` with auth on for the session, with an admin
(`root`) made by the CLI before it starts. Tests make their own users through the admin
API (`auth_server.new_user()`), so they never meet. The per-address login limit is high
here, since every test logs in from 127.0.0.1; `test_ratelimit` starts servers of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from auth.helpers import run_cli, unique

from support.server import RegistryServer

ADMIN = ("root", "root-password-" + uuid.uuid4().hex[:8])


@dataclass
class AuthRegistry:
    server: RegistryServer
    admin: tuple[str, str] = ADMIN
    secrets: list[str] = field(default_factory=list)  # every password and token handed out

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def admin_api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.url}/auth/admin{path}", auth=self.admin, timeout=30, **kwargs
        )

    def new_user(self, prefix: str = "u", admin: bool = False) -> tuple[str, str]:
        name, password = unique(prefix), "pw-" + uuid.uuid4().hex
        answer = self.admin_api(
            "POST", "/users", json={"name": name, "password": password, "admin": admin}
        )
        assert answer.status_code == 201, answer.text
        self.secrets.append(password)
        return name, password

    def new_team(self, members: list[str]) -> str:
        team = unique("team")
        assert self.admin_api("POST", "/teams", json={"name": team}).status_code == 201
        for member in members:
            assert self.admin_api("PUT", f"/teams/{team}/members/{member}").status_code == 204
        return team

    def grant(self, pattern: str, actions: str, **subject: str) -> None:
        answer = self.admin_api(
            "POST", "/grants", json={**subject, "pattern": pattern, "actions": actions}
        )
        assert answer.status_code == 200, answer.text

    def make_public(self, pattern: str) -> None:
        assert self.admin_api("POST", "/public", json={"pattern": pattern}).status_code == 201

    def new_token(self, scopes: list[str], **extra: Any) -> tuple[str, str]:
        """A robot token made by the admin: (its full name, robot$..., and its secret)."""
        name = unique("ci")
        answer = self.admin_api("POST", "/tokens", json={"name": name, "scopes": scopes, **extra})
        assert answer.status_code == 201, answer.text
        secret = str(answer.json()["token"])
        self.secrets.append(secret)
        return str(answer.json()["name"]), secret


def start_auth_server(
    root: Path,
    env: dict[str, str] | None = None,
    admin: tuple[str, str] | None = ADMIN,
    start: bool = True,
) -> RegistryServer:
    """An auth-enabled server on its own data folder, with `admin` made first by the CLI."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    if admin is not None:
        made = run_cli(
            data, "user", "add", admin[0], "--admin", "--password-stdin", input=admin[1], env=env
        )
        assert made.returncode == 0, made.stderr
    server = RegistryServer(
        data,
        env={
            "REGISTRY_AUTH_ENABLED": "true",
            "REGISTRY_AUTH_LOGIN_FAILURES_PER_ADDRESS": "100000",
            **(env or {}),
        },
    )
    if start:
        server.start()
    return server


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    server = start_auth_server(tmp_path_factory.mktemp("auth-registry"))
    registry = AuthRegistry(server)
    registry.secrets.append(ADMIN[1])
    yield registry
    server.stop()


@pytest.fixture
def client(auth_server: AuthRegistry) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=auth_server.url, timeout=30) as c:
        yield c
