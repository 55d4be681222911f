"""API tests share one HTTP client: building an httpx.Client (its SSL context) costs ~60 ms,
more than most of these tests take."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest


@pytest.fixture(scope="session")
def shared_client(registry_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry_url, timeout=30) as c:
        yield c


@pytest.fixture
def client(shared_client: httpx.Client) -> httpx.Client:
    return shared_client
