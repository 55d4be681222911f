"""/healthz and /readyz on a real server: no auth, no log line, readiness follows the database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.postgres import PostgresServer, postgres_bin_dir
from support.server import RegistryServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RegistryServer]:
    env = {"REGISTRY_AUTH_ENABLED": "true", "REGISTRY_SERVER_ACCESS_LOG": "true"}
    server = RegistryServer(tmp_path / "data", env=env)
    server.start()
    yield server
    server.stop()


def test_probes_answer_without_credentials_where_the_api_wants_them(
    server: RegistryServer,
) -> None:
    assert httpx.get(f"{server.url}/v2/").status_code == 401  # auth is on
    alive = httpx.get(f"{server.url}/healthz")
    ready = httpx.get(f"{server.url}/readyz")
    assert (alive.status_code, alive.json()) == (200, {"status": "alive"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert httpx.head(f"{server.url}/readyz").status_code == 200


def test_probes_write_no_log_line(server: RegistryServer) -> None:
    for _ in range(3):
        httpx.get(f"{server.url}/healthz")
        httpx.get(f"{server.url}/readyz")
    marker = httpx.get(f"{server.url}/v2/_catalog", headers={"X-Request-Id": "after-probes"})
    assert marker.headers["x-request-id"] == "after-probes"
    deadline = time.monotonic() + 10
    while "after-probes" not in server.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log_path.read_text()
    assert "after-probes" in log  # request lines are written...
    assert "/healthz" not in log and "/readyz" not in log  # ...but none for probes


def _wait_for_status(url: str, status: int, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(url, timeout=10)
        if answer.status_code == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def test_readiness_follows_the_database(tmp_path: Path) -> None:
    database = PostgresServer(postgres_bin_dir())
    database.start()
    server = RegistryServer(
        tmp_path / "data", env={"REGISTRY_DATABASE_URL": database.url()}
    )
    try:
        server.start()
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        database.pause()
        answer = _wait_for_status(f"{server.url}/readyz", 503)
        assert answer.status_code == 503
        assert set(answer.json()["failed"]) == {"database"}
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive all the same
        database.resume()
        assert _wait_for_status(f"{server.url}/readyz", 200).status_code == 200
    finally:
        server.stop()
        database.stop()
