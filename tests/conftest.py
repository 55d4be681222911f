"""Shared fixtures: a real registry server (uvicorn, on a free loopback port) per test session."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from support.server import RegistryServer, free_port

pytest_plugins = [
    "support.ci",
    "support.dockerd",
    "support.postgres",
    "support.seaweedfs",
    "support.backends",
    "support.baseimage",
    "support.images",
]

__all__ = ["RegistryServer", "free_port"]


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path_factory.mktemp("registry") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry_url(registry_server: RegistryServer) -> str:
    return registry_server.url


@pytest.fixture
def client(registry_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry_url, timeout=30) as c:
        yield c
