"""Fixtures of the API tests: the servers, one shared HTTP client, and a second, differently
configured server. Every server runs on the session's `backend` (support/backends.py), so
the whole API suite runs on each storage driver with each database.

Building an httpx.Client (its SSL context) costs ~60 ms, more than most of these tests take.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from support.backends import ServerFactory
from support.server import RegistryServer


@pytest.fixture(scope="session")
def registry_server(make_server: ServerFactory) -> Iterator[RegistryServer]:
    server = make_server("registry")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry_url(registry_server: RegistryServer) -> str:
    # Its own, not tests/conftest.py's: a session fixture of that name made for another
    # directory's server would otherwise be reused here.
    return registry_server.url


@pytest.fixture(scope="session")
def shared_client(registry_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry_url, timeout=30) as c:
        yield c


@pytest.fixture
def client(shared_client: httpx.Client) -> httpx.Client:
    return shared_client


@pytest.fixture(scope="session")
def configured_server(make_server: ServerFactory) -> Iterator[RegistryServer]:
    """A server told its public URL (it answers absolute Locations), with deletes disabled."""
    server = make_server("configured")
    server.env["REGISTRY_SERVER_PUBLIC_URL"] = server.url + "/"
    server.env["REGISTRY_STORAGE_DELETE_ENABLED"] = "false"
    server.start()
    yield server
    server.stop()
