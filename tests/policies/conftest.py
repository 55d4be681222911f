"""A registry with auth on (the admin API needs it) on each backend (support/backends.py), an
admin made by the CLI, and helpers that push as the admin and manage policies.

Every test works in a namespace of its own (`namespace()`), and its rules name only that
namespace, so the tests sharing the session's server never see each other's rules.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from auth.helpers import run_cli

from support.backends import ServerFactory
from support.server import RegistryServer

ADMIN = ("root", "root-password-" + uuid.uuid4().hex[:8])
ENV = {
    "REGISTRY_GC_ENABLED": "false",  # retention runs when a test asks, never on a schedule
    "REGISTRY_AUTH_ENABLED": "true",
    "REGISTRY_AUTH_LOGIN_FAILURES_PER_ADDRESS": "100000",
}


def namespace(prefix: str = "ns") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class PolicyRegistry:
    server: RegistryServer

    @property
    def url(self) -> str:
        return self.server.url

    def admin_api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.url}/auth/admin{path}", auth=ADMIN, timeout=30, **kwargs
        )

    def cli(self, *args: str) -> str:
        done = run_cli(self.server.data_dir, *args, env=self.server.env)
        assert done.returncode == 0, done.stderr
        return done.stdout


def start_policy_server(
    make_server: ServerFactory, name: str, env: dict[str, str]
) -> RegistryServer:
    server = make_server(name, env={**ENV, **env})
    made = run_cli(
        server.data_dir, "user", "add", ADMIN[0], "--admin", "--password-stdin",
        input=ADMIN[1], env=server.env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    server.start()
    return server


def race(registry: PolicyRegistry, repo: str, pushes: list[tuple[str, bytes]]) -> list[int]:
    """PUT these (tag, manifest) pairs at once, each on its own connection; the statuses."""
    answers: list[int] = []
    start = threading.Barrier(len(pushes))

    def push(tag: str, body: bytes) -> None:
        with httpx.Client(base_url=registry.url, auth=ADMIN, timeout=30) as own:
            start.wait()
            answer = own.put(
                f"/v2/{repo}/manifests/{tag}",
                content=body,
                headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
            )
            answers.append(answer.status_code)

    threads = [threading.Thread(target=push, args=pair) for pair in pushes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(answers)


@pytest.fixture(scope="session")
def policy_registry(make_server: ServerFactory) -> Iterator[PolicyRegistry]:
    server = start_policy_server(make_server, "policies", {})
    yield PolicyRegistry(server)
    server.stop()


@pytest.fixture
def client(policy_registry: PolicyRegistry) -> Iterator[httpx.Client]:
    """Pushes and pulls as the admin (Basic credentials on /v2/)."""
    with httpx.Client(base_url=policy_registry.url, auth=ADMIN, timeout=30) as c:
        yield c
